"""Generate the independent float64 reference for the three-tower contract v2.

What it does
------------
Written from the contract text alone (/work/shared/DESIGN.md, "Model bundle
contract" and "Contract v2"), not from the Rust code. With numpy only and a
fixed seed it builds a small item table (300 items; categorical `category`,
`region`; profile numerics `price`, `duration`; statistics `ctr_1d`,
`impressions_7d`; missing values everywhere; one `prerank@v1` embedding of
dim 8) and five `vstore.three_tower.v2` bundles, all on `prerank@v1` under
different names, that together use every v2 part:

  bundle_default      no `name` (so "default"); `cross.se`; v1-shaped upper;
                      float16 and bfloat16 tensors; fusion weighted_sum
  bundle_dot_hadamard `upper.inputs` reordered with "dot" and "hadamard";
                      head towers; `normalize` on `duration`; fusion product
                      with `columns` (price, duration)
  bundle_no_upper     `cross.se`; `upper.inputs` with "dot", no
                      `upper.layers`; head towers and a head without one;
                      float16 and bfloat16 tensors; fusion click_weighted
  bundle_mmoe         shared bottom (`upper.layers`) then `upper.mmoe` (3
                      experts of different depths, a softmax gate per head);
                      head towers after the mixture; `normalize`; bfloat16 and
                      float16 tensors; fusion rank_per_head
  bundle_mmoe_flat    `upper.layers: []` then `upper.mmoe`; an `item_tower`
                      section (validated only: every item has a vector, so
                      it changes no score); fusion offset_product

Each bundle gets 8 queries (a full scan, k over the candidates, k = 1, any;
candidate lists with unknown and duplicated ids) of which 3 carry a per-query
`fusion` override of another kind or other weights. All six fusion kinds
(weighted_sum, product with and without columns, click_weighted,
offset_product, rank, rank_per_head) appear as overrides; all but rank also
as a bundle's own fusion.
Expected top-k ids, fused scores, per-head values (after calibration and
normalize) and not-found ids are computed in float64.

Every stored float is exactly representable in its stored dtype (float32, or
float16 / bfloat16 for the tensors so marked; those values are f32-exact too),
so the float64 reference uses the values the store reads. Queries are redrawn
(deterministically) until the expected result is robust to a float32
implementation, by gen.py's rules: consecutive fused scores in the top k+1
differ by > 1e-4 relative; for rank and rank_per_head, no near-tie cluster
touches the result (refcommon.rank_clusters_ok); a float32 re-computation
returns the same top k with scores and head values within 1e-6 relative; an
identity head is not a cancellation near zero on returned rows.

Both the float64 reference and the float32 probe use only elementwise numpy
arithmetic (correctly rounded) and Python's math.exp / math.log1p / math.pow
(libm, rounded to the dtype), never BLAS or numpy's SIMD transcendental
functions, so the output does not depend on which SIMD path numpy picks
(checked: identical with NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4").

Output (overwritten, byte-for-byte reproducible):
  tests/data/three_tower_v2/case.json
  tests/data/three_tower_v2/bundle_*/{model.json,weights.safetensors}

How to run (from the repository root):
  target/peers-venv/bin/python tests/three_tower/gen_v2.py
"""

import math
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the sources

import numpy as np  # noqa: E402

import refcommon  # noqa: E402
from refcommon import (bf16, draw_candidates, dumps, f16, f32, f32s,  # noqa: E402
                       rank_clusters_ok, relgap, resolve, scores_separated,
                       write_safetensors, write_text)
from refcommon import draw_ids, on_bounds, with_nulls  # noqa: E402

SEED = 20250207
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "three_tower_v2")
GENERATOR = "tests/three_tower/gen_v2.py"

N_ITEMS = 300
EMB_DIM = 8
USER_DIM = 8  # == item_dim, so "dot" and "hadamard" are allowed
CAT_VALUES = 8  # stored category values are 0..7
CAT_VOCAB = 5  # emb.category rows; values >= 5 map to row 0
REGION_VALUES = 4
IMP_BOUNDS = [10, 100, 1000]
DUR_BOUNDS = [30, 120, 300]
USER_STATS_DIM = 3
UCC_DIM = 2

