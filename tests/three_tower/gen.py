"""Generate the independent float64 reference for the three-tower parity test.

What it does
------------
Builds, with numpy only and a fixed seed, a small item table (~300 items,
profile + statistics columns with missing values, one `prerank@v1` embedding
of dim 8), one set of three-tower weights (written by hand as a safetensors
file, PyTorch nn.Linear layout W [out, in], y = x @ W.T + b), three model
bundles that share those weights but differ in `fusion` (weighted_sum,
product, rank), and 8 queries per bundle whose expected top-k ids, fused
scores, per-head (calibrated) values and not-found ids are computed in
float64 following docs/DESIGN.md, "Model bundle contract".

Every stored float (items, embeddings, defaults, weights, query inputs) is
exactly representable in float32. Queries are redrawn (deterministically, from
the same seeded generator) until the expected result is robust to a float32
implementation: consecutive fused scores in the top k+1 differ by > 1e-4
relative; for rank fusion, no returned item has a near-tie (<= 1e-4 relative
in value or <= 1e-4 in logit) with any other scored candidate in a head with
nonzero weight, and no near-tied item could reach the top k whichever way its
ties are broken (pairwise distinctness over all 300 items of a full scan is
not attainable at 1e-4); a float32 re-computation agrees with float64 to
< 1e-6 relative on every returned score and head value.

Output (overwritten, byte-for-byte reproducible):
  tests/data/three_tower/case.json
  tests/data/three_tower/bundle_{weighted_sum,product,rank}/{model.json,weights.safetensors}

How to run (from the repository root):
  target/peers-venv/bin/python tests/three_tower/gen.py

The float64 math here uses numpy's vectorised exp, whose last bit depends
on the SIMD path numpy picks at run time; the committed files are what the
baseline path gives (on an AVX2/AVX-512 machine, numpy 2.x):
  NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4" target/peers-venv/bin/python tests/three_tower/gen.py
Without it a few values may differ in the last digit (same ids, same queries).
Helpers shared with gen_v2.py live in refcommon.py.
"""

import os

import numpy as np

import refcommon  # noqa: E402
from refcommon import (act, draw_candidates, dumps, f32, f32s, rank_clusters_ok,
                       relgap, resolve, scores_separated, write_safetensors, write_text)
from refcommon import draw_ids, with_nulls  # noqa: E402

SEED = 20240613
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "three_tower")

N_ITEMS = 300
EMB_DIM = 8
USER_DIM = 6
CAT_VALUES = 8  # stored category values are 0..7
CAT_VOCAB = 5  # emb.category rows; values >= 5 map to row 0
IMP_BOUNDS = [10, 100, 1000]
USER_STATS_DIM = 3
UCC_DIM = 2


DEFAULTS = {
    "category": 0,
    "region": 1,
    "price": f32s(2.5),
    "ctr_1d": f32s(0.01),
    "impressions_7d": f32s(0.0),
}
UCC_DEFAULT = [f32s(0.05), f32s(-0.1)]

HEADS = [
    # name, activation, neg_sampling_rate (None = no calibration)
    ("click", "sigmoid", 0.1),
    ("like", "sigmoid", None),
    ("share", "sigmoid", 0.5),
    ("watch_time", "exp", None),
    ("score_raw", "identity", None),
]
HEAD_NAMES = [h[0] for h in HEADS]

FUSIONS = {
    "bundle_weighted_sum": {
        "kind": "weighted_sum",
        "weights": {"click": 1.0, "like": 0.5, "share": 0.25, "watch_time": 0.01, "score_raw": 0.2},
    },
    "bundle_product": {
        "kind": "product",
        "weights": {"click": 1.0, "like": 0.5, "watch_time": 0.3},
    },
    "bundle_rank": {
        "kind": "rank",
        "weights": {"click": 1.0, "like": 0.7, "watch_time": 0.3, "score_raw": 0.2},
        "alpha": 10.0,
        "beta": 1.0,
    },
}

