"""A store built by Spark executors: each partition of a PySpark DataFrame
(vectors as array<float>) is staged by `mapPartitionsWithIndex`, one commit
on the driver publishes them. Spark local mode, on Java 17.

    target/py-venv/bin/pip install pyspark
    target/py-venv/bin/python examples/python/distributed_spark.py [store_dir]
"""

import os
import sys
import tempfile

import numpy as np

import vstore
from vstore import distributed as vd

from distributed_dask import PARTS, items, schema  # the same data


def main(path):
    from pyspark.sql import SparkSession

    # Spark's Python workers run this interpreter (the one vstore is in).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master("local[2]").appName("vstore-example")
             .config("spark.ui.enabled", "false").getOrCreate())
    try:
        frame = items()
        frame["id"] = frame["id"].astype(np.int64)  # Spark has no unsigned longs
        frame["vec"] = [v.astype(np.float32).tolist() for v in frame["vec"]]
        df = spark.createDataFrame(frame).repartition(PARTS)
        n = vd.build_spark(path, "example-spark", df, schema=schema(),
                           embeddings={"prerank@v42": "vec"})
    finally:
        spark.stop()
    snap = vstore.open(path).snapshot()
    print(f"published snapshot {n} with {len(snap)} items in {snap.inspect()['segments']} segments")
    return n


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/store")
