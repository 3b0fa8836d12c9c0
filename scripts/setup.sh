#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine, and fetches the Kafka jars.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# docker-compose (1.x, Python) validates docker-compose.yml offline; python3-yaml reads it in the
# tests; chromium drives the operations page's browser test.
for pkg in libclang-dev pkg-config cmake make g++ zlib1g-dev libssl-dev maven openjdk-17-jdk-headless \
           docker-compose python3-yaml chromium chromium-driver; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
# PostgreSQL (server and psql) for the Kafka Connect tests: any major version Debian has; the
# tests start their own cluster (kafka-harness/src/postgres.rs).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && ! command -v postgres >/dev/null; then
  need+=(postgresql)
fi
command -v psql >/dev/null || need+=(postgresql-client)
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust 1.88 or newer (https://rustup.rs) and run again" >&2
  exit 1
fi

# CI's checks need rustfmt and clippy.
if command -v rustup >/dev/null; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component" >&2
  done
fi

bash scripts/kafka-jars.sh >&2
bash scripts/apicurio.sh >&2
bash scripts/connect.sh >&2
