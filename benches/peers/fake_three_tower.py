#!/usr/bin/env python3
"""Write a random three-tower bundle and data in the three_tower_bench
contract, for testing three_tower.py without the Rust example.

    python fake_three_tower.py OUT_DIR [--ns 1000,5000,10000] [--k 500]
                                       [--fusion weighted_sum|product] [--seed 0]

Files written into OUT_DIR/three_tower/ (the same contract
`cargo run --example three_tower_bench` follows; see README.md):

    bundle/model.json           the docs/DESIGN.md example model (format vstore.three_tower.v1)
    bundle/weights.safetensors  float32 tensors, PyTorch nn.Linear layout W [out, in]
    tt_meta.json                {"ns", "k", "user_dim", "item_dim", "cross_in_dim"}
    tt_x_{n}.npy                float32 [n, user_dim + item_dim + C]: concat(user vector
                                (same on every row), item vector, cross-tower inputs)
    tt_expected_{n}.npy         float32 [n] fused scores, computed here in float64
    tt_vstore.json              {"<n>": {"median_ms", "gflops", "variants": {name: ms}}}

Model sizes (docs/DESIGN.md's example): cross inputs C = 21 (ctr_1d log1p: 1,
impressions_7d bucketized -> 4-wide embedding, category -> 7-wide embedding,
user_stats: 8, user_category_ctr: 1), cross 21 -> 64 -> 32 (relu),
upper 160 -> 256 -> 128 (relu), heads click (sigmoid, neg_sampling_rate 0.1),
like (sigmoid), watch_time (exp), fusion weighted_sum.

The cross inputs are made the way vstore makes them (transform the columns,
look up embedding rows), from random columns. The tt_vstore.json timings
are made up: they only exercise the table code.
"""
import argparse
import json
import os
import struct

import numpy as np

USER_DIM, ITEM_DIM = 64, 64
BOUNDS = [10.0, 100.0, 1000.0]   # impressions_7d bucket boundaries -> 4 buckets
IMP_EMB, CAT_VOCAB, CAT_EMB = 4, 50, 7
USER_STATS = 8
CROSS_HIDDEN = [64, 32]
UPPER_HIDDEN = [256, 128]


def model_json(fusion):
    heads = [
        {"name": "click", "weight": "heads.click.weight", "bias": "heads.click.bias",
         "activation": "sigmoid", "neg_sampling_rate": 0.1},
        {"name": "like", "weight": "heads.like.weight", "bias": "heads.like.bias",
         "activation": "sigmoid"},
        {"name": "watch_time", "weight": "heads.wt.weight", "bias": "heads.wt.bias",
         "activation": "exp"},
    ]
    if fusion == "weighted_sum":
        fus = {"kind": "weighted_sum", "weights": {"click": 1.0, "like": 0.5, "watch_time": 0.01}}
    elif fusion == "product":
        fus = {"kind": "product", "weights": {"click": 1.0, "like": 0.5, "watch_time": 0.2}}
    else:
        raise SystemExit(f"fake_three_tower.py: --fusion {fusion!r}: want weighted_sum or product")
    return {
        "format": "vstore.three_tower.v1",
        "space": "prerank", "version": "v42",
        "user_dim": USER_DIM, "item_dim": ITEM_DIM,
        "cross": {
            "inputs": [
                {"kind": "item_numeric", "column": "ctr_1d", "transform": "log1p"},
                {"kind": "item_numeric", "column": "impressions_7d",
                 "transform": {"bucketize": BOUNDS}, "embedding": "emb.imp_bucket"},
                {"kind": "item_categorical", "column": "category", "embedding": "emb.category"},
                {"kind": "user_dense", "name": "user_stats", "dim": USER_STATS},
                {"kind": "user_by_item", "name": "user_category_ctr", "column": "category",
                 "dim": 1, "default": [0.0]},
            ],
            "layers": [
                {"weight": "cross.0.weight", "bias": "cross.0.bias", "activation": "relu"},
                {"weight": "cross.2.weight", "bias": "cross.2.bias", "activation": "relu"},
            ],
        },
        "upper": {
            "layers": [
                {"weight": "upper.0.weight", "bias": "upper.0.bias", "activation": "relu"},
                {"weight": "upper.2.weight", "bias": "upper.2.bias", "activation": "relu"},
            ],
        },
        "heads": heads,
        "fusion": fus,
    }


def linear(rng, out_dim, in_dim):
    """PyTorch nn.Linear default init: U(-1/sqrt(in), 1/sqrt(in)), W [out, in]."""
    s = 1.0 / np.sqrt(in_dim)
    return (rng.uniform(-s, s, (out_dim, in_dim)).astype(np.float32),
            rng.uniform(-s, s, (out_dim,)).astype(np.float32))


def make_weights(rng, cross_in):
    t = {
        "emb.imp_bucket": rng.normal(0, 0.5, (len(BOUNDS) + 1, IMP_EMB)).astype(np.float32),
        "emb.category": rng.normal(0, 0.5, (CAT_VOCAB, CAT_EMB)).astype(np.float32),
    }
    dims = [cross_in] + CROSS_HIDDEN
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        t[f"cross.{2 * i}.weight"], t[f"cross.{2 * i}.bias"] = linear(rng, b, a)
    dims = [USER_DIM + ITEM_DIM + CROSS_HIDDEN[-1]] + UPPER_HIDDEN
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        t[f"upper.{2 * i}.weight"], t[f"upper.{2 * i}.bias"] = linear(rng, b, a)
    for key in ("click", "like", "wt"):
        t[f"heads.{key}.weight"], t[f"heads.{key}.bias"] = linear(rng, 1, UPPER_HIDDEN[-1])
    return t


