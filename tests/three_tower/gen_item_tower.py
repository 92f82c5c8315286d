"""Generate the independent float64 reference for the item tower (contract v2).

What it does
------------
Written from the contract text alone (/work/shared/DESIGN.md, "Model bundle
contract" and "Contract v2", the `item_tower` part), not from the Rust code.
With numpy only and a fixed seed it builds:

  bundle_three       a `vstore.three_tower.v2` bundle on `prerank@v1`
                     (user_dim 8, item_dim 8) with an `item_tower`
                     (inputs: item_categorical `category` with a table
                     smaller than the stored values, item_numeric `price`
                     identity, `duration` log1p, `duration` bucketize with a
                     table, item_categorical `region`; layers 13 -> 16 relu
                     -> 8 identity), a cross tower over item columns
                     (statistics included) and user inputs, an upper
                     network and two sigmoid heads (one calibrated) fused by
                     weighted_sum. No `name` (so "default").
  bundle_tower_only  a `vstore.item_tower.v1` bundle on `twotower@v1`
                     (item_dim 16) holding only `format`, `space`,
                     `version`, `item_dim` and `item_tower` (inputs:
                     `region`, `price` bucketize with a table, `duration`
                     log1p, `category` with another table, `price` log1p;
                     layers 14 -> 16 relu -> 12 relu (no bias) -> 16
                     identity).

and `case.json`: the schema (categorical `category`, `region`; numeric
`price`, `duration`; statistics `ctr_1d`, `impressions_7d`; each with a
declared default; embeddings `prerank@v1` dim 8 f32 and `twotower@v1` dim 16
f32), 300 items with non-sequential ids and missing values in every column,
each item's `offline` vector per version or null (100 fresh items have none,
12 only a `prerank@v1` one, 12 only a `twotower@v1` one; offline vectors are
random, not tower outputs, so a test tells them apart),
`expected_vectors` (per version, the float64 tower output of every item
without an offline vector for it), `computed_count` per version, and
queries: 6 three-tower queries on `prerank@v1` and 6 inner-product queries
on `twotower@v1` (a full scan, an explicit list of every id plus unknown
ids, k over the candidates, k = 1, two of any size; candidate lists with
unknown and duplicated ids) with the expected top-k ids, scores (and, for
three-tower, the per-head values after calibration) and not-found ids,
scored with the offline vector where an item has one and its computed one
otherwise.

Robustness (as gen_v2.py; the store computes in float32)
--------------------------------------------------------
Every stored float (weights, profile values, offline vectors, user inputs)
is float32-exact, so the float64 reference uses the values the store reads.
The towers' weights are redrawn (deterministically) until every computed
vector is well conditioned: the float32 tower output (the probe below) is
within 1e-6 of float64, measured per vector as
max|diff| / max(max|want|, 1e-3). Queries are redrawn until: consecutive
scores in the top k+1 differ by > 1e-4 relative; a float32 probe (towers in
float32, giving the vectors the store would store, then scoring in float32)
returns the same top k with scores (and head values) within 1e-6 relative;
an inner product on a returned row is not a cancellation
(|score| * 10 > sum_i |u_i v_i|). Across each version's queries at least 5
returned rows have computed vectors and at least 5 offline ones (asserted),
so the queries exercise the tower, not only the offline vectors. The
computed vectors' spread is kept near the offline vectors' (std in 0.5..2)
so that both kinds compete for the top k.

The Rust test (tests/item_tower.rs) compares: computed vectors to 1e-5
relative (max|diff| / max(max|want|, 1e-3)), offline vectors bit for bit,
query ids and not-found ids exactly, scores and head values to 1e-5
relative (common::reference::close).

Both the float64 reference and the float32 probe use only elementwise numpy
arithmetic (correctly rounded) and Python's math.exp / math.log1p (libm,
rounded to the dtype), never BLAS or numpy's SIMD transcendental functions,
so the output does not depend on which SIMD path numpy picks.

Contract ambiguities and how they are resolved here
---------------------------------------------------
1. A missing profile value reads as the column's declared default, also for
   categoricals, and that default then goes through the input like any
   value: `category`'s default is 6, which is outside the `prerank@v1`
   tower's category table (vocab 6), so a missing category reads row 0
   there, and row 6 in the `twotower@v1` tower (vocab 7). (DESIGN: "missing
   values have a declared default"; "values outside the vocabulary map to
   row 0"; item_tower inputs are "read as in the cross tower".)
2. Out-of-vocabulary categorical values map to row 0 in the item tower as
   in the cross tower (DESIGN says item_tower inputs are read as in the
   cross tower). Stored `category` values are 0..7 and `region` 0..3;
   tables: prerank tower category 6 rows, region 4; twotower tower
   category 7 rows, region 3 (region 3 -> row 0); the cross tower's
   category table has 5 rows.
3. Bucketize: bucket i = number of boundaries <= x, the comparison made on
   the float32 value against the boundary as float32 (boundaries here are
   integers, exact either way); some values lie exactly on boundaries to
   pin `<=`.
4. A layer without `bias` (bundle_tower_only, `item_tower.layers[1]`):
   DESIGN is silent on whether bias may be omitted; it says weights follow
   PyTorch nn.Linear, whose `bias=False` layers have no bias tensor, and
   the project's docs/BUNDLE.md says "optional bias [out] (absent: zero)".
   Taken as zero. Every layer names its `activation` explicitly (BUNDLE.md
   defaults it to identity, DESIGN does not say).
5. The item tower reads profile columns only (DESIGN: "over item profile
   columns only"); no statistics column is an item tower input here (the
   cross tower of bundle_three reads `ctr_1d` and `impressions_7d`).
6. The store computes in float32 and stores in the column's dtype (f32
   here), so a computed vector read back is the float32 tower output; the
   reference gives the float64 tower output and the test compares to 1e-5
   relative (max|diff| / max(max|want|, 1e-3)). The order of the float32
   accumulation is the store's; the well-conditioning check (1e-6 against
   a left-to-right float32 probe) leaves room for any order.
7. A three-tower query scores the item vector the store holds: offline if
   given, computed otherwise. Items with an offline vector for one version
   only get the other version computed, in the same batch/transaction.
8. `vstore.item_tower.v1` bundles carry no tensors other than the tower's;
   the safetensors file holds exactly those (plus the usual `__metadata__`).

Output (overwritten, byte-for-byte reproducible):
  tests/data/item_tower/case.json
  tests/data/item_tower/bundle_three/{model.json,weights.safetensors}
  tests/data/item_tower/bundle_tower_only/{model.json,weights.safetensors}

How to run (from the repository root; numpy only):
  target/peers-venv/bin/python tests/three_tower/gen_item_tower.py
(any Python 3 with numpy; here /work/wt-ref/target/peers-venv/bin/python).
`tests/item_tower.rs` reads the output.
"""

