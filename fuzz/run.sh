#!/usr/bin/env bash
# Fuzz the file parsers, seeded with the golden store's files.
#   bash fuzz/run.sh [seconds]      (default 30; CI uses the default)
# Long run: bash fuzz/run.sh 3600
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
# One known false positive of LeakSanitizer (see lsan.supp), suppressed by
# the allocation's frame only.
export LSAN_OPTIONS="suppressions=$PWD/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# container: any bytes as every file kind. store_file: one golden file
# replaced by the input (first byte picks which), then open/verify/query.
# stateful: transactions, GC, refreshes and queries with injected I/O
# faults, checked against a model (its corpus starts empty). bundle:
# model.json + weights.safetensors validation, seeded from the parity
# tests' bundles (v1, v2 and item towers). npy, csv, parquet: vstore-tool's
# input readers (.npy embeddings/ids/vectors, mapped and in memory; CSV and
# Parquet item tables), seeded from fuzz/seeds (fuzz/seeds/gen.py) and the
# tool's test data (numpy, pandas, Spark and polars files; not its
# `fuzz/slow/` regression files, which take minutes under the sanitizer);
# a third of the time each (10 s at the default).
mkdir -p corpus/bundle
for b in ../tests/data/three_tower/bundle_* ../tests/data/three_tower_v2/bundle_* ../tests/data/item_tower/bundle_*; do
    j="$b/model.json"; w="$b/weights.safetensors"
    # Seed layout: u32 LE length of model.json, model.json, weights.
    n=$(wc -c < "$j")
    le=""
    for shift in 0 8 16 24; do le="$le\\$(printf '%03o' $(( (n >> shift) & 255 )))"; done
    { printf "$le"; cat "$j" "$w"; } > "corpus/bundle/seed-$(basename "$(dirname "$b")")-$(basename "$b")"
done
cargo +nightly fuzz run bundle corpus/bundle -- -max_total_time="$secs" -max_len=65536
input_secs=$(( secs / 3 > 5 ? secs / 3 : 5 ))
tool_data=../tools/vstore-tool/tests/data
for pair in npy:'*.npy' csv:'*.csv' parquet:'*.parquet'; do
    t="${pair%%:*}"; pat="${pair#*:}"
    mkdir -p "corpus/$t"
    cp seeds/"$t"/* "corpus/$t/"
    for f in "$tool_data"/*/$pat; do
        if [ -e "$f" ]; then cp "$f" "corpus/$t/$(basename "$(dirname "$f")")-$(basename "$f")"; fi
    done
    cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$input_secs" -max_len=65536
done
# The golden stores: one per format version (every version a reader must
# still read), the newest last. Seeds are named by version, since the
# versions' file names are the same.
golden=$(ls -d ../format/golden/v* | sort -V)
newest=$(echo "$golden" | tail -n 1)
# One target per file kind's parser, seeded with the golden files of that
# kind of every version (a third of the time each: the container target
# covers all kinds too).
kind_secs=$(( secs / 3 > 5 ? secs / 3 : 5 ))
for pair in manifest:'MANIFEST-*' columns:'*.vcol' id_index:'*.vidx' deletes:'*.vdel' bundle_file:'*.vbnd'; do
    k="${pair%%:*}"; pat="${pair#*:}"
    mkdir -p "corpus/kind_$k"
    for g in $golden; do
        for f in "$g"/$pat; do
            if [ -e "$f" ]; then cp "$f" "corpus/kind_$k/$(basename "$g")-$(basename "$f")"; fi
        done
    done
    cargo +nightly fuzz run "kind_$k" "corpus/kind_$k" -- -max_total_time="$kind_secs" -max_len=65536
done
for target in container store_file stateful; do
    corpus=corpus/$target
    mkdir -p "$corpus"
    i=0
    [ "$target" = stateful ] && { cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$secs" -max_len=512; continue; }
    # store_file replaces one file of the newest golden store (see its
    # target), so its seeds are that store's files; container takes any.
    if [ "$target" = store_file ]; then
        for f in "$newest"/*; do
            { printf "\\$(printf '%03o' "$i")"; cat "$f"; } > "$corpus/seed-$i"
            i=$((i + 1))
        done
    else
        for g in $golden; do
            for f in "$g"/*; do cp "$f" "$corpus/$(basename "$g")-$(basename "$f")"; done
        done
    fi
    cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$secs" -max_len=65536
done