DEFAULTS = {
    "category": 0,
    "region": 1,
    "price": f32s(2.5),
    "duration": f32s(60.0),
    "ctr_1d": f32s(0.01),
    "impressions_7d": f32s(0.0),
}
UCC_DEFAULT = [f32s(0.05), f32s(-0.1)]
NUMERIC = ["price", "duration", "ctr_1d", "impressions_7d"]

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
CROSS_WIDTHS = [1, 1, 3, 4, USER_STATS_DIM, UCC_DIM]  # per input; F = 6
CROSS_IN = sum(CROSS_WIDTHS)  # 14


# --------------------------------------------------------------------------
# bundle definitions: model.json plus the tensors' shapes and dtypes


def he(fan_in):
    """He-initialisation scale: activations keep their spread through the layers."""
    return math.sqrt(2.0 / fan_in)


class Spec:
    """Collects a bundle's tensors (name -> shape, scale, bias shift, dtype)."""

    def __init__(self):
        self.tensors = []
        self.dtypes = {}

    def tensor(self, name, shape, scale=0.3, shift=0.0, dtype="F32"):
        self.tensors.append((name, shape, scale, shift))
        if dtype != "F32":
            self.dtypes[name] = dtype
        return name

    def layers(self, prefix, dims, acts, dtypes=None, bias_shift=0.0):
        """A chain dims[0] -> dims[1] -> ...; returns the `layers` list."""
        dtypes = dtypes or {}
        out = []
        for i, a in enumerate(acts):
            w = self.tensor("%s.%d.weight" % (prefix, i), [dims[i + 1], dims[i]], scale=he(dims[i]),
                            dtype=dtypes.get("%d.weight" % i, "F32"))
            b = self.tensor("%s.%d.bias" % (prefix, i), [dims[i + 1]], shift=bias_shift,
                            dtype=dtypes.get("%d.bias" % i, "F32"))
            out.append({"weight": w, "bias": b, "activation": a})
        return out

    def head(self, name, dim_in, activation, rate=None, tower=None, normalize=None,
             shift=0.0, dtype="F32", tower_dtypes=None):
        h = {"name": name}
        if tower is not None:
            dims, acts = tower
            h["tower"] = {"layers": self.layers("tower.%s" % name, [dim_in] + dims, acts, tower_dtypes)}
            dim_in = dims[-1]
        h["weight"] = self.tensor("heads.%s.weight" % name, [1, dim_in], scale=he(dim_in), dtype=dtype)
        h["bias"] = self.tensor("heads.%s.bias" % name, [1], shift=shift)
        h["activation"] = activation
        if rate is not None:
            h["neg_sampling_rate"] = rate
        if normalize is not None:
            h["normalize"] = normalize
        return h

    def cross_tables(self, dtypes=None):
        dtypes = dtypes or {}
        self.tensor("emb.imp_bucket", [len(IMP_BOUNDS) + 1, 3], scale=0.5,
                    dtype=dtypes.get("emb.imp_bucket", "F32"))
        self.tensor("emb.category", [CAT_VOCAB, 4], scale=0.5,
                    dtype=dtypes.get("emb.category", "F32"))


def header(name):
    mj = {"format": "vstore.three_tower.v2"}
    if name is not None:
        mj["name"] = name
    mj.update({"space": "prerank", "version": "v1", "user_dim": USER_DIM, "item_dim": EMB_DIM})
    return mj


NORM_FINISH = {"column": "duration", "bucketize": DUR_BOUNDS, "values": [0.875, 0.625, 0.5, 0.375]}
NORM_FINISH_D = {"column": "duration", "bucketize": [60, 600], "values": [0.75, 0.5, 0.25]}


def bundle_default():
    s = Spec()
    s.cross_tables({"emb.category": "BF16"})
    mj = header(None)
    mj["cross"] = {
        "inputs": CROSS_INPUTS,
        "se": {"layers": s.layers("cross.se", [len(CROSS_INPUTS), 4, len(CROSS_INPUTS)],
                                  ["relu", "sigmoid"], {"0.weight": "BF16"})},
        "layers": s.layers("cross", [CROSS_IN, 12, 5], ["relu", "sigmoid"], {"0.weight": "F16"}),
    }
    mj["upper"] = {"layers": s.layers("upper", [USER_DIM + EMB_DIM + 5, 16, 10], ["relu", "identity"],
                                      {"0.weight": "BF16", "0.bias": "F16"})}
    mj["heads"] = [
        s.head("click", 10, "sigmoid", rate=0.1, dtype="F16"),
        s.head("like", 10, "sigmoid"),
        s.head("watch_time", 10, "exp"),
        s.head("score_raw", 10, "identity", shift=3.0),
    ]
    mj["fusion"] = {"kind": "weighted_sum",
                    "weights": {"click": 1.0, "like": 0.5, "watch_time": 0.125, "score_raw": 0.25}}
    overrides = [
        {"kind": "rank", "weights": {"click": 1.0, "like": 0.75, "watch_time": 0.25},
         "alpha": 10.0, "beta": 1.0},
        {"kind": "product", "weights": {"click": 1.0, "like": 0.5, "watch_time": 0.25},
         "columns": {"price": 0.5}},
        {"kind": "weighted_sum", "weights": {"click": 2.0, "score_raw": 0.125}},
    ]
    return "default", mj, s, overrides, []