import math
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the sources

import numpy as np  # noqa: E402

from refcommon import (draw_candidates, dumps, f32, f32s, relgap, resolve,  # noqa: E402
                       scores_separated, write_safetensors, write_text)
from refcommon import draw_ids, on_bounds, with_nulls  # noqa: E402

SEED = 20261205
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "item_tower")
GENERATOR = "tests/three_tower/gen_item_tower.py"

N_ITEMS = 300
N_FRESH = 100  # no offline vector for either version
N_ONLY_PRERANK = 12  # offline prerank@v1 only (twotower@v1 computed)
N_ONLY_TWOTOWER = 12  # offline twotower@v1 only (prerank@v1 computed)

KEY3 = "prerank@v1"
KEY2 = "twotower@v1"
DIM3 = 8
DIM2 = 16
USER_DIM = 8

CAT_VALUES = 8  # stored category values 0..7
REGION_VALUES = 4  # stored region values 0..3
DUR_BOUNDS = [30, 120, 300]
PRICE_BOUNDS = [2, 5, 8]
IMP_BOUNDS = [10, 100, 1000]
USER_STATS_DIM = 3
UCC_DIM = 2

DEFAULTS = {
    "category": 6,  # outside the prerank tower's category table (6 rows): row 0
    "region": 1,
    "price": f32s(2.5),
    "duration": f32s(60.0),
    "ctr_1d": f32s(0.01),
    "impressions_7d": f32s(0.0),
}
NUMERIC = ["price", "duration", "ctr_1d", "impressions_7d"]
CATEGORICAL = ["category", "region"]


