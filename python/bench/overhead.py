"""Python call overhead and the batch form's scaling.

    bash python/test.sh        # builds the package into target/py-venv (and tests it)
    target/py-venv/bin/python python/bench/overhead.py [--rows 1000000]

Builds (once, under target/py-bench/) a store of N items x 64 float16, then:
- one query at n = 5,000 candidates, k = 500, called from Python: the median
  wall time of the call against the median time the library reports for the
  query itself (`QueryResult.query_seconds`); the difference is what the
  binding adds (argument conversion, result arrays, the GIL);
- the same split for a 10-candidate call, made right after a 10-candidate
  query and right after a 5,000-candidate one: the binding's own work when
  the caches are warm, and what the big query's sweep through L1/L2 (rows,
  id-index lines, scratch) costs the interpreter and the binding afterwards;
- `query_batch` of 64 users x 5,000 candidates on 1 and 2 workers: queries
  per second and the ratio;
- 64 users over one candidate set: 64 `query` calls against one
  `query_batch` call (one worker), which resolves the candidates once.
Prints medians of alternated repetitions; name the CPU with the figures.
"""

import argparse
import os
import pathlib
import statistics
import time

import numpy as np

import vstore

DIM = 64


def store(rows):
    path = pathlib.Path(__file__).resolve().parents[2] / "target" / "py-bench" / f"s{rows}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        ids = np.arange(1, rows + 1, dtype=np.uint64) * 7919
        w = vstore.create(str(path), vstore.Schema().embedding("prerank", "v1", DIM, "f16"))
        with w.begin() as tx:
            tx.add_items(ids, embeddings={"prerank@v1": rng.standard_normal((rows, DIM)).astype(np.float16)})
        del w
    return vstore.open(str(path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=2000)
    a = ap.parse_args()
    snap = store(a.rows).snapshot()
    rng = np.random.default_rng(1)
    ids = (rng.choice(a.rows, size=(64, 5000), replace=False if a.rows >= 5000 * 64 else True) + 1).astype(np.uint64) * 7919
    users = rng.standard_normal((64, DIM)).astype(np.float32)
    wall, inner = [], []
    for i in range(a.reps):
        j = i % 64
        t = time.perf_counter()
        r = snap.query("prerank@v1", users[j], ids[j], 500)
        wall.append(time.perf_counter() - t)
        inner.append(r.query_seconds)
    w, q = statistics.median(wall[100:]), statistics.median(inner[100:])
    print(f"cpu: {os.uname().machine}; rows {a.rows}, n = 5,000, k = 500")
    print(f"python call median {w * 1e6:.1f} us, library query median {q * 1e6:.1f} us, overhead {(w - q) * 1e6:.1f} us")
    small = [ids[j][:10].copy() for j in range(64)]
    for prev in (10, 5000):
        wall, inner = [], []
        for i in range(a.reps):
            j = i % 64
            snap.query("prerank@v1", users[j], ids[j][:prev], 500)
            t = time.perf_counter()
            r = snap.query("prerank@v1", users[j], small[j], 500)
            wall.append(time.perf_counter() - t)
            inner.append(r.query_seconds)
        w, q = statistics.median(wall[100:]), statistics.median(inner[100:])
        print(f"n = 10 call after an n = {prev} query: python call {w * 1e6:.1f} us, library {q * 1e6:.1f} us, binding {(w - q) * 1e6:.1f} us")
    cands = list(ids)
    times = {1: [], 2: []}
    for _ in range(15):
        for workers in (1, 2):
            t = time.perf_counter()
            snap.query_batch("prerank@v1", users, cands, 500, workers=workers)
            times[workers].append(time.perf_counter() - t)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"query_batch 64 users: 1 worker {64 / one:.0f} q/s, 2 workers {64 / two:.0f} q/s, ratio {one / two:.2f}x")
    # One candidate array every user shares: 64 query calls against one
    # query_batch call (which resolves the candidates once per worker).
    shared = ids[0]
    one_by_one, batched = [], []
    for _ in range(15):
        t = time.perf_counter()
        for j in range(64):
            snap.query("prerank@v1", users[j], shared, 500)
        one_by_one.append(time.perf_counter() - t)
        t = time.perf_counter()
        snap.query_batch("prerank@v1", users, shared, 500)
        batched.append(time.perf_counter() - t)
    o, b = statistics.median(one_by_one), statistics.median(batched)
    print(f"64 users, one candidate set: 64 query calls {64 / o:.0f} q/s, one query_batch call {64 / b:.0f} q/s, ratio {o / b:.2f}x")

if __name__ == "__main__":
    main()