def bundle_dot_hadamard():
    s = Spec()
    s.cross_tables()
    mj = header("dot_hadamard")
    mj["cross"] = {"inputs": CROSS_INPUTS,
                   "layers": s.layers("cross", [CROSS_IN, 8, 4], ["relu", "sigmoid"])}
    parts = ["cross", "hadamard", "item", "dot", "user"]
    upper_in = 4 + EMB_DIM + EMB_DIM + 1 + USER_DIM
    mj["upper"] = {"inputs": parts, "layers": s.layers("upper", [upper_in, 12], ["relu"])}
    mj["heads"] = [
        s.head("click", 12, "sigmoid", rate=0.25, tower=([6], ["relu"])),
        s.head("finish", 12, "sigmoid", tower=([6, 4], ["relu", "identity"]), normalize=NORM_FINISH),
        s.head("watch_time", 12, "exp"),
    ]
    mj["fusion"] = {"kind": "product", "weights": {"click": 1.0, "finish": 0.5, "watch_time": 0.25},
                    "columns": {"price": -0.25, "duration": 0.125}}
    overrides = [
        {"kind": "click_weighted", "base": "click", "weights": {"finish": 0.5, "watch_time": 0.25}},
        {"kind": "offset_product", "terms": {
            "click": {"weight": 4.0, "exponent": 1.0},
            "finish": {"weight": 1.0, "exponent": 0.5},
            "watch_time": {"weight": 0.5, "exponent": 0.25}}},
        {"kind": "rank_per_head", "terms": {
            "click": {"weight": 1.0, "alpha": 0.5, "beta": 1.0},
            "finish": {"weight": 0.5, "alpha": 1.0, "beta": 2.0}}},
    ]
    return "dot_hadamard", mj, s, overrides, ["upper.inputs", "hadamard", "dot"]


def bundle_no_upper():
    s = Spec()
    s.cross_tables({"emb.imp_bucket": "F16"})
    mj = header("no_upper")
    mj["cross"] = {
        "inputs": CROSS_INPUTS,
        "se": {"layers": s.layers("cross.se", [len(CROSS_INPUTS), 3, len(CROSS_INPUTS)],
                                  ["relu", "sigmoid"])},
        "layers": s.layers("cross", [CROSS_IN, 6], ["relu"]),
    }
    mj["upper"] = {"inputs": ["user", "item", "dot", "cross"]}  # no "layers"
    upper_in = USER_DIM + EMB_DIM + 1 + 6
    mj["heads"] = [
        s.head("click", upper_in, "sigmoid", rate=0.1, tower=([8, 4], ["relu", "relu"]),
               tower_dtypes={"0.weight": "BF16"}),
        s.head("like", upper_in, "sigmoid", tower=([6], ["relu"]), dtype="F16"),
        s.head("short", upper_in, "sigmoid"),  # no tower: a linear head on the upper input
        s.head("score_raw", upper_in, "identity", tower=([6], ["sigmoid"]), shift=3.0),
    ]
    mj["fusion"] = {"kind": "click_weighted", "base": "click",
                    "weights": {"like": 0.5, "short": 0.25, "score_raw": 0.125}}
    overrides = [
        {"kind": "weighted_sum", "weights": {"click": 1.0, "like": 0.25, "score_raw": 0.0625}},
        {"kind": "rank", "weights": {"click": 1.0, "like": 0.5, "short": 0.25},
         "alpha": 5.0, "beta": 0.5},
        {"kind": "product", "weights": {"click": 1.0, "like": 1.0}},
    ]
    return "no_upper", mj, s, overrides, ["upper.layers", "upper.inputs", "dot"]


