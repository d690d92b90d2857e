#!/usr/bin/env bash
# The Python tools the tests and benchmarks use, in a venv of their own under target/:
# moto's S3 server (a real S3-compatible server on loopback) and the Python `deltalake`
# reader. Installs them from PyPI on first use; prints the venv's folder.
#
#   scripts/py-tools.sh                 install if missing, print the venv folder
#   scripts/py-tools.sh s3-server PORT  install if missing, then run moto's server on
#                                       127.0.0.1:PORT in the foreground, with S3's
#                                       conditional writes atomic (scripts/s3_server.py)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${RETRYLAKE_PY_VENV:-$root/target/py-tools}"
requirements="$root/scripts/py-requirements.txt"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
    echo "installing $requirements into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
    cp "$requirements" "$venv/requirements.txt"
fi

flock -u 9

case "${1:-}" in
    "") echo "$venv" ;;
    # Its request recorder (which the idle-worker test reads) writes under target/.
    s3-server) MOTO_RECORDER_FILEPATH="$root/target/moto_recording" \
        exec "$venv/bin/python" "$root/scripts/s3_server.py" -H 127.0.0.1 -p "${2:?port}" ;;
    *) echo "usage: $0 [s3-server PORT]" >&2; exit 2 ;;
esac