CROSS_INPUTS = [
    {"kind": "item_numeric", "column": "ctr_1d", "transform": "log1p"},
    {"kind": "item_numeric", "column": "price", "transform": "identity"},
    {"kind": "item_numeric", "column": "impressions_7d",
     "transform": {"bucketize": IMP_BOUNDS}, "embedding": "emb.imp_bucket"},
    {"kind": "item_categorical", "column": "category", "embedding": "emb.category"},
    {"kind": "user_dense", "name": "user_stats", "dim": USER_STATS_DIM},
    {"kind": "user_by_item", "name": "user_category_ctr", "column": "category",
     "dim": UCC_DIM, "default": UCC_DEFAULT},
]
CROSS_IN = 1 + 1 + 3 + 4 + USER_STATS_DIM + UCC_DIM  # 14
CROSS_LAYERS = [("cross.0", CROSS_IN, 12, "relu"), ("cross.2", 12, 5, "sigmoid")]
UPPER_IN = USER_DIM + EMB_DIM + 5  # 19
UPPER_LAYERS = [("upper.0", UPPER_IN, 16, "relu"), ("upper.2", 16, 10, "identity")]


# --------------------------------------------------------------------------
# data generation


def make_items(rng):
    ids = draw_ids(rng, N_ITEMS, 2000)


    category = with_nulls(rng, rng.integers(0, CAT_VALUES, N_ITEMS).tolist(), 0.1)
    region = with_nulls(rng, rng.integers(0, 4, N_ITEMS).tolist(), 0.1)
    price = with_nulls(rng, f32(rng.uniform(0.5, 10.0, N_ITEMS)).tolist(), 0.1)
    ctr = f32(rng.uniform(0.0, 0.3, N_ITEMS))
    ctr[rng.integers(0, N_ITEMS, 3)] = 0.0
    ctr = with_nulls(rng, ctr.tolist(), 0.1)
    imp = f32(np.exp(rng.uniform(0.0, np.log(5001.0), N_ITEMS)) - 1.0)
    # pin the `boundary <= x` semantics: some values exactly on boundaries
    for j, b in zip(rng.choice(N_ITEMS, 6, replace=False), [10, 100, 1000, 10, 100, 1000]):
        imp[j] = float(b)
    imp[rng.integers(0, N_ITEMS, 2)] = 0.0
    imp = with_nulls(rng, imp.tolist(), 0.1)
    emb = f32(rng.normal(0.0, 1.0, (N_ITEMS, EMB_DIM)))
    return {
        "ids": [int(i) for i in ids],
        "category": category,
        "region": region,
        "price": price,
        "ctr_1d": ctr,
        "impressions_7d": imp,
        "embedding": emb,
    }


def make_weights(rng):
    w = {}
    for name, fan_in, fan_out, _ in CROSS_LAYERS + UPPER_LAYERS:
        w[name + ".weight"] = f32(rng.normal(0.0, 0.3, (fan_out, fan_in)))
        w[name + ".bias"] = f32(rng.normal(0.0, 0.3, (fan_out,)))
    for name, _, _ in HEADS:
        w["heads.%s.weight" % name] = f32(rng.normal(0.0, 0.3, (1, 10)))
        w["heads.%s.bias" % name] = f32(rng.normal(0.0, 0.3, (1,)))
    # keep the identity head away from zero so relative comparisons are sound
    w["heads.score_raw.bias"] = f32(w["heads.score_raw.bias"] + 3.0)
    w["emb.imp_bucket"] = f32(rng.normal(0.0, 0.5, (len(IMP_BOUNDS) + 1, 3)))
    w["emb.category"] = f32(rng.normal(0.0, 0.5, (CAT_VOCAB, 4)))
    return w


# --------------------------------------------------------------------------
# reference model (dtype float64 is the reference; float32 is a robustness probe)


def item_features(items):
    """Per-item raw values with defaults applied (float64, f32-exact)."""
    def fill(col):
        d = DEFAULTS[col]
        return [d if v is None else v for v in items[col]]
    return {
        "category": np.array(fill("category"), dtype=np.int64),
        "price": np.array(fill("price"), dtype=np.float64),
        "ctr_1d": np.array(fill("ctr_1d"), dtype=np.float64),
        "impressions_7d": np.array(fill("impressions_7d"), dtype=np.float64),
        "embedding": items["embedding"],
    }


