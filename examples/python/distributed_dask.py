"""A store built by a Dask cluster: each partition of a dask DataFrame (an
item-tower output, one vector per row) is staged by a worker, one commit
publishes them all.

    bash python/test.sh          # builds the package (and installs dask) into target/py-venv
    target/py-venv/bin/python examples/python/distributed_dask.py [store_dir]
"""

import sys
import tempfile

import numpy as np
import pandas as pd

import vstore
from vstore import distributed as vd

DIM = 16
N = 40_000
PARTS = 8


def items(n=N, dim=DIM, seed=0):
    """A pandas DataFrame as an item-tower job writes it: id, profile,
    statistics and one float16 vector per row."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(1, n + 1, dtype=np.uint64) * 7,
        "category": rng.integers(0, 50, n).astype(np.uint32),
        "ctr_7d": rng.uniform(0, 0.2, n).astype(np.float32),
        "vec": list(rng.standard_normal((n, dim)).astype(np.float16)),
    })


def schema():
    return (vstore.Schema().embedding("prerank", "v42", DIM, "f16")
            .categorical("category").stat("ctr_7d", 0.0))


def main(path):
    import dask
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    with dask.config.set({"dataframe.convert-string": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        ddf = dd.from_pandas(items(), npartitions=PARTS)
        n = vd.build_dask(path, "example-dask", ddf, schema=schema(), client=client,
                          embeddings={"prerank@v42": "vec"})
    snap = vstore.open(path).snapshot()
    print(f"published snapshot {n} with {len(snap)} items in {snap.inspect()['segments']} segments")
    return n


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/store")
