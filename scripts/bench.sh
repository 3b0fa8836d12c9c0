#!/usr/bin/env bash
# Builds everything, then runs the end-to-end bench (benches/src/bin/e2e.rs) on a single-node
# Kafka broker it starts: dev-materiels, the pass-through ceiling and the Kafka Streams peer, on
# the same broker, topics and workload; prints the table. Options go to the bench
# (`bash scripts/bench.sh --help`); the default is 1,000,000 orders and latency runs at 5,000 and
# 20,000 orders per second. The criterion benches of the cores are `cargo bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rail-orders/target}"
bash scripts/build.sh >&2
exec "$CARGO_TARGET_DIR/release/e2e" "$@"
