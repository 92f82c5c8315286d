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

# The repo root is two levels above this script (benches/peers/run.sh).
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

OUT="${1:-$REPO_ROOT/target/peers}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"   # absolute, since cargo runs from the repo root

VENV="$REPO_ROOT/target/peers-venv"
PY="$VENV/bin/python"

# --- 1. Python environment -------------------------------------------------
if [[ ! -x "$PY" ]]; then
    echo "peers: creating venv at $VENV" >&2
    python3 -m venv "$VENV"
fi
if ! "$PY" -c 'import numpy, faiss' >/dev/null 2>&1; then
    echo "peers: installing numpy and faiss-cpu into $VENV" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check numpy faiss-cpu
fi

# --- 2. Rust side: export data and time vstore ------------------------------
if [[ "${SKIP_RUST:-0}" == "1" ]]; then
    echo "peers: SKIP_RUST=1, reusing data in $OUT" >&2
else
    # PEER_ARGS is split on whitespace on purpose (it holds several flags).
    # shellcheck disable=SC2086
    (cd "$REPO_ROOT" && cargo run --release --example peer_bench -- --out "$OUT" ${PEER_ARGS:-})
fi

# --- 3. Python side: time the peers and print the table ---------------------
"$PY" "$SCRIPT_DIR/compare.py" "$OUT"
