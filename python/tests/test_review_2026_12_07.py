"""The binding's answers to a review (2026-12-07): a damaged id index is an
error from `item`, `in` and `ids` (never an item read as absent or an id
listed twice), durations too large for Python's clock are refused, not a
panic, dates, durations and complex numbers are not stored as numbers,
argument errors raise at the call and commit-time errors name the
operation, and the distributed stager refuses missing or ragged vectors
and never rounds float32 rows to float16."""

import os

import numpy as np
import pandas as pd
import pytest

import vstore
from vstore import distributed as vd

DIM = 4


def schema():
    return (vstore.Schema().embedding("p", "v1", DIM, "f32")
            .categorical("category", 0).numeric("price", 0.0).stat("ctr", 0.0))


def build(path, n=100):
    w = vstore.create(str(path), schema())
    with w.begin() as tx:
        tx.add_items(np.arange(1, n + 1, dtype=np.uint64),
                     {"p@v1": np.ones((n, DIM), np.float32)})
    return w


def test_a_damaged_id_index_is_an_error_from_item_in_and_ids(tmp_path):
    w = build(tmp_path / "s")
    w.close()
    d = tmp_path / "s"
    name = next(x for x in os.listdir(d) if x.endswith("ids.vidx"))
    b = bytearray((d / name).read_bytes())
    b[64 + 8 * 5] ^= 1  # the ids column: id 6 now reads as 7
    (d / name).write_bytes(bytes(b))
    for prefault in ["off", None]:
        store = vstore.open(str(d)) if prefault is None else vstore.open(str(d), prefault=prefault)
        s = store.snapshot()
        with pytest.raises(vstore.CorruptError, match=name):
            s.item(6)
        with pytest.raises(vstore.CorruptError, match=name):
            6 in s
        with pytest.raises(vstore.CorruptError, match=name):
            s.ids()


def test_an_intact_store_answers_item_in_and_ids(tmp_path):
    build(tmp_path / "s")
    s = vstore.open(str(tmp_path / "s")).snapshot()
    assert 6 in s and 1000 not in s
    assert s.item(1000) is None
    assert s.item(6)["embeddings"]["p@v1"].tolist() == [1.0] * DIM
    assert s.ids().tolist() == list(range(1, 101))


@pytest.mark.parametrize("secs", [1e30, 1.9e19])
def test_durations_beyond_the_clock_are_refused_naming_the_argument(tmp_path, secs):
    w = build(tmp_path / "s")
    with pytest.raises(vstore.InvalidInputError, match="too large"):
        w.set_retention(1, secs)
    with pytest.raises(vstore.InvalidInputError, match="too large"):
        w.set_staging_grace(secs)
    w.close()
    with pytest.raises(vstore.InvalidInputError, match="lock_timeout .*too large"):
        vstore.abort_job(str(tmp_path / "s"), "x", lock_timeout=secs)


def test_dates_durations_and_complex_numbers_are_not_stored_as_numbers(tmp_path):
    w = build(tmp_path / "s")
    e = {"p@v1": np.ones((1, DIM), np.float32)}
    tx = w.begin()
    for col, holds in [(pd.DataFrame({"price": pd.to_datetime(["2020-01-01"])}), "dates"),
                       ({"price": np.array([90], "timedelta64[m]")}, "durations"),
                       ({"price": np.array([1 + 2j])}, "complex")]:
        with pytest.raises(vstore.InvalidInputError, match=f"price.*{holds}"):
            if isinstance(col, pd.DataFrame):
                tx.add_items([1000], e, profile=col)
            else:
                tx.add_items([1000], e, numeric=col)
    tx.rollback()


def test_argument_errors_raise_at_the_call(tmp_path):
    w = build(tmp_path / "s")
    e = {"p@v1": np.ones((1, DIM), np.float32)}
    with w.begin() as tx:
        with pytest.raises(vstore.NoSuchColumnError, match="nope"):
            tx.add_items([1000], e, categorical={"nope": [1]})
        with pytest.raises(vstore.NoSuchColumnError, match="nope"):
            tx.add_items([1000], e, numeric={"nope": [1.0]})
        with pytest.raises(vstore.NoSuchColumnError, match="nope"):
            tx.add_items([1000], e, stats={"nope": [1.0]})
        with pytest.raises(vstore.InvalidInputError, match="given as categorical"):
            tx.add_items([1000], e, categorical={"price": [1]})
        with pytest.raises(vstore.InvalidInputError, match="p@v9.*not a version"):
            tx.add_items([1000], {"p@v9": np.ones((1, DIM), np.float32)})
        with pytest.raises(vstore.InvalidInputError, match="7 values.*dimension 4"):
            tx.add_items([1000], {"p@v1": np.ones((1, 7), np.float32)})
        with pytest.raises(vstore.NoSuchColumnError, match="nope"):
            tx.update_stats([1], {"nope": [1.0]})
        # A version added earlier in the same transaction is known.
        tx.add_embedding("p", "v2", "f32", np.arange(1, 101, dtype=np.uint64),
                         np.ones((100, DIM), np.float32))
        tx.add_items([1000], {"p@v1": np.ones((1, DIM), np.float32),
                              "p@v2": np.ones((1, DIM), np.float32)})
    s = vstore.open(str(tmp_path / "s")).snapshot()
    assert 1000 in s and s.item(1000)["embeddings"]["p@v2"].tolist() == [1.0] * DIM