def forward(feat, rows, query, w, dt):
    """Return (logits [n, H], head values after calibration [n, H], last upper [n,10],
    cross-tower input [n, CROSS_IN])."""
    def c(a):
        return np.asarray(a, dtype=np.float64).astype(dt)
    n = len(rows)
    cat = feat["category"][rows]
    ctr = c(feat["ctr_1d"][rows])
    price = c(feat["price"][rows])
    imp = c(feat["impressions_7d"][rows])
    bucket = np.zeros(n, dtype=np.int64)
    for b in IMP_BOUNDS:
        bucket += (c(b) <= imp).astype(np.int64)
    cat_row = np.where(cat < CAT_VOCAB, cat, 0)
    ucc = np.array([query["user_by_item"]["user_category_ctr"].get(str(int(v)), UCC_DEFAULT) for v in cat])
    us = np.tile(c(query["user_dense"]["user_stats"]), (n, 1))
    x = np.concatenate([
        np.log1p(ctr)[:, None],
        price[:, None],
        c(w["emb.imp_bucket"])[bucket],
        c(w["emb.category"])[cat_row],
        us,
        c(ucc),
    ], axis=1)
    assert x.shape[1] == CROSS_IN
    x0 = x
    for name, _, _, a in CROSS_LAYERS:
        x = act(x @ c(w[name + ".weight"]).T + c(w[name + ".bias"]), a, dt)
    u = np.tile(c(query["user"]), (n, 1))
    h = np.concatenate([u, c(feat["embedding"][rows]), x], axis=1)
    assert h.shape[1] == UPPER_IN
    for name, _, _, a in UPPER_LAYERS:
        h = act(h @ c(w[name + ".weight"]).T + c(w[name + ".bias"]), a, dt)
    logits = np.stack([(h @ c(w["heads.%s.weight" % hn]).T + c(w["heads.%s.bias" % hn]))[:, 0]
                       for hn, _, _ in HEADS], axis=1)
    vals = np.empty_like(logits)
    for j, (_, a, rate) in enumerate(HEADS):
        v = act(logits[:, j], a, dt)
        if rate is not None:
            r = c(rate)
            v = r * v / ((dt(1) - v) + r * v)
        vals[:, j] = v
    return logits, vals, h, x0


def fuse(fusion, ids, vals, dt):
    weights = {k: float(v) for k, v in fusion["weights"].items()}
    n = len(ids)
    kind = fusion["kind"]
    if kind == "weighted_sum":
        s = np.zeros(n, dtype=dt)
        for j, hn in enumerate(HEAD_NAMES):
            if hn in weights:
                s = s + dt(weights[hn]) * vals[:, j]
        return s
    if kind == "product":
        s = np.ones(n, dtype=dt)
        for j, hn in enumerate(HEAD_NAMES):
            if hn in weights:
                s = s * vals[:, j] ** dt(weights[hn])
        return s
    if kind == "rank":
        alpha, beta = dt(fusion["alpha"]), dt(fusion["beta"])
        s = np.zeros(n, dtype=dt)
        for j, hn in enumerate(HEAD_NAMES):
            if hn not in weights:
                continue
            order = np.lexsort((ids, -vals[:, j].astype(np.float64)))  # desc value, asc id
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(1, n + 1)
            s = s + dt(weights[hn]) / (rank.astype(dt) + alpha) ** beta
        return s
    raise ValueError(kind)


def evaluate(fusion, feat, id_to_row, w, query):
    """Compute the expected result; return (expected, ok)."""
    found, not_found = resolve(query["candidates"], id_to_row)
    ids = np.array(found, dtype=np.int64)
    rows = np.array([id_to_row[i] for i in found], dtype=np.int64)
    logits, vals, h, x0 = forward(feat, rows, query, w, np.float64)
    score = fuse(fusion, ids, vals, np.float64)
    order = np.lexsort((ids, -score))
    k = query["k"]
    top = order[:k]
    ok = scores_separated(score, order, k)
    if fusion["kind"] == "rank":
        alpha, beta = float(fusion["alpha"]), float(fusion["beta"])
        heads = [(j, (lambda wj: lambda r: wj / (r + alpha) ** beta)(float(fusion["weights"][hn])))
                 for j, hn in enumerate(HEAD_NAMES) if hn in fusion["weights"]]
        if not rank_clusters_ok(ids, vals, logits, score, top, heads):
            ok = False
    # float32 probe: returned scores / heads agree to 1e-6 relative, same order
    _, vals32, _, _ = forward(feat, rows, query, w, np.float32)
    score32 = fuse(fusion, ids, vals32, np.float32).astype(np.float64)
    order32 = np.lexsort((ids, -score32))
    if not np.array_equal(order32[:k], top):
        ok = False
    for i in top:
        if not relgap(score[i], score32[i]) < 1e-6:
            ok = False
        for j in range(len(HEADS)):
            if not relgap(vals[i, j], float(vals32[i, j])) < 1e-6:
                ok = False
    # identity head is well conditioned on returned rows (no cancellation to ~0)
    j = HEAD_NAMES.index("score_raw")
    wv, bv = w["heads.score_raw.weight"][0], w["heads.score_raw.bias"][0]
    for i in top:
        mag = np.sum(np.abs(h[i] * wv)) + abs(bv)
        if not abs(vals[i, j]) * 10.0 > mag:
            ok = False
    expected = {
        "ids": [int(ids[i]) for i in top],
        "scores": [float(score[i]) for i in top],
        "heads": [[float(x) for x in vals[i]] for i in top],
        "not_found": not_found,
        # What the scorer saw for each returned item (the feature log):
        # the cross-tower input and each head's logit.
        "features": {
            "cross_inputs": [[float(v) for v in x0[i]] for i in top],
            "logits": [[float(v) for v in logits[i]] for i in top],
        },
    }
    return expected, ok