def he(fan_in):
    return math.sqrt(2.0 / fan_in)


class Spec:
    """A bundle's tensors: name -> (shape, scale, shift)."""

    def __init__(self):
        self.tensors = []

    def tensor(self, name, shape, scale=0.3, shift=0.0):
        self.tensors.append((name, shape, scale, shift))
        return name

    def layers(self, prefix, dims, acts, no_bias=(), first_scale=1.0):
        out = []
        for i, a in enumerate(acts):
            scale = he(dims[i]) * (first_scale if i == 0 else 1.0)
            layer = {"weight": self.tensor("%s.%d.weight" % (prefix, i), [dims[i + 1], dims[i]],
                                           scale=scale)}
            if i not in no_bias:
                layer["bias"] = self.tensor("%s.%d.bias" % (prefix, i), [dims[i + 1]], scale=0.2)
            layer["activation"] = a
            out.append(layer)
        return out


def tower_three(s):
    """prerank@v1's item tower: 4 + 1 + 1 + 3 + 4 = 13 inputs -> 16 -> 8."""
    s.tensor("item_tower.emb.category", [6, 4], scale=0.5)
    s.tensor("item_tower.emb.duration", [len(DUR_BOUNDS) + 1, 3], scale=0.5)
    s.tensor("item_tower.emb.region", [REGION_VALUES, 4], scale=0.5)
    inputs = [
        {"kind": "item_categorical", "column": "category", "embedding": "item_tower.emb.category"},
        {"kind": "item_numeric", "column": "price", "transform": "identity"},
        {"kind": "item_numeric", "column": "duration", "transform": "log1p"},
        {"kind": "item_numeric", "column": "duration", "transform": {"bucketize": DUR_BOUNDS},
         "embedding": "item_tower.emb.duration"},
        {"kind": "item_categorical", "column": "region", "embedding": "item_tower.emb.region"},
    ]
    # price (identity, up to 10) is not normalised: a smaller first layer
    # keeps the outputs about as spread as the offline vectors
    return {"inputs": inputs, "layers": s.layers("item_tower", [13, 16, DIM3], ["relu", "identity"],
                                                 first_scale=0.5)}


def tower_only(s):
    """twotower@v1's item tower: 3 + 4 + 1 + 5 + 1 = 14 inputs -> 16 -> 12 (no bias) -> 16."""
    s.tensor("tower.emb.region", [3, 3], scale=0.5)  # region 3 -> row 0
    s.tensor("tower.emb.price", [len(PRICE_BOUNDS) + 1, 4], scale=0.5)
    s.tensor("tower.emb.category", [7, 5], scale=0.5)  # category 7 -> row 0
    inputs = [
        {"kind": "item_categorical", "column": "region", "embedding": "tower.emb.region"},
        {"kind": "item_numeric", "column": "price", "transform": {"bucketize": PRICE_BOUNDS},
         "embedding": "tower.emb.price"},
        {"kind": "item_numeric", "column": "duration", "transform": "log1p"},
        {"kind": "item_categorical", "column": "category", "embedding": "tower.emb.category"},
        {"kind": "item_numeric", "column": "price", "transform": "log1p"},
    ]
    return {"inputs": inputs,
            "layers": s.layers("tower", [14, 16, 12, DIM2], ["relu", "relu", "identity"], no_bias=(1,))}


