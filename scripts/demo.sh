#!/usr/bin/env bash
# Sets the machine up, builds (scripts/build.sh, the build the tests and benches share), and runs
# the demo on a single-node Kafka broker it starts from the jars the set-up fetched. Arguments go
# to the demo (try --help); --mock runs it on librdkafka's in-process mock cluster instead, for a
# machine without Java.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rail-orders/target}"
bash scripts/build.sh >&2
exec "$CARGO_TARGET_DIR/release/demo" "$@"
