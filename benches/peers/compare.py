#!/usr/bin/env python3
"""Time numpy and faiss on vstore's pre-rank query and compare with vstore.

    python compare.py OUT_DIR [--iters N] [--warmup N]

The query: given a user vector u and n candidate item ids, score each
candidate's vector by inner product with u and return the top k (ids and
scores, best first). OUT_DIR holds the data written by the Rust example
`peer_bench` (or by fake_data.py); see README.md for the contract.

Everything runs single-threaded. Each method is called once per query,
cycling over the Q queries, after a short warm-up; we report the median
per-call latency (time.perf_counter). The table is printed and written to
OUT_DIR/peers.md and OUT_DIR/peers.json.
"""
import os

# Single-threaded peers: these must be set before numpy / faiss are imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import faiss  # noqa: E402

faiss.omp_set_num_threads(1)

DTYPES = ("f32", "f16", "bf16", "i8")  # order of the table rows for each n
sp = faiss.swig_ptr


# ---------------------------------------------------------------------------
# Loading and checking the data
# ---------------------------------------------------------------------------

def load(out):
    """Read the contract files; fail loudly if they do not fit together."""
    expect(os.path.exists(os.path.join(out, "meta.json")),
           f"no meta.json in {out}: run the Rust example (or fake_data.py) first")
    with open(os.path.join(out, "meta.json")) as fh:
        meta = json.load(fh)
    N, d, k, Q, ns = meta["rows"], meta["dim"], meta["k"], meta["queries"], meta["ns"]
    ids = np.load(os.path.join(out, "ids.npy"))
    X = np.ascontiguousarray(np.load(os.path.join(out, "vectors_f32.npy")), dtype=np.float32)
    U = np.ascontiguousarray(np.load(os.path.join(out, "user.npy")), dtype=np.float32)
    expect(ids.dtype == np.uint64 and ids.shape == (N,), f"ids.npy: want uint64 [{N}], got {ids.dtype} {ids.shape}")
    expect(X.shape == (N, d), f"vectors_f32.npy: want [{N}, {d}], got {X.shape}")
    expect(U.shape == (Q, d), f"user.npy: want [{Q}, {d}], got {U.shape}")
    expect(np.unique(ids).size == N, "ids.npy: ids are not distinct")
    cands, rows = {}, {}
    for n in ns:
        c = np.ascontiguousarray(np.load(os.path.join(out, f"cands_n{n}.npy")))
        r = np.ascontiguousarray(np.load(os.path.join(out, f"rows_n{n}.npy")))
        expect(c.dtype == np.uint64 and c.shape == (Q, n), f"cands_n{n}.npy: want uint64 [{Q}, {n}], got {c.dtype} {c.shape}")
        expect(r.dtype == np.int64 and r.shape == (Q, n), f"rows_n{n}.npy: want int64 [{Q}, {n}], got {r.dtype} {r.shape}")
        expect(r.min() >= 0 and r.max() < N, f"rows_n{n}.npy: row index out of range")
        expect(np.array_equal(ids[r], c), f"rows_n{n}.npy does not match cands_n{n}.npy (ids[rows] != cands)")
        srt = np.sort(r, axis=1)
        expect(not (srt[:, 1:] == srt[:, :-1]).any(), f"cands_n{n}.npy: duplicate candidates within a query")
        expect(k <= n, f"k={k} > n={n}")
        cands[n], rows[n] = c, r
    with open(os.path.join(out, "vstore.json")) as fh:
        vstore = json.load(fh)["results"]
    return meta, ids, X, U, cands, rows, vstore


def expect(cond, msg):
    if not cond:
        sys.exit(f"compare.py: bad data: {msg}")


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------

def median_ms(fn, nq, iters, warmup):
    """Median latency in ms of fn(q), cycling q over 0..nq-1.

    The warm-up uses the queries at the END of the cycle, so the timed run
    starts with the queries touched longest ago. GC is off while timing.
    """
    for j in range(warmup):
        fn((nq - warmup + j) % nq)
    ts = np.empty(iters)
    gc_on = gc.isenabled()
    gc.disable()
    try:
        for j in range(iters):
            q = j % nq
            t0 = time.perf_counter()
            fn(q)
            ts[j] = time.perf_counter() - t0
    finally:
        if gc_on:
            gc.enable()
    return float(np.median(ts) * 1e3)