CROSS_INPUTS = [
    {"kind": "item_numeric", "column": "ctr_1d", "transform": "log1p"},
    {"kind": "item_numeric", "column": "price", "transform": "identity"},
    {"kind": "item_numeric", "column": "impressions_7d",
     "transform": {"bucketize": IMP_BOUNDS}, "embedding": "emb.imp_bucket"},
    {"kind": "item_categorical", "column": "category", "embedding": "emb.category"},
    {"kind": "user_dense", "name": "user_stats", "dim": USER_STATS_DIM},
    {"kind": "user_by_item", "name": "user_category_ctr", "column": "category",
     "dim": UCC_DIM, "default": [f32s(0.05), f32s(-0.1)]},
]
CROSS_IN = 1 + 1 + 3 + 4 + USER_STATS_DIM + UCC_DIM  # 14


def bundle_three():
    s = Spec()
    s.tensor("emb.imp_bucket", [len(IMP_BOUNDS) + 1, 3], scale=0.5)
    s.tensor("emb.category", [5, 4], scale=0.5)  # category values >= 5 -> row 0
    mj = {"format": "vstore.three_tower.v2", "space": "prerank", "version": "v1",
          "user_dim": USER_DIM, "item_dim": DIM3}
    mj["cross"] = {"inputs": CROSS_INPUTS,
                   "layers": s.layers("cross", [CROSS_IN, 8, 4], ["relu", "sigmoid"])}
    mj["upper"] = {"layers": s.layers("upper", [USER_DIM + DIM3 + 4, 16, 8], ["relu", "relu"])}
    heads = []
    for name, rate in (("click", 0.1), ("like", None)):
        h = {"name": name,
             "weight": s.tensor("heads.%s.weight" % name, [1, 8], scale=he(8)),
             "bias": s.tensor("heads.%s.bias" % name, [1]),
             "activation": "sigmoid"}
        if rate is not None:
            h["neg_sampling_rate"] = rate
        heads.append(h)
    mj["heads"] = heads
    mj["fusion"] = {"kind": "weighted_sum", "weights": {"click": 1.0, "like": 0.5}}
    mj["item_tower"] = tower_three(s)
    return mj, s


def bundle_tower_only():
    s = Spec()
    mj = {"format": "vstore.item_tower.v1", "space": "twotower", "version": "v1", "item_dim": DIM2}
    mj["item_tower"] = tower_only(s)
    return mj, s


def make_weights(rng, spec):
    return {name: f32(rng.normal(0.0, scale, shape) + shift) for name, shape, scale, shift in spec.tensors}


# --------------------------------------------------------------------------
# items


def make_items(rng):
    ids = draw_ids(rng, N_ITEMS, 3000)



    category = with_nulls(rng, rng.integers(0, CAT_VALUES, N_ITEMS).tolist(), 0.1)
    region = with_nulls(rng, rng.integers(0, REGION_VALUES, N_ITEMS).tolist(), 0.1)
    price = on_bounds(rng, f32(rng.uniform(0.5, 10.0, N_ITEMS)), PRICE_BOUNDS)
    price = with_nulls(rng, price.tolist(), 0.1)
    dur = on_bounds(rng, f32(np.exp(rng.uniform(np.log(5.0), np.log(1200.0), N_ITEMS))), DUR_BOUNDS)
    duration = with_nulls(rng, dur.tolist(), 0.12)
    ctr = f32(rng.uniform(0.0, 0.3, N_ITEMS))
    ctr = with_nulls(rng, ctr.tolist(), 0.1)
    imp = on_bounds(rng, f32(np.exp(rng.uniform(0.0, np.log(5001.0), N_ITEMS)) - 1.0), IMP_BOUNDS)
    imp = with_nulls(rng, imp.tolist(), 0.1)

    # which items have which offline vectors
    kinds = (["fresh"] * N_FRESH + ["prerank"] * N_ONLY_PRERANK + ["twotower"] * N_ONLY_TWOTOWER
             + ["both"] * (N_ITEMS - N_FRESH - N_ONLY_PRERANK - N_ONLY_TWOTOWER))
    kinds = [kinds[i] for i in rng.permutation(N_ITEMS)]
    off3 = f32(rng.normal(0.0, 1.0, (N_ITEMS, DIM3)))
    off2 = f32(rng.normal(0.0, 1.0, (N_ITEMS, DIM2)))
    offline = {
        KEY3: [off3[i].tolist() if kinds[i] in ("prerank", "both") else None for i in range(N_ITEMS)],
        KEY2: [off2[i].tolist() if kinds[i] in ("twotower", "both") else None for i in range(N_ITEMS)],
    }
    return {
        "ids": [int(i) for i in ids],
        "category": category,
        "region": region,
        "price": price,
        "duration": duration,
        "ctr_1d": ctr,
        "impressions_7d": imp,
        "offline": offline,
    }


