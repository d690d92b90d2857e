#!/usr/bin/env bash
# Kill `retrylake run` many times (failpoints between commits, SIGKILL at random moments)
# while a second worker (`retrylake worker --worker soak-w2`, short lease) runs throughout,
# and check after each restart that every record is in exactly one table.
#   scripts/crash-soak.sh [KILLS=40] [RECORDS=500]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
cargo run --quiet --example crash_soak -- "${1:-40}" "${2:-500}"