def sort_topk(top_ids, top_scores):
    """Order k results by score descending, ties by smaller id first."""
    o = np.lexsort((top_ids, -top_scores))
    return top_ids[o], top_scores[o]


# ---------------------------------------------------------------------------
# The methods. Each builder returns fn(q) -> (ids uint64 [k], scores [k]),
# best first. Anything built outside fn is set-up and is not timed.
# ---------------------------------------------------------------------------

def numpy_methods(ids, X, U, cands, rows, k, order, sorted_ids):
    """numpy peers, each in two gather idioms.

    "take" gathers with np.take(X, rows, axis=0); "fancy" with X[rows]. They
    give the same array, but np.take is several times faster for row
    gathers (fancy indexing goes through numpy's general index machinery),
    so both are timed and the table shows the faster one.
    """
    # order / sorted_ids (built once, not timed): ids[order] == sorted_ids,
    # so order[searchsorted(sorted_ids, c)] is the row of id c.

    def make(gather, lookup):
        def fn(q):
            if lookup:
                c = cands[q]
                r = order[np.searchsorted(sorted_ids, c)]
            else:
                r = rows[q]
            s = gather(r) @ U[q]
            top = np.argpartition(-s, k - 1)[:k]
            # With lookup the candidate ids are at hand; given rows, map the
            # k winning rows back to ids.
            return sort_topk(c[top] if lookup else ids[r[top]], s[top])
        return fn

    def take(r):
        return np.take(X, r, axis=0)

    def fancy(r):
        return X[r]

    methods = {
        "numpy_lookup/take": make(take, True),
        "numpy_lookup/fancy": make(fancy, True),
        "numpy_rows/take": make(take, False),
        "numpy_rows/fancy": make(fancy, False),
    }
    return methods


# Each faiss path: (name, starts_from, scans_all_rows, note, builder).
# builder(ctx) -> fn(q). "rows" paths get row indices (like numpy_rows);
# "ids" paths get candidate ids (like numpy_lookup).

