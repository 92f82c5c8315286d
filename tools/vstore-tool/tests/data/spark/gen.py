"""Writes the Spark inputs of tests/spark_polars_files.rs the way a Spark
job does: DataFrame.write.parquet (parquet-mr: Snappy, dictionary pages,
nullable columns, a `spark_schema` root, INT96 timestamps), coalesced to one
part file that is copied out of Spark's output directory. Plus numpy ids
and embeddings, and expected.json with what the store must hold.

items.parquet (profile): item_id bigint, category int (nulls), price
double (nulls), weight float, small tinyint, flag boolean, name string,
updated timestamp (INT96). The tool refuses the last two by name;
tests skip them with --skip-column. stats.parquet: item_id, ctr_1d
double (nulls), impressions_7d bigint (nulls), rating decimal(9,2).

Regenerate (deterministic; needs Java 17):
    target/py-venv/bin/pip install numpy pyspark
    target/py-venv/bin/python tools/vstore-tool/tests/data/spark/gen.py
"""

import datetime
import decimal
import glob
import json
import os
import shutil
import tempfile

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import types as T

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(11)
n, d = 90, 8

ids = (rng.choice(10**9, size=n, replace=False) + 5 * 10**11).astype(np.int64)
emb = rng.standard_normal((n, d)).astype(np.float32)
np.save(os.path.join(here, "ids.npy"), ids)
np.save(os.path.join(here, "emb.npy"), emb)


def maybe(p):
    return rng.random() >= p


order = rng.permutation(n)[:70]  # the profile covers some items, shuffled
items = []
for i in order:
    items.append(
        (
            int(ids[i]),
            int(rng.integers(0, 40)) if maybe(0.15) else None,
            float(rng.lognormal(2, 1)) if maybe(0.15) else None,
            float(np.float32(rng.random() * 10)),
            int(rng.integers(-5, 100)),
            bool(rng.random() < 0.5),
            f"item-{i}",
            datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=int(rng.integers(0, 10**7))),
        )
    )
stats = []
for i in range(n):
    stats.append(
        (
            int(ids[i]),
            float(rng.random() * 0.1) if maybe(0.2) else None,
            int(rng.integers(0, 10**6)) if maybe(0.2) else None,
            decimal.Decimal(int(rng.integers(0, 50000))) / 100,
        )
    )

spark = (
    SparkSession.builder.master("local[1]")
    .appName("vstore-fixtures")
    .config("spark.sql.session.timeZone", "UTC")
    .config("spark.ui.enabled", "false")
    .getOrCreate()
)
item_schema = T.StructType(
    [
        T.StructField("item_id", T.LongType(), False),
        T.StructField("category", T.IntegerType(), True),
        T.StructField("price", T.DoubleType(), True),
        T.StructField("weight", T.FloatType(), True),
        T.StructField("small", T.ByteType(), True),
        T.StructField("flag", T.BooleanType(), True),
        T.StructField("name", T.StringType(), True),
        T.StructField("updated", T.TimestampType(), True),
    ]
)
stat_schema = T.StructType(
    [
        T.StructField("item_id", T.LongType(), False),
        T.StructField("ctr_1d", T.DoubleType(), True),
        T.StructField("impressions_7d", T.LongType(), True),
        T.StructField("rating", T.DecimalType(9, 2), True),
    ]
)


def write_one(rows, schema, name):
    tmp = tempfile.mkdtemp()
    out = os.path.join(tmp, "out")
    spark.createDataFrame(rows, schema).coalesce(1).write.parquet(out)
    (part,) = glob.glob(os.path.join(out, "part-*.parquet"))
    shutil.copy(part, os.path.join(here, name))
    shutil.rmtree(tmp)


write_one(items, item_schema, "items.parquet")
write_one(stats, stat_schema, "stats.parquet")
spark.stop()

pos = {int(ids[i]): k for k, i in enumerate(order)}
expected = {"ids": [int(x) for x in ids], "embedding": emb.astype(float).tolist()}
for col, k in [("category", 1), ("price", 2), ("weight", 3), ("small", 4), ("flag", 5)]:
    vals = []
    for i in range(n):
        r = pos.get(int(ids[i]))
        v = None if r is None else items[r][k]
        if v is not None and col in ("price", "weight"):
            v = float(np.float32(v))
        if v is not None and col == "flag":
            v = int(v)
        vals.append(v)
    expected[col] = vals
for col, k in [("ctr_1d", 1), ("impressions_7d", 2), ("rating", 3)]:
    expected[col] = [None if s[k] is None else float(np.float32(float(s[k]))) for s in stats]
with open(os.path.join(here, "expected.json"), "w") as f:
    json.dump(expected, f, indent=0)