def item_features(items):
    """Per-item values with defaults applied (float64, f32-exact; ints for categoricals)."""
    feat = {col: np.array([DEFAULTS[col] if v is None else v for v in items[col]], dtype=np.float64)
            for col in NUMERIC}
    for col in CATEGORICAL:
        feat[col] = np.array([DEFAULTS[col] if v is None else v for v in items[col]], dtype=np.int64)
    return feat


# --------------------------------------------------------------------------
# reference model. dt float64 is the reference, dt float32 the probe; only
# elementwise numpy arithmetic and libm (math.*) rounded to dt.


def vmap(fn, x, dt):
    x = np.asarray(x, dtype=np.float64)
    y = np.array([fn(float(v)) for v in x.ravel()], dtype=np.float64).reshape(x.shape)
    return y.astype(dt)


def rowsum(x, dt):
    acc = np.zeros(x.shape[0], dtype=dt)
    for i in range(x.shape[1]):
        acc = acc + x[:, i]
    return acc


def linear(x, wt, b, dt):
    """x @ W.T + b, W [out, in] (nn.Linear), accumulated left to right in dt."""
    acc = np.zeros((x.shape[0], wt.shape[0]), dtype=dt)
    for i in range(wt.shape[1]):
        acc = acc + x[:, i:i + 1] * wt[None, :, i]
    return acc if b is None else acc + b


def act(x, kind, dt):
    if kind == "relu":
        return np.maximum(x, dt(0))
    if kind == "sigmoid":
        return dt(1) / (dt(1) + vmap(math.exp, -x, dt))
    if kind == "identity":
        return x
    raise ValueError(kind)


def cst(a, dt):
    return np.asarray(a, dtype=np.float64).astype(dt)


def chain(layers, w, x, dt):
    for layer in layers:
        b = cst(w[layer["bias"]], dt) if "bias" in layer else None  # absent bias: zero
        x = act(linear(x, cst(w[layer["weight"]], dt), b, dt), layer["activation"], dt)
    return x


def item_input(inp, w, feat, rows, dt):
    """One item-side input (item_numeric / item_categorical), read as the
    contract says: missing -> default (already in feat), then transform or
    table lookup (out-of-vocabulary -> row 0)."""
    if inp["kind"] == "item_numeric":
        v = cst(feat[inp["column"]][rows], dt)
        tr = inp.get("transform", "identity")
        if tr == "identity":
            return v[:, None]
        if tr == "log1p":
            return vmap(math.log1p, v, dt)[:, None]
        idx = np.zeros(len(v), dtype=np.int64)
        for b in tr["bucketize"]:
            idx += (dt(b) <= v).astype(np.int64)  # number of boundaries <= x
        return cst(w[inp["embedding"]], dt)[idx]
    if inp["kind"] == "item_categorical":
        table = cst(w[inp["embedding"]], dt)
        v = feat[inp["column"]][rows]
        return table[np.where(v < table.shape[0], v, 0)]
    raise ValueError(inp["kind"])


def tower(t, w, feat, rows, dt):
    x = np.concatenate([item_input(inp, w, feat, rows, dt) for inp in t["inputs"]], axis=1)
    return chain(t["layers"], w, x, dt)