def bundle_mmoe():
    s = Spec()
    s.cross_tables()
    mj = header("mmoe")
    mj["cross"] = {"inputs": CROSS_INPUTS,
                   "layers": s.layers("cross", [CROSS_IN, 8, 5], ["relu", "sigmoid"])}
    x_dim = 16
    experts = [
        {"layers": s.layers("mmoe.e0", [x_dim, 8, 6], ["relu", "relu"])},
        {"layers": s.layers("mmoe.e1", [x_dim, 6], ["sigmoid"], {"0.weight": "F16"})},
        {"layers": s.layers("mmoe.e2", [x_dim, 10, 6], ["relu", "identity"])},
    ]
    heads = ["click", "finish", "watch_time"]
    gates = {}
    for h in heads:
        gates[h] = {"weight": s.tensor("mmoe.gate.%s.weight" % h, [len(experts), x_dim], scale=0.15,
                                       dtype="BF16" if h == "click" else "F32"),
                    "bias": s.tensor("mmoe.gate.%s.bias" % h, [len(experts)])}
    mj["upper"] = {"layers": s.layers("upper", [USER_DIM + EMB_DIM + 5, x_dim], ["relu"]),
                   "mmoe": {"experts": experts, "gates": gates}}
    mj["heads"] = [
        s.head("click", 6, "sigmoid", rate=0.1, tower=([4], ["relu"])),
        s.head("finish", 6, "sigmoid", normalize=NORM_FINISH_D),
        s.head("watch_time", 6, "exp", tower=([4], ["relu"])),
    ]
    mj["fusion"] = {"kind": "rank_per_head", "terms": {
        "click": {"weight": 1.0, "alpha": 1.0, "beta": 4.0},
        "finish": {"weight": 0.5, "alpha": 0.5, "beta": 2.0},
        "watch_time": {"weight": 0.25, "alpha": 1.0, "beta": 8.0}}}
    overrides = [
        {"kind": "offset_product", "terms": {
            "click": {"weight": 2.0, "exponent": 1.5},
            "watch_time": {"weight": 1.0, "exponent": 0.5}}},
        {"kind": "click_weighted", "base": "click", "weights": {"finish": 0.25, "watch_time": 0.5}},
        {"kind": "rank_per_head", "terms": {
            "click": {"weight": 1.0, "alpha": 2.0, "beta": 0.5},
            "watch_time": {"weight": 1.0, "alpha": 1.0, "beta": 10.0}}},
    ]
    return "mmoe", mj, s, overrides, ["mmoe"]


def bundle_mmoe_flat():
    s = Spec()
    s.cross_tables()
    mj = header("mmoe_flat")
    mj["cross"] = {"inputs": CROSS_INPUTS, "layers": s.layers("cross", [CROSS_IN, 6], ["relu"])}
    x_dim = USER_DIM + EMB_DIM + 6  # upper input, unchanged by the empty upper.layers
    experts = [
        {"layers": s.layers("mmoe.e0", [x_dim, 8], ["relu"])},
        {"layers": s.layers("mmoe.e1", [x_dim, 10, 8], ["relu", "relu"])},
        {"layers": s.layers("mmoe.e2", [x_dim, 8], ["sigmoid"])},
    ]
    heads = ["like", "watch_time", "score_raw"]
    gates = {h: {"weight": s.tensor("mmoe.gate.%s.weight" % h, [len(experts), x_dim], scale=0.15),
                 "bias": s.tensor("mmoe.gate.%s.bias" % h, [len(experts)])} for h in heads}
    mj["upper"] = {"layers": [], "mmoe": {"experts": experts, "gates": gates}}
    mj["heads"] = [
        s.head("like", 8, "sigmoid", rate=0.5),
        s.head("watch_time", 8, "exp"),
        s.head("score_raw", 8, "identity", tower=([4], ["relu"]), shift=3.0),
    ]
    mj["fusion"] = {"kind": "offset_product", "terms": {
        "like": {"weight": 2.0, "exponent": 1.0},
        "watch_time": {"weight": 0.5, "exponent": 0.5}}}
    # the item tower that made prerank@v1 (profile columns only); its last
    # layer has item_dim outputs
    s.tensor("item_tower.emb.duration", [len(DUR_BOUNDS) + 1, 2], scale=0.5)
    s.tensor("item_tower.emb.category", [CAT_VALUES, 3], scale=0.5)
    s.tensor("item_tower.emb.region", [REGION_VALUES, 2], scale=0.5)
    mj["item_tower"] = {
        "inputs": [
            {"kind": "item_numeric", "column": "price", "transform": "identity"},
            {"kind": "item_numeric", "column": "duration", "transform": {"bucketize": DUR_BOUNDS},
             "embedding": "item_tower.emb.duration"},
            {"kind": "item_categorical", "column": "category", "embedding": "item_tower.emb.category"},
            {"kind": "item_categorical", "column": "region", "embedding": "item_tower.emb.region"},
        ],
        "layers": s.layers("item_tower", [1 + 2 + 3 + 2, 8, EMB_DIM], ["relu", "identity"]),
    }
    overrides = [
        {"kind": "rank", "weights": {"like": 1.0, "watch_time": 0.5, "score_raw": 0.25},
         "alpha": 2.0, "beta": 1.5},
        {"kind": "weighted_sum", "weights": {"like": 1.0, "watch_time": 0.25, "score_raw": 0.5}},
        {"kind": "product", "weights": {"like": 1.0, "watch_time": 0.5},
         "columns": {"duration": 0.25}},
    ]
    return "mmoe_flat", mj, s, overrides, ["upper.layers", "mmoe"]