def draw_query(rng, items, id_set, spec):
    return refcommon.draw_query(rng, items, id_set, spec, USER_DIM, USER_STATS_DIM, CAT_VALUES,
                                UCC_DIM)


# --------------------------------------------------------------------------
# writers


def model_json(fusion):
    return {
        "format": "vstore.three_tower.v1",
        "space": "prerank",
        "version": "v1",
        "user_dim": USER_DIM,
        "item_dim": EMB_DIM,
        "cross": {
            "inputs": CROSS_INPUTS,
            "layers": [{"weight": n + ".weight", "bias": n + ".bias", "activation": a}
                       for n, _, _, a in CROSS_LAYERS],
        },
        "upper": {
            "layers": [{"weight": n + ".weight", "bias": n + ".bias", "activation": a}
                       for n, _, _, a in UPPER_LAYERS],
        },
        "heads": [dict({"name": n, "weight": "heads.%s.weight" % n, "bias": "heads.%s.bias" % n,
                        "activation": a}, **({} if r is None else {"neg_sampling_rate": r}))
                  for n, a, r in HEADS],
        "fusion": fusion,
    }


def main():
    rng = np.random.default_rng(SEED)
    items = make_items(rng)
    weights = make_weights(rng)
    feat = item_features(items)
    id_to_row = {i: r for r, i in enumerate(items["ids"])}
    id_set = set(items["ids"])

    os.makedirs(OUT, exist_ok=True)
    cases = []
    redraws = {}
    for bundle, fusion in FUSIONS.items():
        d = os.path.join(OUT, bundle)
        os.makedirs(d, exist_ok=True)
        write_text(os.path.join(d, "model.json"), dumps(model_json(fusion)))
        write_safetensors(os.path.join(d, "weights.safetensors"), weights, "tests/three_tower/gen.py")
        specs = ["full", "k_over", "k1", "any", "any", "any", "any", "any"]
        queries = []
        redraws[bundle] = 0
        for spec in specs:
            for attempt in range(10000):
                q = draw_query(rng, items, id_set, spec)
                expected, ok = evaluate(fusion, feat, id_to_row, weights, q)
                if ok:
                    break
                redraws[bundle] += 1
            else:
                raise RuntimeError("could not draw a robust query for %s/%s" % (bundle, spec))
            if spec == "k_over":
                assert q["k"] > len(expected["ids"])
            q["expected"] = expected
            queries.append(q)
        cases.append({"bundle": bundle, "queries": queries})

    case = {
        "schema": {
            "categorical": [{"name": "category", "default": DEFAULTS["category"]},
                            {"name": "region", "default": DEFAULTS["region"]}],
            "numeric": [{"name": "price", "default": DEFAULTS["price"]}],
            "stats": [{"name": "ctr_1d", "default": DEFAULTS["ctr_1d"]},
                      {"name": "impressions_7d", "default": DEFAULTS["impressions_7d"]}],
            "embedding": {"space": "prerank", "version": "v1", "dim": EMB_DIM},
        },
        "items": {
            "ids": items["ids"],
            "categorical": {"category": items["category"], "region": items["region"]},
            "numeric": {"price": items["price"]},
            "stats": {"ctr_1d": items["ctr_1d"], "impressions_7d": items["impressions_7d"]},
            "embedding": items["embedding"].tolist(),
        },
        "cases": cases,
    }
    write_text(os.path.join(OUT, "case.json"), dumps(case))
    print("wrote", OUT, "redraws:", redraws)


if __name__ == "__main__":
    main()
