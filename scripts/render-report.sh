#!/usr/bin/env bash
# Render `retrylake report` in headless Chromium (Debian's chromium package) with the
# network off, and save a screenshot: the report must draw with nothing fetched.
#   scripts/render-report.sh REPORT.html [SCREENSHOT.png]
set -euo pipefail
report=$(realpath "$1")
shot=${2:-${report%.html}.png}
if ! command -v chromium >/dev/null; then
  echo "installing Debian's chromium package" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --proxy-server=127.0.0.1:9 --window-size=1100,1400 \
  --screenshot="$shot" "file://$report" 2>/dev/null
# The DOM as drawn: both charts and the tables must be there.
dom=$(chromium --headless --no-sandbox --disable-gpu --no-first-run \
  --disable-background-networking --user-data-dir="$profile" --proxy-server=127.0.0.1:9 \
  --dump-dom "file://$report" 2>/dev/null)
svgs=$(grep -o '<svg' <<<"$dom" | wc -l)
[ "$svgs" -ge 2 ] || { echo "expected 2 charts, found $svgs" >&2; exit 1; }
grep -q 'Backoff schedule in force' <<<"$dom" || { echo "the backoff table is missing" >&2; exit 1; }
echo "rendered $report: $svgs charts; screenshot $shot"
