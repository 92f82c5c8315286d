"""numpy running the example item tower on the inputs `cargo bench --bench
item_tower` writes (target/vstore-bench/item_tower/peer/): what a user
would otherwise run to embed fresh items before adding them with vectors.

One thread (BLAS threads pinned to 1, as the store computes on the writer's
thread). Prints the median time for the batch, per item, and GFLOP/s, and
checks the result is finite.

Run (after the Rust bench):
  target/peers-venv/bin/python benches/peers/item_tower.py [DIR] [ITERS]
"""

import json
import os
import struct
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[base + a : base + b], dtype="<f4").reshape(t["shape"])
    return out


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "target/vstore-bench/item_tower/peer")
    iters = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    spec = json.load(open(os.path.join(d, "model.json")))["item_tower"]
    w = load_safetensors(os.path.join(d, "weights.safetensors"))
    cat = np.load(os.path.join(d, "category.npy")).astype(np.int64)
    brand = np.load(os.path.join(d, "brand.npy")).astype(np.int64)
    price = np.load(os.path.join(d, "price.npy")).astype(np.float32)
    bounds = np.array(spec["inputs"][3]["transform"]["bucketize"], dtype=np.float32)
    layers = [(w[l["weight"]].T.copy(), w[l["bias"]], l["activation"]) for l in spec["layers"]]
    tc, tb, tp = w["tower.category"], w["tower.brand"], w["tower.price_bucket"]

    def tower():
        c = np.where(cat < tc.shape[0], cat, 0)
        b = np.where(brand < tb.shape[0], brand, 0)
        x = np.concatenate(
            [
                tc[c],
                tb[b],
                np.log1p(price)[:, None],
                tp[np.searchsorted(bounds, price, side="right")],
            ],
            axis=1,
        )
        for wt, bias, act in layers:
            x = x @ wt + bias
            if act == "relu":
                np.maximum(x, 0, out=x)
        return x

    y = tower()
    assert np.isfinite(y).all() and y.shape == (len(cat), 64)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        tower()
        times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    n = len(cat)
    flop = 2 * sum(wt.shape[0] * wt.shape[1] for wt, _, _ in layers)
    print(
        f"numpy {np.__version__}, 1 thread: item tower on {n} items {med * 1e3:.1f} ms "
        f"({med / n * 1e6:.2f} µs/item, {flop * n / med / 1e9:.1f} GFLOP/s, {flop} FLOP/item)"
    )


if __name__ == "__main__":
    main()
