#!/usr/bin/env python3
"""Write random data in the peer_bench contract, for testing compare.py
without the Rust example.

    python fake_data.py OUT_DIR [--rows 200000] [--dim 64] [--queries 20]
                                [--ns 1000,5000] [--k 100] [--seed 0]

Files written into OUT_DIR (the same contract `cargo run --example peer_bench`
follows; see README.md):

    meta.json          {"rows", "dim", "k", "queries", "ns"}
    ids.npy            uint64 [N]      item ids in row order (random, unsorted)
    vectors_f32.npy    float32 [N, d]  row i is the vector of ids[i]
    user.npy           float32 [Q, d]  one user vector per query
    cands_n{n}.npy     uint64 [Q, n]   candidate ids, distinct within a query
    rows_n{n}.npy      int64 [Q, n]    row index of each candidate
    vstore.json        {"results": [{"n", "dtype", "median_ms", "floor_ms"}]}

The vstore.json numbers are made up (they only exercise the table code).
"""
import argparse
import json
import os

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--ns", default="1000,5000", help="comma-separated candidate counts")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    ns = [int(x) for x in a.ns.split(",")]
    N, d, Q = a.rows, a.dim, a.queries
    if max(ns) > N:
        raise SystemExit("every n must be <= rows")
    rng = np.random.default_rng(a.seed)
    os.makedirs(a.out, exist_ok=True)

    # Distinct random 63-bit ids in random (unsorted) row order.
    ids = np.unique(rng.integers(1, 2**63 - 1, size=N + N // 100 + 16, dtype=np.uint64))
    while ids.size < N:  # practically never: collisions in 2^63
        ids = np.unique(np.concatenate([ids, rng.integers(1, 2**63 - 1, size=N, dtype=np.uint64)]))
    ids = rng.permutation(ids[:N])  # shuffled so ids are NOT sorted by row
    X = rng.standard_normal((N, d), dtype=np.float32)
    U = rng.standard_normal((Q, d), dtype=np.float32)
    np.save(os.path.join(a.out, "ids.npy"), ids)
    np.save(os.path.join(a.out, "vectors_f32.npy"), X)
    np.save(os.path.join(a.out, "user.npy"), U)

    results = []
    for n in ns:
        # n distinct rows per query, in random order; candidates are their ids.
        rows = np.stack([rng.choice(N, size=n, replace=False) for _ in range(Q)]).astype(np.int64)
        np.save(os.path.join(a.out, f"rows_n{n}.npy"), rows)
        np.save(os.path.join(a.out, f"cands_n{n}.npy"), ids[rows])
        # Made-up vstore numbers: roughly linear in n.
        base = 0.04 * n / 1000
        for dtype, f in (("f32", 1.0), ("f16", 0.8), ("bf16", 0.8), ("i8", 0.6)):
            results.append({"n": n, "dtype": dtype,
                            "median_ms": round(base * f * 1.4, 4),
                            "floor_ms": round(base * f, 4)})

    with open(os.path.join(a.out, "meta.json"), "w") as fh:
        json.dump({"rows": N, "dim": d, "k": a.k, "queries": Q, "ns": ns}, fh)
    with open(os.path.join(a.out, "vstore.json"), "w") as fh:
        json.dump({"results": results}, fh, indent=1)
    print(f"fake_data: wrote N={N} d={d} Q={Q} ns={ns} k={a.k} to {a.out}")


if __name__ == "__main__":
    main()
