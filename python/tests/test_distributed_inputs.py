"""What `vstore.distributed.stage_frame` refuses (ids that are not
non-negative integers, columns the schema does not name) and what it
accepts (an empty partition, columns listed in `ignore`). No engine needed:
the build_* helpers stage through stage_frame."""

import numpy as np
import pandas as pd
import pytest

import vstore
from vstore import distributed as vd

DIM = 4
KEY = "p@v1"


def schema():
    return (vstore.Schema().embedding("p", "v1", DIM, "f32")
            .categorical("category", 9).numeric("price", -1.0).stat("ctr", 0.0))


def frame(ids):
    n = len(ids)
    df = pd.DataFrame({"id": ids, "category": np.arange(n) % 3,
                       "price": np.arange(n, dtype=np.float64), "ctr": np.full(n, 0.5)})
    df[KEY] = list(np.ones((n, DIM), dtype=np.float32))
    return df


@pytest.mark.parametrize("ids, message", [
    ([1.0, 2.7, 3.0], r"part 0: id column 'id' holds floats \(float64\); ids are integers \(row 1: id 2.7\)"),
    ([1.0, np.nan], r"holds floats \(float64\); ids are integers \(row 1: missing id\)"),
    ([1.0, 4e19], r"holds floats .*\(row 1: id 4e\+19\)"),
    ([1.0, 2.0], r"holds floats .*\(row 0: id 1.0\)"),
    (np.array([3, 4, -5], dtype=np.int64), r"part 0: id column 'id', row 2: id -5 is negative"),
    (pd.array([3, None], dtype="Int64"), r"part 0: id column 'id' holds floats .*\(row 1: missing id\)"),
    (["a", "b"], r"part 0: id column 'id', row 0: 'a' is not an integer id"),
])
def test_ids_that_are_not_non_negative_integers_are_refused(tmp_path, ids, message):
    plan = vd.plan(str(tmp_path / "s"), "j", 1, schema())
    with pytest.raises(vstore.InvalidInputError, match=message):
        vd.stage_frame(plan, 0, frame(ids))


def test_integer_id_dtypes_are_staged_as_their_values(tmp_path):
    import pyarrow as pa

    path = str(tmp_path / "s")
    plan = vd.plan(path, "j", 4, schema())
    parts = [frame(np.array([1, 2], dtype=np.int64)),
             frame(np.array([3, 4], dtype=np.uint32)),
             pa.Table.from_pandas(frame(np.array([5, 2**63 + 1], dtype=np.uint64))),
             pa.Table.from_pandas(frame(np.array([7, 8], dtype=np.int64)))]
    receipts = [vd.stage_frame(plan, i, f) for i, f in enumerate(parts)]
    assert [r.id_range for r in receipts] == [(1, 2), (3, 4), (5, 2**63 + 1), (7, 8)]
    vd.commit(path, plan, receipts)
    snap = vstore.open(path).snapshot()
    r = snap.query(KEY, np.ones(DIM, np.float32), np.array([1, 2, 3, 4, 5, 2**63 + 1, 7, 8], np.uint64), 10)
    assert r.not_found.tolist() == [] and len(r) == 8


def test_a_column_the_schema_does_not_name_is_refused_unless_ignored(tmp_path):
    path = str(tmp_path / "s")
    plan = vd.plan(path, "j", 1, schema())
    f = frame([1, 2]).rename(columns={"category": "categry"})
    with pytest.raises(vstore.InvalidInputError,
                       match=r"part 0: columns \['categry'\] are not in the schema .*ignore=\['categry'\]"):
        vd.stage_frame(plan, 0, f)
    # A mapped vector column is known; an extra one listed in ignore is left out.
    g = frame([1, 2]).rename(columns={KEY: "vec"})
    g["dt"] = "2026-12-06"
    with pytest.raises(vstore.InvalidInputError, match=r"columns \['dt'\]"):
        vd.stage_frame(plan, 0, g, embeddings={KEY: "vec"})
    r = vd.stage_frame(plan, 0, g, embeddings={KEY: "vec"}, ignore=["dt"])
    vd.commit(path, plan, [r])
    snap = vstore.open(path).snapshot()
    got = snap.query(KEY, np.ones(DIM, np.float32), np.array([1, 2], np.uint64), 2,
                     filter=vstore.Filter.is_in("category", [1]))
    assert got.ids.tolist() == [2]


def test_a_missing_schema_column_takes_its_default_as_documented(tmp_path):
    path = str(tmp_path / "s")
    plan = vd.plan(path, "j", 1, schema())
    vd.commit(path, plan, [vd.stage_frame(plan, 0, frame([1, 2]).drop(columns=["category"]))])
    snap = vstore.open(path).snapshot()
    r = snap.query(KEY, np.ones(DIM, np.float32), np.array([1, 2], np.uint64), 2,
                   filter=vstore.Filter.is_in("category", [9]))
    assert sorted(r.ids.tolist()) == [1, 2]


@pytest.mark.parametrize("empty", [
    lambda: frame(np.array([], dtype=np.uint64)).astype({KEY: np.float32}),
    lambda: pd.DataFrame({"id": np.array([], dtype=np.int64), KEY: np.array([], dtype=np.float32)}),
    lambda: pd.DataFrame([], columns=["id", "category", KEY]),
    lambda: frame([1]).iloc[0:0],
])
def test_an_empty_partition_stages_nothing_and_commits(tmp_path, empty):
    path = str(tmp_path / "s")
    plan = vd.plan(path, "j", 2, schema())
    receipts = [vd.stage_frame(plan, 0, frame([1, 2])), vd.stage_frame(plan, 1, empty())]
    assert receipts[1].rows == 0 and receipts[1].id_range is None
    vd.commit(path, plan, receipts)
    assert len(vstore.open(path).snapshot()) == 2
