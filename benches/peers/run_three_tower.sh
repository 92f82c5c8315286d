#!/usr/bin/env bash
# Peer-comparison benchmark for three-tower scoring: vstore vs onnxruntime
# and numpy running the same MLP, single-threaded, on the same inputs.
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
#      onnxruntime and safetensors
#   2. cargo run --release --example three_tower_bench -- --out OUT_DIR $PEER_ARGS
#   3. benches/peers/three_tower.py OUT_DIR  (times the peers, prints the
#      tables, writes OUT_DIR/three_tower/tt_peers.md and tt_peers.json)
set -euo pipefail

# The repo root is two levels above this script (benches/peers/run_three_tower.sh).
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

OUT="${1:-$REPO_ROOT/target/peers}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"   # absolute, since cargo runs from the repo root

VENV="$REPO_ROOT/target/peers-venv"
PY="$VENV/bin/python"

# --- 1. Python environment -------------------------------------------------
if [[ ! -x "$PY" ]]; then
    echo "three_tower: creating venv at $VENV" >&2
    python3 -m venv "$VENV"
fi
if ! "$PY" -c 'import numpy, onnx, onnxruntime, safetensors' >/dev/null 2>&1; then
    echo "three_tower: installing numpy, onnx, onnxruntime and safetensors into $VENV" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check numpy onnx onnxruntime safetensors
fi

# --- 2. Rust side: export the bundle and data, time vstore ------------------
if [[ "${SKIP_RUST:-0}" == "1" ]]; then
    echo "three_tower: SKIP_RUST=1, reusing data in $OUT/three_tower" >&2
else
    # PEER_ARGS is split on whitespace on purpose (it holds several flags).
    # shellcheck disable=SC2086
    (cd "$REPO_ROOT" && cargo run --release --example three_tower_bench -- --out "$OUT" ${PEER_ARGS:-})
fi

# --- 3. Python side: time the peers and print the tables --------------------
"$PY" "$SCRIPT_DIR/three_tower.py" "$OUT"
