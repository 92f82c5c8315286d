"""Writes the polars inputs of tests/spark_polars_files.rs the way a polars
pipeline does: DataFrame.write_parquet (polars' own writer: zstd,
dictionary pages, large_string / large_list Arrow types, unsigned integer
logical types). Plus numpy ids and embeddings, and expected.json with what
the store must hold.

items.parquet (profile): item_id u64, category u32 (nulls), price f32
(nulls), small i16, flag bool, brand categorical (strings), vec list[f32]
(a vector column), seen datetime. The tool refuses the last three by name;
tests skip them with --skip-column. stats.parquet: item_id u64, ctr_1d f64
(nulls), impressions_7d i64 (nulls), two row groups.

Regenerate (deterministic):
    target/py-venv/bin/pip install numpy polars
    target/py-venv/bin/python tools/vstore-tool/tests/data/polars/gen.py
"""

import datetime
import json
import os

import numpy as np
import polars as pl

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(13)
n, d = 80, 6

# uint64 ids above 2^63: polars writes them as INT64 marked unsigned.
ids = rng.choice(10**9, size=n, replace=False).astype(np.uint64) + np.uint64(2**63 + 10**6)
emb = rng.standard_normal((n, d)).astype(np.float32)
np.save(os.path.join(here, "ids.npy"), ids)
np.save(os.path.join(here, "emb.npy"), emb)


def with_nulls(vals, p):
    return [v if rng.random() >= p else None for v in vals]


order = rng.permutation(n)[:60]
category = with_nulls([int(x) for x in rng.integers(0, 50, size=60)], 0.15)
price = with_nulls([float(np.float32(x)) for x in rng.lognormal(2, 1, size=60)], 0.15)
small = [int(x) for x in rng.integers(-300, 300, size=60)]
flag = [bool(x) for x in rng.random(60) < 0.5]
items = pl.DataFrame(
    {
        "item_id": pl.Series(ids[order], dtype=pl.UInt64),
        "category": pl.Series(category, dtype=pl.UInt32),
        "price": pl.Series(price, dtype=pl.Float32),
        "small": pl.Series(small, dtype=pl.Int16),
        "flag": pl.Series(flag, dtype=pl.Boolean),
        "brand": pl.Series([f"b{x % 7}" for x in range(60)], dtype=pl.Categorical),
        "vec": pl.Series([list(map(float, emb[i][:3])) for i in order], dtype=pl.List(pl.Float32)),
        "seen": pl.Series(
            [datetime.datetime(2026, 5, 1) + datetime.timedelta(hours=int(h)) for h in rng.integers(0, 1000, size=60)]
        ),
    }
)
items.write_parquet(os.path.join(here, "items.parquet"))

ctr = with_nulls([float(x) for x in rng.random(n) * 0.1], 0.2)
imp = with_nulls([int(x) for x in rng.integers(0, 10**6, size=n)], 0.2)
stats = pl.DataFrame(
    {
        "item_id": pl.Series(ids, dtype=pl.UInt64),
        "ctr_1d": pl.Series(ctr, dtype=pl.Float64),
        "impressions_7d": pl.Series(imp, dtype=pl.Int64),
    }
)
stats.write_parquet(os.path.join(here, "stats.parquet"), row_group_size=40)

pos = {int(ids[i]): k for k, i in enumerate(order)}


def profile(col):
    return [None if pos.get(int(i)) is None else col[pos[int(i)]] for i in ids]


expected = {
    "ids": [int(x) for x in ids],
    "embedding": emb.astype(float).tolist(),
    "category": profile(category),
    "price": profile(price),
    "small": profile(small),
    "flag": [None if v is None else int(v) for v in profile(flag)],
    "ctr_1d": [None if v is None else float(np.float32(v)) for v in ctr],
    "impressions_7d": [None if v is None else float(np.float32(v)) for v in imp],
}
with open(os.path.join(here, "expected.json"), "w") as f:
    json.dump(expected, f, indent=0)