BUNDLES = [bundle_default, bundle_dot_hadamard, bundle_no_upper, bundle_mmoe, bundle_mmoe_flat]


# --------------------------------------------------------------------------
# data generation


def make_items(rng):
    ids = draw_ids(rng, N_ITEMS, 2000)



    category = with_nulls(rng, rng.integers(0, CAT_VALUES, N_ITEMS).tolist(), 0.1)
    region = with_nulls(rng, rng.integers(0, REGION_VALUES, N_ITEMS).tolist(), 0.1)
    price = with_nulls(rng, f32(rng.uniform(0.5, 10.0, N_ITEMS)).tolist(), 0.1)
    dur = on_bounds(rng, f32(np.exp(rng.uniform(np.log(5.0), np.log(1200.0), N_ITEMS))),
                    DUR_BOUNDS + [60, 600])
    duration = with_nulls(rng, dur.tolist(), 0.12)
    ctr = f32(rng.uniform(0.0, 0.3, N_ITEMS))
    ctr[rng.integers(0, N_ITEMS, 3)] = 0.0
    ctr = with_nulls(rng, ctr.tolist(), 0.1)
    imp = on_bounds(rng, f32(np.exp(rng.uniform(0.0, np.log(5001.0), N_ITEMS)) - 1.0), IMP_BOUNDS)
    imp[rng.integers(0, N_ITEMS, 2)] = 0.0
    imp = with_nulls(rng, imp.tolist(), 0.1)
    emb = f32(rng.normal(0.0, 1.0, (N_ITEMS, EMB_DIM)))
    return {
        "ids": [int(i) for i in ids],
        "category": category,
        "region": region,
        "price": price,
        "duration": duration,
        "ctr_1d": ctr,
        "impressions_7d": imp,
        "embedding": emb,
    }


ROUND = {"F32": f32, "F16": f16, "BF16": bf16}


def make_weights(rng, spec):
    w = {}
    for name, shape, scale, shift in spec.tensors:
        x = rng.normal(0.0, scale, shape) + shift
        dt = spec.dtypes.get(name, "F32")
        if dt != "F32":
            # keep clear of float16 subnormals (|x| < 2^-14): normal values only
            x = np.where(np.abs(x) < 2.0**-10, np.copysign(2.0**-10, x), x)
        w[name] = ROUND[dt](x)
    return w


# --------------------------------------------------------------------------
# reference model, read from model.json as the contract says.
# dt float64 is the reference; dt float32 is the robustness probe. Both use
# only elementwise numpy arithmetic (correctly rounded in either dtype) and
# libm in float64 rounded to dt for exp / log1p / pow, never BLAS or numpy's
# SIMD transcendentals: the output does not depend on the CPU.


def vmap(fn, x, dt):
    """fn (a libm function, in float64) elementwise, rounded to dt."""
    x = np.asarray(x, dtype=np.float64)
    y = np.array([fn(float(v)) for v in x.ravel()], dtype=np.float64).reshape(x.shape)
    return y.astype(dt)


def exp_(x, dt):
    return vmap(math.exp, x, dt)


