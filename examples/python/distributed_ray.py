"""A store built by Ray tasks: each partition (a pandas DataFrame here; a
`ray.data.Dataset` works too) is staged by a task, one commit publishes them.

    target/py-venv/bin/pip install 'ray[data]'
    target/py-venv/bin/python examples/python/distributed_ray.py [store_dir]
"""

import sys
import tempfile

import numpy as np

import vstore
from vstore import distributed as vd

from distributed_dask import PARTS, items, schema  # the same data


def main(path):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        frame = items()
        parts = [frame.iloc[i::PARTS] for i in range(PARTS)]
        n = vd.build_ray(path, "example-ray", parts, schema=schema(),
                         embeddings={"prerank@v42": "vec"})
    finally:
        ray.shutdown()
    snap = vstore.open(path).snapshot()
    print(f"published snapshot {n} with {len(snap)} items in {snap.inspect()['segments']} segments")
    return n


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/store")