def faiss_paths():
    def by_idx(c):
        # faiss.knn_inner_products_by_idx: scores only the listed rows and
        # keeps a k-heap, all in C++. Output is sorted best first.
        X, U, R, ids, k, N, d = c["X"], c["U"], c["rows"], c["ids"], c["k"], c["N"], c["d"]
        n = R.shape[1]

        def fn(q):
            D = np.empty(k, np.float32)
            I = np.empty(k, np.int64)
            faiss.knn_inner_products_by_idx(sp(U[q]), sp(X), sp(R[q]), d, 1, N, n, k, sp(D), sp(I), -1)
            return ids[I], D
        return fn

    def sel_array(c):
        # index.search with an IDSelectorArray: for flat indexes faiss
        # special-cases IDSelectorArray and calls knn_inner_products_by_idx
        # (it does NOT scan all N rows).
        index, U, R, ids, k = c["flat"], c["U"], c["rows"], c["ids"], c["k"]

        def fn(q):
            sel = faiss.IDSelectorArray(R[q])
            D, I = index.search(U[q:q + 1], k, params=faiss.SearchParameters(sel=sel))
            return ids[I[0]], D[0]
        return fn

    def fvec_by_idx(c):
        # faiss.fvec_inner_products_by_idx scores the listed rows; top k in numpy.
        X, U, R, ids, k, d = c["X"], c["U"], c["rows"], c["ids"], c["k"], c["d"]
        n = R.shape[1]

        def fn(q):
            r = R[q]
            s = np.empty(n, np.float32)
            faiss.fvec_inner_products_by_idx(sp(s), sp(U[q]), sp(X), sp(r), d, 1, n)
            top = np.argpartition(-s, k - 1)[:k]
            return sort_topk(ids[r[top]], s[top])
        return fn

    def dist_subset(c):
        # IndexFlat.compute_distance_subset scores the listed rows of the
        # index's own storage; top k in numpy.
        index, U, R, ids, k = c["flat"], c["U"], c["rows"], c["ids"], c["k"]
        n = R.shape[1]

        def fn(q):
            r = R[q]
            s = np.empty(n, np.float32)
            index.compute_distance_subset(1, sp(U[q]), n, sp(s), sp(r))
            top = np.argpartition(-s, k - 1)[:k]
            return sort_topk(ids[r[top]], s[top])
        return fn

    def recon_knn(c):
        # index.reconstruct_batch gathers the rows, faiss.knn (IP) ranks them.
        index, U, R, ids, k = c["flat"], c["U"], c["rows"], c["ids"], c["k"]

        def fn(q):
            r = R[q]
            Y = index.reconstruct_batch(r)
            D, I = faiss.knn(U[q:q + 1], Y, k, metric=faiss.METRIC_INNER_PRODUCT)
            return ids[r[I[0]]], D[0]
        return fn

    def gather_knn(c):
        # numpy gathers the rows (np.take), faiss.knn (IP) ranks them.
        X, U, R, ids, k = c["X"], c["U"], c["rows"], c["ids"], c["k"]

        def fn(q):
            r = R[q]
            D, I = faiss.knn(U[q:q + 1], np.take(X, r, axis=0), k, metric=faiss.METRIC_INNER_PRODUCT)
            return ids[r[I[0]]], D[0]
        return fn

    def sel_batch(c):
        # index.search with an IDSelectorBatch (hash set + bloom filter):
        # scans all N rows and tests each for membership.
        index, U, R, ids, k = c["flat"], c["U"], c["rows"], c["ids"], c["k"]

        def fn(q):
            sel = faiss.IDSelectorBatch(R[q])
            D, I = index.search(U[q:q + 1], k, params=faiss.SearchParameters(sel=sel))
            return ids[I[0]], D[0]
        return fn

    def sel_bitmap(c):
        # index.search with an IDSelectorBitmap built per query: scans all N
        # rows, one bit test each (building the bitmap is part of the cost).
        index, U, R, ids, k, N = c["flat"], c["U"], c["rows"], c["ids"], c["k"], c["N"]

        def fn(q):
            mask = np.zeros(N, dtype=bool)
            mask[R[q]] = True
            bits = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(bits)
            D, I = index.search(U[q:q + 1], k, params=faiss.SearchParameters(sel=sel))
            return ids[I[0]], D[0]
        return fn

    def idmap_batch(c):
        # IndexIDMap over the same vectors (ids stored by faiss): search with
        # an IDSelectorBatch of candidate ids. faiss resolves ids itself, but
        # by scanning all N rows and testing each row's id for membership.
        idmap, U, C, k = c["idmap"], c["U"], c["cands"], c["k"]

        def fn(q):
            sel = faiss.IDSelectorBatch(C[q].view(np.int64))
            D, I = idmap.search(U[q:q + 1], k, params=faiss.SearchParameters(sel=sel))
            return I[0].view(np.uint64), D[0]
        return fn

    def lookup_by_idx(c):
        # numpy's searchsorted id->row lookup, then knn_inner_products_by_idx.
        X, U, C, ids, k, N, d = c["X"], c["U"], c["cands"], c["ids"], c["k"], c["N"], c["d"]
        order, sorted_ids = c["order"], c["sorted_ids"]
        n = C.shape[1]

        def fn(q):
            cq = C[q]
            r = order[np.searchsorted(sorted_ids, cq)]
            D = np.empty(k, np.float32)
            I = np.empty(k, np.int64)
            # Output labels are row indices; ids[I] maps them back to ids.
            faiss.knn_inner_products_by_idx(sp(U[q]), sp(X), sp(r), d, 1, N, n, k, sp(D), sp(I), -1)
            return ids[I], D
        return fn

    return [
        ("knn_inner_products_by_idx", "rows", False,
         "C++ scores the subset and keeps a k-heap", by_idx),
        ("search+IDSelectorArray", "rows", False,
         "flat index special-cases IDSelectorArray -> knn_inner_products_by_idx", sel_array),
        ("fvec_inner_products_by_idx+argpartition", "rows", False,
         "C++ subset scores, numpy top-k", fvec_by_idx),
        ("compute_distance_subset+argpartition", "rows", False,
         "IndexFlat subset scores, numpy top-k", dist_subset),
        ("reconstruct_batch+faiss.knn", "rows", False,
         "faiss gathers the rows, faiss.knn ranks", recon_knn),
        ("numpy_gather+faiss.knn", "rows", False,
         "numpy gathers np.take(X, rows), faiss.knn ranks", gather_knn),
        ("search+IDSelectorBatch", "rows", True,
         "scans all N rows, hash-set membership per row", sel_batch),
        ("search+IDSelectorBitmap", "rows", True,
         "builds an N-bit bitmap per query, scans all N rows", sel_bitmap),
        ("IndexIDMap.search+IDSelectorBatch(ids)", "ids", True,
         "faiss resolves ids itself by scanning all N rows", idmap_batch),
        ("searchsorted_lookup+knn_inner_products_by_idx", "ids", False,
         "numpy id->row lookup, then knn_inner_products_by_idx", lookup_by_idx),
    ]