def write_safetensors(path, tensors):
    """The safetensors layout: u64 LE header length, JSON header (padded with
    spaces to a multiple of 8), then the raw little-endian tensor bytes."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(h)))
        fh.write(h)
        for b in blobs:
            fh.write(b)


def cross_inputs(rng, n, t, user_stats, user_cat_ctr):
    """Random item columns -> transformed cross-tower inputs [n, C], in the
    order of model.json's cross.inputs."""
    ctr = rng.uniform(0.0, 0.2, n)
    imp = np.exp(rng.uniform(0.0, np.log(1e5), n))
    cat = rng.integers(0, CAT_VOCAB, n)
    bucket = np.searchsorted(np.array(BOUNDS), imp, side="right")  # number of boundaries <= x
    ubi = np.array([user_cat_ctr.get(int(c), [0.0]) for c in cat], dtype=np.float64)
    return np.concatenate([
        np.log1p(ctr)[:, None],
        t["emb.imp_bucket"][bucket].astype(np.float64),
        t["emb.category"][cat].astype(np.float64),
        np.broadcast_to(user_stats, (n, USER_STATS)),
        ubi,
    ], axis=1)


ACT = {
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "exp": np.exp,
    "identity": lambda x: x,
}


def reference_scores(model, t, X):
    """The model in float64, written independently of three_tower.py."""
    w = {k: v.astype(np.float64) for k, v in t.items()}
    X = X.astype(np.float64)
    ud, idim = model["user_dim"], model["item_dim"]
    h = X[:, ud + idim:]
    for L in model["cross"]["layers"]:
        h = ACT[L["activation"]](h @ w[L["weight"]].T + w[L["bias"]])
    h = np.concatenate([X[:, :ud + idim], h], axis=1)
    for L in model["upper"]["layers"]:
        h = ACT[L["activation"]](h @ w[L["weight"]].T + w[L["bias"]])
    ps = {}
    for hd in model["heads"]:
        q = ACT[hd["activation"]]((h @ w[hd["weight"]].T + w[hd["bias"]])[:, 0])
        a = hd.get("neg_sampling_rate")
        ps[hd["name"]] = q if a is None else a * q / ((1.0 - q) + a * q)
    f = model["fusion"]
    if f["kind"] == "weighted_sum":
        return sum(wt * ps[name] for name, wt in f["weights"].items())
    return np.prod([ps[name] ** wt for name, wt in f["weights"].items()], axis=0)


def layer_flops_per_row(model, t):
    names = [L["weight"] for L in model["cross"]["layers"] + model["upper"]["layers"]]
    names += [h["weight"] for h in model["heads"]]
    return 2 * sum(int(np.prod(t[nm].shape)) for nm in names)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--ns", default="1000,5000,10000", help="comma-separated candidate counts")
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--fusion", default="weighted_sum", help="weighted_sum or product")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    ns = [int(x) for x in a.ns.split(",")]
    if a.k > min(ns):
        raise SystemExit(f"fake_three_tower.py: k={a.k} > smallest n={min(ns)}")

    rng = np.random.default_rng(a.seed)
    d = os.path.join(a.out, "three_tower")
    os.makedirs(os.path.join(d, "bundle"), exist_ok=True)

    model = model_json(a.fusion)
    cross_in = 1 + IMP_EMB + CAT_EMB + USER_STATS + 1
    t = make_weights(rng, cross_in)
    with open(os.path.join(d, "bundle", "model.json"), "w") as fh:
        json.dump(model, fh, indent=2)
    write_safetensors(os.path.join(d, "bundle", "weights.safetensors"), t)

    # One query's user side: user vector, user_stats, user_category_ctr map
    # (about half the categories present).
    user = rng.normal(0, 1, USER_DIM)
    user_stats = rng.normal(0, 1, USER_STATS)
    user_cat_ctr = {int(c): [float(rng.uniform(0, 0.3))]
                    for c in rng.choice(CAT_VOCAB, CAT_VOCAB // 2, replace=False)}

    fpr = layer_flops_per_row(model, t)
    vstore = {}
    for n in ns:
        items = rng.normal(0, 1, (n, ITEM_DIM))
        X = np.concatenate([np.broadcast_to(user, (n, USER_DIM)), items,
                            cross_inputs(rng, n, t, user_stats, user_cat_ctr)], axis=1)
        X32 = X.astype(np.float32)
        np.save(os.path.join(d, f"tt_x_{n}.npy"), X32)
        # Expected scores from the float32 inputs (what vstore would see).
        np.save(os.path.join(d, f"tt_expected_{n}.npy"),
                reference_scores(model, t, X32).astype(np.float32))
        # Made-up vstore timings: 30 GFLOP/s end to end, variants slower.
        ms = fpr * n / 30e9 * 1e3
        vstore[str(n)] = {"median_ms": ms, "gflops": fpr * n / (ms * 1e-3) / 1e9,
                          "variants": {"fake_no_item_precompute": ms * 1.3,
                                       "fake_scalar_kernel": ms * 4.0}}
    with open(os.path.join(d, "tt_meta.json"), "w") as fh:
        json.dump({"ns": ns, "k": a.k, "user_dim": USER_DIM, "item_dim": ITEM_DIM,
                   "cross_in_dim": cross_in}, fh, indent=2)
    with open(os.path.join(d, "tt_vstore.json"), "w") as fh:
        json.dump(vstore, fh, indent=2)
    print(f"wrote {d}: C={cross_in}, {fpr} FLOP/row, ns={ns}, k={a.k}, fusion={a.fusion}")


if __name__ == "__main__":
    main()
