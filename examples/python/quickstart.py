"""vstore from Python, end to end: build a store from numpy and pandas,
query it (two-tower, three-tower, batch), and turn a model's weights into a
bundle with vstore.bundle.

    bash python/test.sh                      # builds the package into target/py-venv
    target/py-venv/bin/python examples/python/quickstart.py [store_dir]
"""

import sys
import tempfile

import numpy as np
import pandas as pd

import vstore
from vstore import bundle

DIM = 16
N = 20_000


def main(path):
    rng = np.random.default_rng(0)
    ids = np.arange(1, N + 1, dtype=np.uint64) * 101
    vectors = rng.standard_normal((N, DIM)).astype(np.float16)  # kept float16
    profile = pd.DataFrame(
        {
            "category": rng.integers(0, 50, N),
            "price": np.where(rng.random(N) < 0.1, np.nan, rng.uniform(1, 100, N)),  # NaN: missing
        }
    )
    stats = pd.DataFrame({"ctr_1d": rng.beta(1, 30, N)})

    schema = (
        vstore.Schema()
        .categorical("category")
        .numeric("price", 10.0)
        .stat("ctr_1d", 0.01)
        .embedding("prerank", "v1", DIM, "f16")
    )
    writer = vstore.create(path, schema)
    with writer.begin() as tx:
        tx.add_items(ids, embeddings={"prerank@v1": vectors}, profile=profile, stats=stats)

    snap = vstore.open(path).snapshot()
    print(f"snapshot {snap.number}: {len(snap)} items")

    # Two-tower: the user tower's output against candidate items.
    user = rng.standard_normal(DIM).astype(np.float32)
    candidates = rng.choice(ids, 2000, replace=False)
    r = snap.query("prerank@v1", user, candidates, 10, filter=vstore.Filter.is_in("category", range(10)))
    print("two-tower top 3:", r.ids[:3], r.scores[:3], f"({r.filtered_out} filtered out)")

    # A three-tower bundle from a state dict (random weights here; a
    # PyTorch module's model.state_dict() works the same).
    state = {
        "cross.0.weight": rng.standard_normal((8, 3)).astype(np.float32) * 0.3,
        "cross.0.bias": np.zeros(8, np.float32),
        "upper.0.weight": rng.standard_normal((16, DIM + DIM + 8)).astype(np.float32) * 0.2,
        "upper.0.bias": np.zeros(16, np.float32),
        "click.weight": rng.standard_normal((1, 16)).astype(np.float32) * 0.2,
        "click.bias": np.zeros(1, np.float32),
    }
    description = {
        "format": "vstore.three_tower.v1", "space": "prerank", "version": "v1",
        "user_dim": DIM, "item_dim": DIM,
        "cross": {
            "inputs": [
                {"kind": "item_numeric", "column": "ctr_1d", "transform": "log1p"},
                {"kind": "item_numeric", "column": "price"},
                {"kind": "user_dense", "name": "activity", "dim": 1},
            ],
            "layers": [{"weight": "cross.0.weight", "bias": "cross.0.bias", "activation": "relu"}],
        },
        "upper": {"layers": [{"weight": "upper.0.weight", "bias": "upper.0.bias", "activation": "relu"}]},
        "heads": [{"name": "click", "weight": "click.weight", "bias": "click.bias", "activation": "sigmoid"}],
        "fusion": {"kind": "weighted_sum", "weights": {"click": 1.0}},
    }
    json_bytes, weights = bundle.build(description, state, schema=snap)
    with writer.begin() as tx:
        tx.add_model(json_bytes, weights, precision="bf16")
    snap = vstore.open(path).snapshot()
    inputs = {"activity": np.array([0.7], np.float32)}
    r = snap.query("prerank@v1", user, candidates, 10, three_tower=inputs, heads=True)
    print("three-tower top 3:", r.ids[:3], r.heads[:3, 0], r.head_names)

    # Many users in one call, on two threads, the GIL released.
    users = rng.standard_normal((32, DIM)).astype(np.float32)
    results = snap.query_batch(
        "prerank@v1", users, [candidates] * 32, 10, workers=2, three_tower=inputs
    )
    print("batch:", len(results), "results; first user's best:", results[0].ids[0])

    try:
        snap.query("prerank@v2", user, candidates, 10)
    except vstore.VersionSkewError as e:
        print("version skew refused:", e)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/store")
