#!/usr/bin/env bash
# Sets the machine up, builds, and runs the demo. Arguments go to the demo (try --help);
# without --brokers it runs on an embedded cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rail-orders/target}"
cargo build --release --locked -p pipeline --bin demo
exec "$CARGO_TARGET_DIR/release/demo" "$@"