def test_an_error_at_commit_names_the_operation(tmp_path):
    w = build(tmp_path / "s")
    tx = w.begin()
    tx.delete_items([1])
    tx.add_items([2], {"p@v1": np.ones((1, DIM), np.float32)})  # 2 is in the store
    with pytest.raises(vstore.DuplicateIdError, match=r"operation 2 of 2 \(add_items of 1 items\)"):
        tx.commit()


def test_ids_name_the_element_at_fault(tmp_path):
    w = build(tmp_path / "s")
    cases = [([1, -1], r"ids\[1\]: id -1 is negative"),
             ([1, 2 ** 64 + 5], r"ids\[1\]: id 18446744073709551621 is above"),
             ([1, None], r"ids\[1\]: missing"),
             ([True], r"ids\[0\]: True is a boolean"),
             ([1.5], r"ids\[0\]: 1.5 \(float\) is not an integer"),
             (pd.Series([6018, None], dtype="Int64"), r"ids\[1\]: missing")]
    for ids, msg in cases:
        tx = w.begin()
        with pytest.raises(vstore.InvalidInputError, match=msg):
            tx.add_items(ids, {"p@v1": np.ones((len(ids), DIM), np.float32)})
        tx.rollback()


def test_values_beyond_float32_are_named_not_reported_as_inf(tmp_path):
    with pytest.raises(vstore.InvalidInputError, match="default 1e39 is beyond float32"):
        vstore.Schema().numeric("a", 1e39)
    w = build(tmp_path / "s")
    v = np.ones((1, DIM)) * 1.0
    v[0, 2] = 1e39
    tx = w.begin()
    with pytest.raises(vstore.InvalidInputError, match="row 0, component 2: 1e39"):
        tx.add_items([1000], {"p@v1": v})
    tx.rollback()


def test_a_nan_fusion_weight_is_named(tmp_path):
    build(tmp_path / "s")
    s = vstore.open(str(tmp_path / "s")).snapshot()
    with pytest.raises(vstore.InvalidInputError, match="fusion: not expressible as JSON"):
        s.query("p@v1", np.ones(DIM, np.float32), [1, 2], 1, three_tower={},
                fusion={"kind": "weighted_sum", "weights": {"click": float("nan")}})


def test_the_stager_refuses_missing_and_ragged_vectors_and_keeps_float32(tmp_path):
    d = str(tmp_path / "s")
    sch = vstore.Schema().embedding("p", "v1", DIM, "f32")
    pl = vd.plan(d, "j", 1, schema=sch)
    for rows, msg in [([np.ones(DIM, np.float32), None], "part 0, embedding p@v1, row 1: missing"),
                      ([np.ones(DIM, np.float32), np.ones(3, np.float32)], "row 1: 3 values"),
                      ([np.ones(DIM, np.float32), "abc"], "row 1: expected a vector of numbers")]:
        with pytest.raises(vstore.InvalidInputError, match=msg):
            vd.stage_frame(pl, 0, pd.DataFrame({"id": [1, 2], "p@v1": rows}))
    exact = np.array([0.1, 0.2, 0.3, 1.0001], np.float32)
    r = vd.stage_frame(pl, 0, pd.DataFrame({"id": [1, 2], "p@v1": [np.ones(DIM, np.float16), exact]}))
    vd.commit(d, pl, [r])
    got = vstore.open(d).snapshot().item(2)["embeddings"]["p@v1"]
    assert got.tolist() == exact.tolist()


def test_range_bounds_are_exact_against_float32_values(tmp_path):
    # 16777216 and 16777218 are exact float32 values; 16777217 is not: a
    # minimum of 16777217 must leave 16777216 out (rounding it to nearest
    # let it in), and a minimum of 1e-300 must leave 0.0 out.
    w = vstore.create(str(tmp_path / "s"), vstore.Schema().embedding("e", "v1", 8, "f32")
                      .numeric("impressions", 0.0))
    with w.begin() as tx:
        tx.add_items([1, 2, 3], {"e@v1": np.ones((3, 8), np.float32)},
                     profile={"impressions": [16777216.0, 16777218.0, 0.0]})
    s = vstore.open(str(tmp_path / "s")).snapshot()
    u = np.ones(8, np.float32)
    for lo, hi, want in [(16777217.0, float("inf"), [2]), (1e-300, 1.0, []),
                         (-1e-300, 0.0, [3]), (16777216.0, 16777217.0, [1]),
                         (0.0, 16777218.0, [1, 2, 3])]:
        r = s.query("e@v1", u, [1, 2, 3], 10, filter=vstore.Filter.range("impressions", lo, hi))
        assert sorted(r.ids.tolist()) == want, (lo, hi)
    with pytest.raises(vstore.InvalidInputError, match="range is empty"):
        vstore.Filter.range("impressions", 1.00000001, 1.0)
    with pytest.raises(vstore.InvalidInputError, match="boolean"):
        vstore.Filter.range("impressions", False, True)
