"""Scale of a distributed build: N items x DIM float16 built by a Dask local
cluster of W worker processes (PARTS parts, one segment each) against one
writer building the same rows in one `add_items`; then the reader's open
time and memory on each store (open, first query of 5,000 candidates, which
builds the id directory, and a warm query).

    python python/bench/distributed_scale.py --rows 10000000 --dim 64 --parts 16 --workers 2

Prints wall times and peak RSS per process (ru_maxrss). Default size is
small (--rows 200000) so the script can be smoke-run; the figures in the
issue note use the command above.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def part_rows(rows, parts, i):
    lo = rows * i // parts
    hi = rows * (i + 1) // parts
    return lo, hi


def make_part(rows, parts, dim, i):
    lo, hi = part_rows(rows, parts, i)
    ids = (np.arange(lo, hi, dtype=np.uint64) * 2654435761) % (1 << 40)
    rng = np.random.default_rng(i)
    vecs = rng.standard_normal((hi - lo, dim), dtype=np.float32).astype(np.float16)
    cats = (ids % 13).astype(np.uint32)
    return {"id": ids, "prerank@v1": vecs, "category": cats}


def schema(dim):
    import vstore

    return vstore.Schema().embedding("prerank", "v1", dim, "f16").categorical("category")


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_split_mb():
    """Current anonymous and file-backed resident memory (Linux), MiB: a
    mapped store's pages are file-backed page cache, shared and reclaimable."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    k, v = line.split(":")
                    out[k.strip()] = int(v.split()[0]) / 1024
    except OSError:
        pass
    return out


def single(path, rows, parts, dim):
    import vstore

    t0 = time.perf_counter()
    ps = [make_part(rows, parts, dim, i) for i in range(parts)]
    ids = np.concatenate([p["id"] for p in ps])
    vecs = np.concatenate([p["prerank@v1"] for p in ps])
    cats = np.concatenate([p["category"] for p in ps])
    del ps
    t1 = time.perf_counter()
    w = vstore.create(path, schema(dim))
    with w.begin() as tx:
        tx.add_items(ids, embeddings={"prerank@v1": vecs}, categorical={"category": cats})
    t2 = time.perf_counter()
    return {"generate_s": t1 - t0, "build_s": t2 - t1, "peak_rss_mb": maxrss_mb()}


def distributed(path, rows, parts, dim, workers, compact=False):
    import dask
    from distributed import Client, LocalCluster

    import vstore
    from vstore import distributed as vd

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit=0) as cluster, Client(cluster) as c:
        t0 = time.perf_counter()
        delayed = [dask.delayed(make_part)(rows, parts, dim, i) for i in range(parts)]
        n = vd.build_dask(path, "scale", delayed, schema=schema(dim), client=c, compact=compact)
        t1 = time.perf_counter()
        worker_rss = c.run(maxrss_mb)
    return {"build_s_incl_generate": t1 - t0, "snapshot": n,
            "worker_peak_rss_mb": sorted(worker_rss.values()), "driver_peak_rss_mb": maxrss_mb(),
            "driver_now": rss_split_mb()}


def reader(path, rows, dim):
    import vstore

    rss0 = maxrss_mb()
    t0 = time.perf_counter()
    store = vstore.open(path)
    snap = store.snapshot()
    t1 = time.perf_counter()
    rng = np.random.default_rng(7)
    cand = (rng.choice(rows, 5000, replace=False).astype(np.uint64) * 2654435761) % (1 << 40)
    user = rng.standard_normal(dim).astype(np.float32)
    t2 = time.perf_counter()
    r = snap.query("prerank@v1", user, cand, 500)
    t3 = time.perf_counter()
    for _ in range(20):
        snap.query("prerank@v1", user, cand, 500)
    t4 = time.perf_counter()
    assert len(r.not_found) == 0
    return {"open_ms": (t1 - t0) * 1e3, "first_query_ms": (t3 - t2) * 1e3,
            "warm_query_ms": (t4 - t3) / 20 * 1e3, "segments": snap.inspect()["segments"],
            "rss_before_mb": rss0, "peak_rss_mb": maxrss_mb(), "now": rss_split_mb()}


def child(kind, *args):
    """Runs one measurement in a fresh process (its own peak RSS)."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(args)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--parts", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--compact", action="store_true",
                    help="also build with compact=True (one segment) and read it")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        kind, args = a.child[0], json.loads(a.child[1])
        print(json.dumps({"single": single, "distributed": distributed, "reader": reader}[kind](*args)))
        return
    base = a.dir or tempfile.mkdtemp(prefix="vstore-scale-")
    one, dist = os.path.join(base, "one"), os.path.join(base, "dist")
    for p in (one, dist):
        shutil.rmtree(p, ignore_errors=True)
    print(f"rows={a.rows} dim={a.dim} f16 parts={a.parts} workers={a.workers}")
    s = child("single", one, a.rows, a.parts, a.dim)
    print("one writer:      ", s)
    d = child("distributed", dist, a.rows, a.parts, a.dim, a.workers)
    print("dask, %d workers:" % a.workers, d)
    stores = [("one writer", one), ("distributed", dist)]
    if a.compact:
        comp = os.path.join(base, "dist-compact")
        shutil.rmtree(comp, ignore_errors=True)
        print("dask + compact:  ", child("distributed", comp, a.rows, a.parts, a.dim, a.workers, True))
        stores.append(("distributed + compact", comp))
    for name, p in stores:
        print(f"reader of {name}:", child("reader", p, a.rows, a.dim))
    if not a.dir:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
