#!/usr/bin/env bash
# Sets the machine up, builds (scripts/build.sh), and runs the whole test suite: unit and property
# tests, then the integration tests, each against real Apache Kafka brokers it starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rail-orders/target}"
bash scripts/build.sh
# Integration tests start brokers and services; one at a time fits a 2-core machine.
# --nocapture shows the figures they report (restore counts, exactly-once summaries).
cargo test --release --locked --workspace -- --test-threads=1 --nocapture