def log1p_(x, dt):
    return vmap(math.log1p, x, dt)


def pow_(x, a, dt):
    return vmap(lambda v: math.pow(v, float(a)), x, dt)


def rowsum(x, dt):
    """Sum over axis 1, left to right, in dt."""
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
        return dt(1) / (dt(1) + exp_(-x, dt))
    if kind == "identity":
        return x
    if kind == "exp":
        return exp_(x, dt)
    raise ValueError(kind)


def bucket(v, bounds, dt):
    """Number of boundaries <= v (v after the default for missing values)."""
    idx = np.zeros(len(v), dtype=np.int64)
    for b in bounds:
        idx += (dt(b) <= v).astype(np.int64)
    return idx


def forward(mj, w, feat, rows, query, dt):
    """Returns (logits [n, H], head values after calibration and normalize
    [n, H], head-layer inputs per head)."""
    def c(a):
        return np.asarray(a, dtype=np.float64).astype(dt)

    def chain(layers, x):
        for layer in layers:
            b = c(w[layer["bias"]]) if "bias" in layer else None
            x = act(linear(x, c(w[layer["weight"]]), b, dt), layer["activation"], dt)
        return x

    n = len(rows)
    # cross tower inputs, one vector per input
    xs = []
    for inp in mj["cross"]["inputs"]:
        kind = inp["kind"]
        if kind == "item_numeric":
            v = c(feat[inp["column"]][rows])
            tr = inp.get("transform", "identity")
            if tr == "log1p":
                xs.append(log1p_(v, dt)[:, None])
            elif tr == "identity":
                xs.append(v[:, None])
            else:
                xs.append(c(w[inp["embedding"]])[bucket(v, tr["bucketize"], dt)])
        elif kind == "item_categorical":
            table = c(w[inp["embedding"]])
            v = feat[inp["column"]][rows]
            xs.append(table[np.where(v < table.shape[0], v, 0)])
        elif kind == "user_dense":
            xs.append(np.tile(c(query["user_dense"][inp["name"]]), (n, 1)))
        elif kind == "user_by_item":
            m = query["user_by_item"][inp["name"]]
            xs.append(c([m.get(str(int(v)), inp["default"]) for v in feat[inp["column"]][rows]]))
        else:
            raise ValueError(kind)
    assert [x.shape[1] for x in xs] == CROSS_WIDTHS
    se = mj["cross"].get("se")
    if se is not None:
        z = np.stack([rowsum(x, dt) / dt(x.shape[1]) for x in xs], axis=1)  # z_f = mean(x_f)
        s = chain(se["layers"], z)
        assert s.shape[1] == len(xs)
        xs = [x * s[:, f:f + 1] for f, x in enumerate(xs)]
    cross = chain(mj["cross"]["layers"], np.concatenate(xs, axis=1))
    # upper network
    u = np.tile(c(query["user"]), (n, 1))
    it = c(feat["embedding"][rows])
    part = {
        "user": lambda: u,
        "item": lambda: it,
        "cross": lambda: cross,
        "dot": lambda: rowsum(u * it, dt)[:, None],
        "hadamard": lambda: u * it,
    }
    upper = mj.get("upper", {})
    h = np.concatenate([part[p]() for p in upper.get("inputs", ["user", "item", "cross"])], axis=1)
    h = chain(upper.get("layers", []), h)
    mmoe = upper.get("mmoe")
    if mmoe is not None:
        outs = [chain(e["layers"], h) for e in mmoe["experts"]]
    logits, vals, hin = [], [], []
    for head in mj["heads"]:
        x = h
        if mmoe is not None:
            g = mmoe["gates"][head["name"]]
            a = linear(h, c(w[g["weight"]]), c(w[g["bias"]]), dt)
            a = exp_(a - a.max(axis=1, keepdims=True), dt)
            g = a / rowsum(a, dt)[:, None]  # softmax over the experts
            x = g[:, 0:1] * outs[0]
            for e in range(1, len(outs)):
                x = x + g[:, e:e + 1] * outs[e]
        if "tower" in head:
            x = chain(head["tower"]["layers"], x)
        hin.append(x)
        b = c(w[head["bias"]]) if "bias" in head else None
        z = linear(x, c(w[head["weight"]]), b, dt)[:, 0]
        v = act(z, head["activation"], dt)
        if "neg_sampling_rate" in head:
            r = c(head["neg_sampling_rate"])
            v = r * v / ((dt(1) - v) + r * v)
        nm = head.get("normalize")
        if nm is not None:
            v = v / c(nm["values"])[bucket(c(feat[nm["column"]][rows]), nm["bucketize"], dt)]
        logits.append(z)
        vals.append(v)
    return np.stack(logits, axis=1), np.stack(vals, axis=1), hin