def three_forward(mj, w, feat, rows, vecs, query, dt):
    """(head values after calibration [n, H], fused score [n]) for the rows,
    item vectors vecs [n, item_dim] (already in dt)."""
    n = len(rows)
    xs = []
    for inp in mj["cross"]["inputs"]:
        if inp["kind"] == "user_dense":
            xs.append(np.tile(cst(query["user_dense"][inp["name"]], dt), (n, 1)))
        elif inp["kind"] == "user_by_item":
            m = query["user_by_item"][inp["name"]]
            xs.append(cst([m.get(str(int(v)), inp["default"]) for v in feat[inp["column"]][rows]], dt))
        else:
            xs.append(item_input(inp, w, feat, rows, dt))
    cross = chain(mj["cross"]["layers"], w, np.concatenate(xs, axis=1), dt)
    u = np.tile(cst(query["user"], dt), (n, 1))
    h = chain(mj["upper"]["layers"], w, np.concatenate([u, vecs, cross], axis=1), dt)
    vals = []
    for head in mj["heads"]:
        z = linear(h, cst(w[head["weight"]], dt), cst(w[head["bias"]], dt), dt)[:, 0]
        v = act(z, head["activation"], dt)
        if "neg_sampling_rate" in head:
            r = cst(head["neg_sampling_rate"], dt)
            v = r * v / ((dt(1) - v) + r * v)
        vals.append(v)
    vals = np.stack(vals, axis=1)
    score = np.zeros(n, dtype=dt)
    names = [hd["name"] for hd in mj["heads"]]
    for hname, wh in mj["fusion"]["weights"].items():
        score = score + dt(wh) * vals[:, names.index(hname)]
    return vals, score


# --------------------------------------------------------------------------
# vectors: offline where given, the tower's otherwise


def vectors(items, key, computed):
    """[n, dim] float64 vectors per row: offline (f32-exact) or computed."""
    off = items["offline"][key]
    return np.array([computed[r] if v is None else v for r, v in enumerate(off)], dtype=np.float64)


def conditioned(want, got):
    """Per row: max|diff| / max(max|want|, 1e-3)."""
    got = got.astype(np.float64)
    return np.max(np.abs(got - want), axis=1) / np.maximum(np.max(np.abs(want), axis=1), 1e-3)


def draw_tower_weights(rng, make, feat, items, key):
    """Weights of the bundle `make` builds, redrawn until every computed
    vector of `key` is well conditioned; returns (mj, weights, vec64, vec32, redraws)."""
    mj, spec = make()
    rows = np.arange(N_ITEMS)
    need = np.array([v is None for v in items["offline"][key]])
    for attempt in range(1000):
        w = make_weights(rng, spec)
        v64 = tower(mj["item_tower"], w, feat, rows, np.float64)
        v32 = tower(mj["item_tower"], w, feat, rows, np.float32)
        rel = conditioned(v64, v32)
        spread = np.std(v64[need])
        if np.all(rel[need] < 1e-6) and 0.5 < spread < 2.0:  # offline vectors: N(0, 1)
            return mj, w, v64, v32, attempt
    raise RuntimeError("could not draw well-conditioned tower weights for " + key)


def draw_cands(rng, ids, id_set, spec):
    if spec != "all_ids":
        return draw_candidates(rng, ids, id_set, spec)
    unknown = []
    while len(unknown) < 2:
        u = int(rng.integers(1, 2**53))
        if u not in id_set and u not in unknown:
            unknown.append(u)
    cands = list(ids) + unknown
    cands = [cands[i] for i in rng.permutation(len(cands))]
    return cands, int(rng.integers(5, 31))


SPECS = ["full", "all_ids", "k_over", "k1", "any", "any"]


def three_query(rng, items, id_set, spec):
    q = {"user": f32(rng.normal(0.0, 1.0, USER_DIM)).tolist(),
         "user_dense": {"user_stats": f32(rng.normal(0.0, 1.0, USER_STATS_DIM)).tolist()}}
    keys = sorted(rng.choice(CAT_VALUES, int(rng.integers(2, 6)), replace=False).tolist())
    q["user_by_item"] = {"user_category_ctr": {str(kv): f32(rng.normal(0.0, 0.5, UCC_DIM)).tolist()
                                               for kv in keys}}
    q["candidates"], q["k"] = draw_cands(rng, items["ids"], id_set, spec)
    return q


