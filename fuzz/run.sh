#!/usr/bin/env bash
# Fuzz the container parser, seeded with the golden store's files.
#   bash fuzz/run.sh [seconds]      (default 30; CI uses the default)
# Long run: bash fuzz/run.sh 3600
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
corpus=corpus/container
mkdir -p "$corpus"
cp ../format/golden/v1/* "$corpus"/ 2>/dev/null || true
cargo +nightly fuzz run container "$corpus" -- -max_total_time="$secs" -max_len=65536