def ranks(ids, v):
    """1-based rank of each value, descending; equal values by ascending id."""
    order = np.lexsort((ids, -v.astype(np.float64)))
    r = np.empty(len(ids), dtype=np.int64)
    r[order] = np.arange(1, len(ids) + 1)
    return r


def rank_terms(fusion, head_names):
    """(head column, term(rank)) for a rank or rank_per_head fusion."""
    if fusion["kind"] == "rank":
        al, be = float(fusion["alpha"]), float(fusion["beta"])
        return [(head_names.index(h), (lambda wh: lambda r: wh / math.pow(r + al, be))(float(wh)))
                for h, wh in fusion["weights"].items()]
    return [(head_names.index(h), (lambda t: lambda r: float(t["weight"]) /
                                   (math.pow(r, float(t["alpha"])) + float(t["beta"])))(t))
            for h, t in fusion["terms"].items()]


def fuse(fusion, head_names, feat, rows, ids, vals, dt):
    def c(a):
        return np.asarray(a, dtype=np.float64).astype(dt)

    def p(h):
        return vals[:, head_names.index(h)]

    n = len(ids)
    kind = fusion["kind"]
    if kind == "weighted_sum":
        s = np.zeros(n, dtype=dt)
        for h, wh in fusion["weights"].items():
            s = s + dt(wh) * p(h)
        return s
    if kind == "product":
        s = np.ones(n, dtype=dt)
        for h, wh in fusion["weights"].items():
            s = s * pow_(p(h), wh, dt)
        for col, a in fusion.get("columns", {}).items():
            s = s * pow_(c(feat[col][rows]), a, dt)
        return s
    if kind == "click_weighted":
        s = np.zeros(n, dtype=dt)
        for h, wh in fusion["weights"].items():
            s = s + dt(wh) * p(h)
        return p(fusion["base"]) * (dt(1) + s)
    if kind == "offset_product":
        s = np.ones(n, dtype=dt)
        for h, t in fusion["terms"].items():
            s = s * pow_(dt(1) + dt(t["weight"]) * p(h), t["exponent"], dt)
        return s
    if kind == "rank":
        al, be = dt(fusion["alpha"]), dt(fusion["beta"])
        s = np.zeros(n, dtype=dt)
        for h, wh in fusion["weights"].items():
            s = s + dt(wh) / pow_(ranks(ids, p(h)).astype(dt) + al, be, dt)
        return s
    if kind == "rank_per_head":
        s = np.zeros(n, dtype=dt)
        for h, t in fusion["terms"].items():
            s = s + dt(t["weight"]) / (pow_(ranks(ids, p(h)).astype(dt), t["alpha"], dt) + dt(t["beta"]))
        return s
    raise ValueError(kind)


def evaluate(mj, fusion, feat, id_to_row, w, query):
    """Compute the expected result; return (expected, ok)."""
    head_names = [h["name"] for h in mj["heads"]]
    found, not_found = resolve(query["candidates"], id_to_row)
    ids = np.array(found, dtype=np.int64)
    rows = np.array([id_to_row[i] for i in found], dtype=np.int64)
    logits, vals, hin = forward(mj, w, feat, rows, query, np.float64)
    score = fuse(fusion, head_names, feat, rows, ids, vals, np.float64)
    assert np.all(np.isfinite(score)) and np.all(np.isfinite(vals))
    order = np.lexsort((ids, -score))
    k = query["k"]
    top = order[:k]
    ok = scores_separated(score, order, k)
    if fusion["kind"] in ("rank", "rank_per_head"):
        if not rank_clusters_ok(ids, vals, logits, score, top, rank_terms(fusion, head_names)):
            ok = False
    # float32 probe: returned scores / heads agree to 1e-6 relative, same order
    _, vals32, _ = forward(mj, w, feat, rows, query, np.float32)
    score32 = fuse(fusion, head_names, feat, rows, ids, vals32, np.float32).astype(np.float64)
    order32 = np.lexsort((ids, -score32))
    if not np.array_equal(order32[:k], top):
        ok = False
    for i in top:
        if not relgap(score[i], score32[i]) < 1e-6:
            ok = False
        for j in range(len(head_names)):
            if not relgap(vals[i, j], float(vals32[i, j])) < 1e-6:
                ok = False
    # identity heads are well conditioned on returned rows (no cancellation to ~0)
    for j, head in enumerate(mj["heads"]):
        if head["activation"] != "identity":
            continue
        wv, bv = w[head["weight"]][0], w[head["bias"]][0]
        for i in top:
            if not abs(logits[i, j]) * 10.0 > np.sum(np.abs(hin[j][i] * wv)) + abs(bv):
                ok = False
    expected = {
        "ids": [int(ids[i]) for i in top],
        "scores": [float(score[i]) for i in top],
        "heads": [[float(x) for x in vals[i]] for i in top],
        "not_found": not_found,
    }
    return expected, ok