def two_query(rng, items, id_set, spec):
    q = {"user": f32(rng.normal(0.0, 1.0, DIM2)).tolist()}
    q["candidates"], q["k"] = draw_cands(rng, items["ids"], id_set, spec)
    return q


def top_of(ids, score, k):
    order = np.lexsort((ids, -score))
    return order, order[:k]


def eval_three(mj, w, feat, id_to_row, vec64, vec32, q):
    found, not_found = resolve(q["candidates"], id_to_row)
    ids = np.array(found, dtype=np.int64)
    rows = np.array([id_to_row[i] for i in found], dtype=np.int64)
    vals, score = three_forward(mj, w, feat, rows, vec64[rows], q, np.float64)
    vals32, score32 = three_forward(mj, w, feat, rows, vec32[rows], q, np.float32)
    assert np.all(np.isfinite(score))
    k = q["k"]
    order, top = top_of(ids, score, k)
    ok = scores_separated(score, order, k)
    _, top32 = top_of(ids, score32.astype(np.float64), k)
    ok = ok and np.array_equal(top, top32)
    for i in top:
        ok = ok and relgap(score[i], float(score32[i])) < 1e-6
        ok = ok and all(relgap(vals[i, j], float(vals32[i, j])) < 1e-6 for j in range(vals.shape[1]))
    exp = {"ids": [int(ids[i]) for i in top],
           "scores": [float(score[i]) for i in top],
           "heads": [[float(x) for x in vals[i]] for i in top],
           "not_found": not_found}
    return exp, ok, [int(rows[i]) for i in top]


def eval_two(feat, id_to_row, vec64, vec32, q):
    found, not_found = resolve(q["candidates"], id_to_row)
    ids = np.array(found, dtype=np.int64)
    rows = np.array([id_to_row[i] for i in found], dtype=np.int64)
    u64, u32 = cst(q["user"], np.float64), cst(q["user"], np.float32)
    score = rowsum(vec64[rows] * u64[None, :], np.float64)
    score32 = rowsum(vec32[rows] * u32[None, :], np.float32)
    absum = rowsum(np.abs(vec64[rows] * u64[None, :]), np.float64)
    k = q["k"]
    order, top = top_of(ids, score, k)
    ok = scores_separated(score, order, k)
    _, top32 = top_of(ids, score32.astype(np.float64), k)
    ok = ok and np.array_equal(top, top32)
    for i in top:
        ok = ok and relgap(score[i], float(score32[i])) < 1e-6
        ok = ok and abs(score[i]) * 10.0 > absum[i]  # no cancellation to ~0
    exp = {"ids": [int(ids[i]) for i in top],
           "scores": [float(score[i]) for i in top],
           "not_found": not_found}
    return exp, ok, [int(rows[i]) for i in top]


def draw_queries(rng, draw, evaluate, computed_rows, what):
    queries, redraws, hit_computed, hit_offline = [], 0, 0, 0
    for qi, spec in enumerate(SPECS):
        for attempt in range(10000):
            q = draw(spec)
            exp, ok, top_rows = evaluate(q)
            if ok:
                break
            redraws += 1
        else:
            raise RuntimeError("could not draw a robust %s query %d" % (what, qi))
        if spec == "k_over":
            assert q["k"] > len(exp["ids"])
        hit_computed += sum(1 for r in top_rows if r in computed_rows)
        hit_offline += sum(1 for r in top_rows if r not in computed_rows)
        q["expected"] = exp
        queries.append(q)
    # the queries return rows with computed vectors and rows with offline ones
    assert hit_computed >= 5 and hit_offline >= 5, (what, hit_computed, hit_offline)
    return queries, redraws, hit_computed