# ---------------------------------------------------------------------------
# Correctness check (first query of each n)
# ---------------------------------------------------------------------------

def check(n, name, got, ref, X, u, rows_of):
    """Compare a method's top-k with numpy-with-lookup's; warn, never fail."""
    gids, gsc = got
    rids, rsc = ref
    gids = np.asarray(gids, dtype=np.uint64)
    if np.any(np.diff(np.asarray(gsc, dtype=np.float64)) > 1e-5 * (1 + np.abs(gsc[:-1]))):
        print(f"  WARNING n={n} {name}: scores are not sorted best first", file=sys.stderr)
    missing = set(rids.tolist()) - set(gids.tolist())
    if not missing and len(gids) == len(rids):
        return 0
    # Are the disagreements float ties at the k-th boundary? Rescore in f64.
    diff = set(rids.tolist()) ^ set(gids.tolist())
    kth = float(rsc[-1])
    s64 = X[rows_of(np.array(sorted(diff), dtype=np.uint64))].astype(np.float64) @ u.astype(np.float64)
    gap = float(np.max(np.abs(s64 - kth))) if len(diff) else 0.0
    print(f"  WARNING n={n} {name}: {len(missing)} of {len(rids)} top-k ids differ from "
          f"numpy_lookup (max |score - kth score| = {gap:.3g}; tiny means float ties)", file=sys.stderr)
    return len(missing)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def fmt_ms(v):
    return "-" if v is None else f"{v:.3f}"


def fmt_ratio(a, b):
    return "-" if a is None or b is None or b <= 0 else f"{a / b:.1f}x"


def build_rows(meta, peers, vstore):
    """One table row per (n, dtype) that vstore.json has, plus f32 if missing."""
    by_key = {(r["n"], r["dtype"]): r for r in vstore}
    out = []
    for n in meta["ns"]:
        p = peers[n]
        dtypes = [t for t in DTYPES if (n, t) in by_key] or ["f32"]
        dtypes += sorted({t for (nn, t) in by_key if nn == n and t not in DTYPES})
        for t in dtypes:
            v = by_key.get((n, t), {})
            vms, fms = v.get("median_ms"), v.get("floor_ms")
            out.append({
                "n": n, "dtype": t, "peer_dtype": "f32",
                "vstore_ms": vms, "floor_ms": fms,
                "numpy_lookup_ms": p["numpy_lookup_ms"],
                "numpy_rows_ms": p["numpy_rows_ms"],
                "faiss_best_ms": p["faiss_best_ms"], "faiss_best_path": p["faiss_best_path"],
                "numpy_lookup_ratio": None if not vms else p["numpy_lookup_ms"] / vms,
                "numpy_rows_ratio": None if not vms else p["numpy_rows_ms"] / vms,
                "faiss_best_ratio": None if not vms or p["faiss_best_ms"] is None else p["faiss_best_ms"] / vms,
                "vstore_over_floor": None if not vms or not fms else vms / fms,
            })
    return out


