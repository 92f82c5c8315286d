"""Writes the committed seed files of the npy, csv and parquet fuzz targets
(fuzz/run.sh adds the tool's test data beside them). Small on purpose: a
few hundred bytes each, one per layout the readers handle.

Regenerate (deterministic):
    target/py-venv/bin/python fuzz/seeds/gen.py
"""

import os

import numpy as np
import pandas as pd

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(3)


def out(kind, name):
    return os.path.join(here, kind, name)


# .npy: every float dtype and layout of embeddings, every id dtype, a user
# vector, a version-2 header.
m = rng.standard_normal((4, 3))
np.save(out("npy", "f4.npy"), m.astype("<f4"))
np.save(out("npy", "f2-be-fortran.npy"), np.asfortranarray(m.astype(">f2")))
np.save(out("npy", "f8.npy"), m.astype("<f8"))
np.save(out("npy", "ids-u8.npy"), np.array([1, 5, 9, 2**40], dtype="<u8"))
np.save(out("npy", "ids-i4-be.npy"), np.array([3, 4, 7], dtype=">i4"))
np.save(out("npy", "ids-n1.npy"), np.array([[1], [2]], dtype="<i8"))
np.save(out("npy", "vector.npy"), m[0].astype("<f4"))
with open(out("npy", "v2-header.npy"), "wb") as f:
    np.lib.format.write_array(f, m.astype("<f4"), version=(2, 0))

# CSV: keyed by id or item_id, missing fields, quotes, floats and ints.
with open(out("csv", "ints-floats.csv"), "w") as f:
    f.write("id,category,price\n1,3,9.5\n2,,1.25\n7,4,\n")
with open(out("csv", "quoted.csv"), "w") as f:
    f.write('item_id,"ctr, 1d",n\n10,0.5,"3"\n11,"1e-3",\n\n12,0.25,4\n')
pd.DataFrame({"item_id": [5, 6, 8], "ctr": [0.1, np.nan, 0.3]}).to_csv(
    out("csv", "pandas.csv"), index=False
)

# Parquet: pyarrow through pandas (Snappy, dictionary, nulls, uint64 ids,
# two row groups), uncompressed plain, zstd.
df = pd.DataFrame(
    {
        "id": np.array([1, 2, 3, 4], dtype=np.uint64),
        "category": pd.array([1, None, 3, 1], dtype="Int64"),
        "price": [1.5, np.nan, 2.0, 3.25],
        "f32": np.array([0.5, 1.0, 2.0, 4.0], dtype=np.float32),
    }
)
df.to_parquet(out("parquet", "snappy-dict.parquet"), index=False, row_group_size=2)
df.to_parquet(
    out("parquet", "plain.parquet"), index=False, compression=None, use_dictionary=False
)
df.rename(columns={"id": "item_id"}).to_parquet(
    out("parquet", "zstd-v2.parquet"), index=False, compression="zstd", data_page_version="2.0"
)
