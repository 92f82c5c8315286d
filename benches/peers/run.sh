#!/usr/bin/env bash
# Peer-comparison benchmark: vstore vs numpy and faiss on the pre-rank
# "score a candidate subset, take the top k" query.
#
# Usage: benches/peers/run.sh [OUT_DIR]
#
#   OUT_DIR     where the Rust example writes its data and where the report
#               goes (default: <repo>/target/peers)
#   PEER_ARGS   extra arguments passed to the Rust example, e.g.
#               PEER_ARGS="--rows 200000"
#   SKIP_RUST=1 skip the Rust step and reuse the data already in OUT_DIR
#
# Steps:
#   1. make the Python venv <repo>/target/peers-venv with numpy + faiss-cpu
#   2. cargo run --release --example peer_bench -- --out OUT_DIR $PEER_ARGS
#   3. benches/peers/compare.py OUT_DIR  (times the peers, prints the table,
#      writes OUT_DIR/peers.md and OUT_DIR/peers.json)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
peers_run peers "numpy, faiss" "numpy faiss-cpu" peer_bench compare.py "${1:-}"