def draw_query(rng, items, id_set, spec):
    return refcommon.draw_query(rng, items, id_set, spec, USER_DIM, USER_STATS_DIM, CAT_VALUES,
                                UCC_DIM)


def item_features(items):
    """Per-item values with defaults applied (float64, f32-exact; ints for categoricals)."""
    feat = {col: np.array([DEFAULTS[col] if v is None else v for v in items[col]], dtype=np.float64)
            for col in NUMERIC}
    for col in ("category", "region"):
        feat[col] = np.array([DEFAULTS[col] if v is None else v for v in items[col]], dtype=np.int64)
    feat["embedding"] = items["embedding"]
    return feat


def main():
    rng = np.random.default_rng(SEED)
    items = make_items(rng)
    feat = item_features(items)
    id_to_row = {i: r for r, i in enumerate(items["ids"])}
    id_set = set(items["ids"])

    os.makedirs(OUT, exist_ok=True)
    cases, redraws = [], {}
    specs = ["full", "k_over", "k1", "any", "any", "any", "full", "any"]
    for make in BUNDLES:
        name, mj, spec, overrides, may_refuse = make()
        bundle = make.__name__
        weights = make_weights(rng, spec)
        d = os.path.join(OUT, bundle)
        os.makedirs(d, exist_ok=True)
        write_text(os.path.join(d, "model.json"), dumps(mj))
        write_safetensors(os.path.join(d, "weights.safetensors"), weights, GENERATOR, spec.dtypes)
        queries = []
        redraws[bundle] = 0
        for qi, qspec in enumerate(specs):
            override = overrides[qi - 5] if qi >= 5 else None
            fusion = override or mj["fusion"]
            for attempt in range(10000):
                q = draw_query(rng, items, id_set, qspec)
                expected, ok = evaluate(mj, fusion, feat, id_to_row, weights, q)
                if ok:
                    break
                redraws[bundle] += 1
            else:
                raise RuntimeError("could not draw a robust query for %s/%d" % (bundle, qi))
            if qspec == "k_over":
                assert q["k"] > len(expected["ids"])
            if override is not None:
                q["fusion"] = override
            q["expected"] = expected
            queries.append(q)
        cases.append({
            "bundle": bundle,
            "name": name,
            "heads": [h["name"] for h in mj["heads"]],
            "precompute_refusal_may_name": may_refuse,
            "queries": queries,
        })

    case = {
        "schema": {
            "categorical": [{"name": "category", "default": DEFAULTS["category"]},
                            {"name": "region", "default": DEFAULTS["region"]}],
            "numeric": [{"name": "price", "default": DEFAULTS["price"]},
                        {"name": "duration", "default": DEFAULTS["duration"]}],
            "stats": [{"name": "ctr_1d", "default": DEFAULTS["ctr_1d"]},
                      {"name": "impressions_7d", "default": DEFAULTS["impressions_7d"]}],
            "embedding": {"space": "prerank", "version": "v1", "dim": EMB_DIM},
        },
        "items": {
            "ids": items["ids"],
            "categorical": {"category": items["category"], "region": items["region"]},
            "numeric": {"price": items["price"], "duration": items["duration"]},
            "stats": {"ctr_1d": items["ctr_1d"], "impressions_7d": items["impressions_7d"]},
            "embedding": items["embedding"].tolist(),
        },
        "cases": cases,
    }
    write_text(os.path.join(OUT, "case.json"), dumps(case))
    print("wrote", OUT, "redraws:", redraws)


if __name__ == "__main__":
    main()
