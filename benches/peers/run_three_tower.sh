#!/usr/bin/env bash
# Peer-comparison benchmark for three-tower scoring: vstore vs onnxruntime
# (fp32 and int8), OpenVINO (f32 and bf16) and numpy running the same MLP,
# single-threaded, on the same inputs.
#
# Usage: benches/peers/run_three_tower.sh [OUT_DIR]
#
#   OUT_DIR     where the Rust example writes its data (into OUT_DIR/three_tower/)
#               and where the report goes (default: <repo>/target/peers)
#   PEER_ARGS   extra arguments passed to the Rust example
#   SKIP_RUST=1 skip the Rust step and reuse the data already in OUT_DIR
#   PEER_PY_ITERS  timed calls per method (default 50)
#
# Steps:
#   1. make the Python venv <repo>/target/peers-venv with numpy, onnx,
#      onnxruntime and safetensors, and openvino if it installs (without
#      it the OpenVINO peers are skipped)
#   2. cargo run --release --example three_tower_bench -- --out OUT_DIR $PEER_ARGS
#   3. benches/peers/three_tower.py OUT_DIR  (times the peers, prints the
#      tables, writes OUT_DIR/three_tower/tt_peers.md and tt_peers.json)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PEERS_OPTIONAL="openvino" peers_run three_tower "numpy, onnx, onnxruntime, safetensors" "numpy onnx onnxruntime safetensors" three_tower_bench three_tower.py "${1:-}"
