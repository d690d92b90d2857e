#!/usr/bin/env bash
# Builds the Python package (python/) into the tools venv and runs its tests. The build is
# maturin's debug build in this workspace's target/: after `cargo test` it compiles only
# pyo3 and the bindings.
#
#   scripts/python-tests.sh [PYTEST ARGS...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$("$root/scripts/py-tools.sh")"
VIRTUAL_ENV="$venv" "$venv/bin/maturin" develop --quiet -m "$root/python/Cargo.toml"
cd "$root/python"
exec "$venv/bin/pytest" -q tests "$@"
