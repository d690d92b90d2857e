#!/usr/bin/env bash
# Java for pyspark (the Spark example's test): Java 17 from Debian if `java` is missing.
# Needs root (or sudo) only when it has something to install.
set -euo pipefail
if command -v java >/dev/null; then
    exit 0
fi
echo "installing openjdk-17-jre-headless (pyspark needs Java)" >&2
as_root=()
[ "$(id -u)" = 0 ] || as_root=(sudo)
"${as_root[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq openjdk-17-jre-headless >&2