HEADER = ["n", "dtype", "vstore_ms", "floor_ms", "numpy_lookup_ms", "ratio",
          "numpy_rows_ms", "ratio", "faiss_best_ms", "ratio", "vstore/floor"]


def table_cells(r):
    # Peers always score f32; on f16/bf16/i8 rows their numbers get a '*'.
    def peer(v):
        return fmt_ms(v) + ("*" if v is not None and r["dtype"] != "f32" else "")
    return [str(r["n"]), r["dtype"], fmt_ms(r["vstore_ms"]), fmt_ms(r["floor_ms"]),
            peer(r["numpy_lookup_ms"]), fmt_ratio(r["numpy_lookup_ms"], r["vstore_ms"]),
            peer(r["numpy_rows_ms"]), fmt_ratio(r["numpy_rows_ms"], r["vstore_ms"]),
            peer(r["faiss_best_ms"]), fmt_ratio(r["faiss_best_ms"], r["vstore_ms"]),
            fmt_ratio(r["vstore_ms"], r["floor_ms"])]


def text_table(rows):
    cells = [HEADER] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(c))).rstrip() for c in cells)


def md_table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in body]
    return "\n".join(lines)


FOOTNOTE = ("ratio = peer_ms / vstore_ms (how many times slower the peer is). "
            "`*` peers always score f32 vectors (they have no f16/bf16/i8 path); on "
            "f16/bf16/i8 rows the peer numbers are the same f32 timings.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory with the peer_bench data")
    ap.add_argument("--iters", type=int, default=int(os.environ.get("PEER_PY_ITERS", 200)),
                    help="timed calls per method and n, cycling the queries "
                         "(default 200, at least one full cycle; env PEER_PY_ITERS)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls before timing")
    a = ap.parse_args()

    meta, ids, X, U, cands, rows, vstore = load(a.out)
    N, d, k, Q = meta["rows"], meta["dim"], meta["k"], meta["queries"]
    iters = max(a.iters, Q)
    warmup = min(a.warmup, Q)
    print(f"peers: N={N} d={d} k={k} Q={Q} ns={meta['ns']} iters={iters} warmup={warmup} "
          f"numpy={np.__version__} faiss={faiss.__version__} threads=1", file=sys.stderr)

    # faiss indexes, built once (not timed). The IndexIDMap stores the ids;
    # its inner IndexFlatIP (rows in the same order as X) serves the
    # row-based paths, so faiss holds one copy of the vectors.
    idmap = faiss.IndexIDMap(faiss.IndexFlatIP(d))
    idmap.add_with_ids(X, ids.view(np.int64))
    flat = faiss.downcast_index(idmap.index)
    # id -> row lookup by binary search, built once (not timed).
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def rows_of(some_ids):  # id -> row, for the correctness check
        return order[np.searchsorted(sorted_ids, some_ids)]

    peers, details = {}, []
    for n in meta["ns"]:
        C, R = cands[n], rows[n]
        print(f"n={n}:", file=sys.stderr)
        methods = numpy_methods(ids, X, U, C, R, k, order, sorted_ids)
        ctx = dict(X=X, U=U, ids=ids, rows=R, cands=C, k=k, N=N, d=d, flat=flat, idmap=idmap,
                   order=order, sorted_ids=sorted_ids)

        ref = methods["numpy_lookup/take"](0)  # reference top-k for the checks
        p = {"numpy": {}}
        for name, fn in methods.items():
            check(n, name, fn(0), ref, X, U[0], rows_of)
            p["numpy"][name] = ms = median_ms(fn, Q, iters, warmup)
            print(f"  {name:54s} {ms:8.3f} ms", file=sys.stderr)
            details.append([n, name, "ids" if "lookup" in name else "rows", "no", fmt_ms(ms),
                            "np.take(X, rows, axis=0)" if name.endswith("take") else "X[rows]"])
        for col in ("numpy_lookup", "numpy_rows"):  # the table shows the faster idiom
            idiom = min(("take", "fancy"), key=lambda g: p["numpy"][f"{col}/{g}"])
            p[f"{col}_ms"], p[f"{col}_idiom"] = p["numpy"][f"{col}/{idiom}"], idiom

        fa = {}
        for name, start, scans, note, build in faiss_paths():
            entry = {"starts_from": start, "scans_all_rows": scans, "note": note}
            try:
                fn = build(ctx)
                check(n, "faiss " + name, fn(0), ref, X, U[0], rows_of)
                entry["ms"] = median_ms(fn, Q, iters, warmup)
                print(f"  faiss {name:48s} {entry['ms']:8.3f} ms  (from {start})", file=sys.stderr)
            except Exception as e:  # a path this faiss build does not support
                entry["ms"], entry["error"] = None, f"{type(e).__name__}: {e}".splitlines()[0]
                print(f"  faiss {name:48s} FAILED: {entry['error']}", file=sys.stderr)
            fa[name] = entry
            details.append([n, "faiss " + name, start, "yes" if scans else "no",
                            fmt_ms(entry["ms"]) if entry["ms"] is not None else "failed", note])
        # faiss_best: the fastest faiss path that starts from rows (like numpy_rows).
        ok = {nm: e["ms"] for nm, e in fa.items() if e["ms"] is not None and e["starts_from"] == "rows"}
        best = min(ok, key=ok.get) if ok else None
        ok_ids = {nm: e["ms"] for nm, e in fa.items() if e["ms"] is not None and e["starts_from"] == "ids"}
        best_ids = min(ok_ids, key=ok_ids.get) if ok_ids else None
        p.update(faiss_best_path=best, faiss_best_ms=ok.get(best),
                 faiss_best_ids_path=best_ids, faiss_best_ids_ms=ok_ids.get(best_ids), faiss=fa)
        peers[n] = p

    rows_out = build_rows(meta, peers, vstore)
    best_lines = [f"n={n}: numpy idiom lookup={peers[n]['numpy_lookup_idiom']} rows={peers[n]['numpy_rows_idiom']}; "
                  f"faiss_best = {peers[n]['faiss_best_path']} (from rows); "
                  f"best faiss from ids = {peers[n]['faiss_best_ids_path']} "
                  f"{fmt_ms(peers[n]['faiss_best_ids_ms'])} ms" for n in meta["ns"]]

    print()
    print(text_table(rows_out))
    print()
    print(FOOTNOTE)
    for line in best_lines:
        print(line)

    env = {"numpy": np.__version__, "faiss": faiss.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "threads": 1, "iters": iters, "warmup": warmup}
    with open(os.path.join(a.out, "peers.json"), "w") as fh:
        json.dump({"meta": meta, "env": env, "table": rows_out,
                   "peers": {str(n): v for n, v in peers.items()}}, fh, indent=1)
    md = [
        "# vstore vs peers",
        "",
        f"N={N} rows, d={d}, k={k}, Q={Q} queries, single-threaded, median of {iters} calls "
        f"(cycling the queries, {warmup} warm-up calls). numpy {np.__version__}, faiss {faiss.__version__}.",
        "",
        md_table(HEADER, [table_cells(r) for r in rows_out]),
        "",
        FOOTNOTE,
        "",
        *[f"- {line}" for line in best_lines],
        "",
        "## All methods (numpy idioms and faiss paths)",
        "",
        md_table(["n", "method", "starts from", "scans all N", "ms", "how"], details),
        "",
    ]
    with open(os.path.join(a.out, "peers.md"), "w") as fh:
        fh.write("\n".join(md))
    print(f"\nwrote {os.path.join(a.out, 'peers.md')} and peers.json", file=sys.stderr)


if __name__ == "__main__":
    main()
