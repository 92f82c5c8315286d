"""Writes the inputs of tests/pandas_files.rs the way a data pipeline does:
numpy.save for ids and item-tower outputs, pandas.DataFrame.to_parquet
(pyarrow, Snappy, nullable integer and float columns, uint64 ids) and
DataFrame.to_csv (missing values as empty fields), plus expected.json with
what the store must hold afterwards, and float16.parquet (a float16 column,
which tables do not take: the message names the type).

Regenerate (deterministic):
    target/peers-venv/bin/pip install numpy pandas pyarrow
    target/peers-venv/bin/python tools/vstore-tool/tests/data/pandas/gen.py
"""

import json
import os

import numpy as np
import pandas as pd

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(7)
n, d = 120, 16

ids = (rng.choice(10**9, size=n, replace=False) + 10**12).astype(np.uint64)
emb = rng.standard_normal((n, d)).astype(np.float16)  # stored as f16 by the pipeline
np.save(os.path.join(here, "ids.npy"), ids)
np.save(os.path.join(here, "emb.npy"), emb)

# Profile: nullable integer categories, float prices with NaN (pyarrow
# writes NaN from pandas as null), rows shuffled, a subset of the items.
order = rng.permutation(n)[:100]
category = pd.array(rng.integers(0, 30, size=n), dtype="Int64")
category[rng.random(n) < 0.1] = pd.NA
price = rng.lognormal(3, 1, size=n)
price[rng.random(n) < 0.1] = np.nan
items = pd.DataFrame(
    {"item_id": ids[order], "category": category[order], "price": price[order]}
)
items.to_parquet(os.path.join(here, "items.parquet"), index=False, row_group_size=40)

ctr = rng.random(n) * 0.1
ctr[rng.random(n) < 0.15] = np.nan
imp = pd.array(rng.integers(0, 10**6, size=n), dtype="Int64")
imp[rng.random(n) < 0.15] = pd.NA
stats = pd.DataFrame({"item_id": ids, "ctr_1d": ctr, "impressions_7d": imp})
stats.to_csv(os.path.join(here, "stats.csv"), index=False)

in_items = set(order.tolist())
expected = {
    "ids": [int(x) for x in ids],
    "embedding": [[float(v) for v in row] for row in emb.astype(np.float32)],
    "category": [int(category[i]) if i in in_items and not pd.isna(category[i]) else None for i in range(n)],
    "price": [float(np.float32(price[i])) if i in in_items and not np.isnan(price[i]) else None for i in range(n)],
    "ctr_1d": [float(np.float32(ctr[i])) if not np.isnan(ctr[i]) else None for i in range(n)],
    "impressions_7d": [float(imp[i]) if not pd.isna(imp[i]) else None for i in range(n)],
}
with open(os.path.join(here, "expected.json"), "w") as f:
    json.dump(expected, f, indent=0)

# A float16 statistics column (pyarrow >= 15 writes Parquet's FLOAT16
# logical type): refused, naming the type and what to write instead.
half = pd.DataFrame({"item_id": ids[:5], "ctr_1d": np.arange(5, dtype=np.float16) / 8})
half.to_parquet(os.path.join(here, "float16.parquet"), index=False)