def main():
    rng = np.random.default_rng(SEED)
    items = make_items(rng)
    feat = item_features(items)
    ids = items["ids"]
    id_to_row = {i: r for r, i in enumerate(ids)}
    id_set = set(ids)

    mj3, w3, t64_3, t32_3, redraw3 = draw_tower_weights(rng, bundle_three, feat, items, KEY3)
    mj2, w2, t64_2, t32_2, redraw2 = draw_tower_weights(rng, bundle_tower_only, feat, items, KEY2)
    # what the store holds: offline vectors as given, computed ones as the
    # tower makes them (float64 reference; float32 probe)
    vec3_64, vec3_32 = vectors(items, KEY3, t64_3), vectors(items, KEY3, t32_3).astype(np.float32)
    vec2_64, vec2_32 = vectors(items, KEY2, t64_2), vectors(items, KEY2, t32_2).astype(np.float32)
    computed3 = {r for r, v in enumerate(items["offline"][KEY3]) if v is None}
    computed2 = {r for r, v in enumerate(items["offline"][KEY2]) if v is None}

    q3, qr3, hit3 = draw_queries(
        rng, lambda spec: three_query(rng, items, id_set, spec),
        lambda q: eval_three(mj3, w3, feat, id_to_row, vec3_64, vec3_32, q), computed3, KEY3)
    q2, qr2, hit2 = draw_queries(
        rng, lambda spec: two_query(rng, items, id_set, spec),
        lambda q: eval_two(feat, id_to_row, vec2_64, vec2_32, q), computed2, KEY2)

    os.makedirs(OUT, exist_ok=True)
    for d, mj, w in (("bundle_three", mj3, w3), ("bundle_tower_only", mj2, w2)):
        os.makedirs(os.path.join(OUT, d), exist_ok=True)
        write_text(os.path.join(OUT, d, "model.json"), dumps(mj))
        write_safetensors(os.path.join(OUT, d, "weights.safetensors"), w, GENERATOR)

    def expected_vectors(key, t64):
        rows = [r for r, v in enumerate(items["offline"][key]) if v is None]
        return {"ids": [ids[r] for r in rows], "vectors": [t64[r].tolist() for r in rows]}

    case = {
        "schema": {
            "categorical": [{"name": c, "default": DEFAULTS[c]} for c in CATEGORICAL],
            "numeric": [{"name": c, "default": DEFAULTS[c]} for c in ("price", "duration")],
            "stats": [{"name": c, "default": DEFAULTS[c]} for c in ("ctr_1d", "impressions_7d")],
            "embeddings": [
                {"space": "prerank", "version": "v1", "dim": DIM3, "dtype": "f32"},
                {"space": "twotower", "version": "v1", "dim": DIM2, "dtype": "f32"},
            ],
        },
        "bundles": {KEY3: "bundle_three", KEY2: "bundle_tower_only"},
        "items": {
            "ids": ids,
            "categorical": {c: items[c] for c in CATEGORICAL},
            "numeric": {c: items[c] for c in ("price", "duration")},
            "stats": {c: items[c] for c in ("ctr_1d", "impressions_7d")},
            "offline": items["offline"],
        },
        "computed_count": {KEY3: len(computed3), KEY2: len(computed2)},
        "expected_vectors": {KEY3: expected_vectors(KEY3, t64_3), KEY2: expected_vectors(KEY2, t64_2)},
        "three_tower": {"key": KEY3, "heads": [h["name"] for h in mj3["heads"]], "queries": q3},
        "two_tower": {"key": KEY2, "queries": q2},
    }
    write_text(os.path.join(OUT, "case.json"), dumps(case))
    print("wrote", OUT)
    print("tower weight redraws:", {KEY3: redraw3, KEY2: redraw2},
          "query redraws:", {KEY3: qr3, KEY2: qr2},
          "returned rows with computed vectors:", {KEY3: hit3, KEY2: hit2},
          "computed:", {KEY3: len(computed3), KEY2: len(computed2)})


if __name__ == "__main__":
    main()
