#!/usr/bin/env bash
# The one build the demo, the tests and the benches share: the whole workspace, every target,
# release profile, into $CARGO_TARGET_DIR (by default ~/.cache/rail-orders/target). Every script
# builds exactly this, so cargo unifies the features of shared dependencies the same way each
# time and RocksDB and librdkafka are compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rail-orders/target}"
cargo build --release --locked --workspace --all-targets "$@"
