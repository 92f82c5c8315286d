"""The binding's inputs from a user review: pandas' float64 / int64 and
strided arrays are converted (with the same answers as float32 / uint64),
what cannot be converted is refused naming the argument, and the errors
and warnings say what Python can do (a full scan, keep_last, which user of
a batch, which category code, a damaged manifest, replaced columns)."""

import glob
import os
import warnings

import numpy as np
import pytest

import vstore

DIM = 8


def build(path, n=300):
    rng = np.random.default_rng(0)
    ids = np.arange(1, n + 1, dtype=np.uint64) * 7
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    schema = (vstore.Schema().embedding("p", "v1", DIM, "f32")
              .categorical("category", 3).numeric("price", -1.0).stat("ctr", 0.5))
    w = vstore.create(str(path), schema)
    with w.begin() as tx:
        tx.add_items(ids, embeddings={"p@v1": vecs},
                     categorical={"category": np.arange(n) % 5},
                     numeric={"price": np.arange(n, dtype=np.float32)},
                     stats={"ctr": np.full(n, 0.25, dtype=np.float32)})
    return w, ids, vecs


def test_float64_users_and_int64_or_strided_ids_answer_as_float32_and_uint64(tmp_path):
    _, ids, vecs = build(tmp_path / "s")
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    user = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    want = snap.query("p@v1", user, ids[::2].copy(), 10)
    for u, c in [(user.astype(np.float64), ids[::2].copy()),
                 (user, ids[::2].astype(np.int64)),
                 (user, ids[::2]),                      # strided: copied
                 (list(user.astype(np.float64)), [int(i) for i in ids[::2]]),
                 (np.stack([user, user])[:, 0::1][0], ids.astype(np.int32)[::2]),
                 (user[None, :], ids[::2].copy()),      # one row: the vector
                 (user.astype(np.float64).reshape(1, -1), ids[::2].copy())]:
        r = snap.query("p@v1", u, c, 10)
        assert r.ids.tolist() == want.ids.tolist()
        assert np.array_equal(r.scores, want.scores)
    users = np.stack([user, -user])
    want = snap.query_batch("p@v1", users, ids, 5)
    for us, c in [(users.astype(np.float64), ids.astype(np.int64)),
                  (np.asfortranarray(users), ids),   # column-major: read as rows
                  (users, [ids.astype(np.int64), ids[::1]])]:
        got = snap.query_batch("p@v1", us, c, 5)
        assert [r.ids.tolist() for r in got] == [r.ids.tolist() for r in want]
    assert want[1].ids.tolist() == snap.query("p@v1", -user, ids, 5).ids.tolist()


def unaligned(a):
    """`a`'s values in an array one byte off alignment (as Dask's
    deserialisation can hand a worker)."""
    buf = np.frombuffer(b"\0" + a.tobytes(), dtype=np.uint8)[1:]
    out = buf.view(a.dtype).reshape(a.shape)
    assert not out.flags.aligned
    return out


def test_unaligned_arrays_are_copied_not_a_panic(tmp_path):
    w, ids, vecs = build(tmp_path / "s")
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    user = np.random.default_rng(3).standard_normal(DIM).astype(np.float32)
    want = snap.query("p@v1", user, ids, 10)
    got = snap.query("p@v1", unaligned(user), unaligned(ids), 10)
    assert got.ids.tolist() == want.ids.tolist()
    got = snap.query_batch("p@v1", unaligned(np.stack([user, user])), unaligned(ids), 10)
    assert [r.ids.tolist() for r in got] == [want.ids.tolist()] * 2
    with w.begin() as tx:
        tx.add_items(unaligned(np.array([1, 2], dtype=np.uint64)),
                     embeddings={"p@v1": unaligned(np.ones((2, DIM), np.float32))})
    assert len(vstore.open(str(tmp_path / "s")).snapshot()) == len(ids) + 2


def test_ids_and_users_that_cannot_convert_are_refused_naming_the_argument(tmp_path):
    build(tmp_path / "s")
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    user = np.ones(DIM, dtype=np.float32)
    with pytest.raises(vstore.InvalidInputError, match=r"candidates\[2\]: id -5 is negative"):
        snap.query("p@v1", user, np.array([7, 14, -5], dtype=np.int64), 3)
    with pytest.raises(vstore.InvalidInputError, match="candidates: the array holds floats"):
        snap.query("p@v1", user, np.array([7.0, 14.0]), 3)
    with pytest.raises(vstore.InvalidInputError, match="user: expected a float array"):
        snap.query("p@v1", np.ones(DIM, dtype=np.int64), np.array([7], dtype=np.uint64), 3)
    with pytest.raises(vstore.InvalidInputError, match="user: expected a 1-D float array"):
        snap.query("p@v1", np.stack([user, user]), None, 3)
    with pytest.raises(vstore.InvalidInputError, match="users: expected a 2-D float array"):
        snap.query_batch("p@v1", user, None, 3)
    with pytest.raises(vstore.InvalidInputError, match=r"candidates\[1\]\[0\]: id -1 is negative"):
        snap.query_batch("p@v1", np.stack([user, user]), [np.array([7]), np.array([-1])], 3)
    w = vstore.Writer.open(str(tmp_path / "s"))
    tx = w.begin()
    with pytest.raises(vstore.InvalidInputError, match=r"ids\[1\]: id -3 is negative"):
        tx.delete_items(np.array([7, -3]))
    with pytest.raises(vstore.InvalidInputError, match="ids: the array holds floats"):
        tx.add_items(np.array([1.0, 2.7]), embeddings={"p@v1": np.ones((2, DIM), np.float32)})
    with pytest.raises(vstore.InvalidInputError, match='embedding "p@v1": expected a float array'):
        tx.add_items(np.array([1, 2]), embeddings={"p@v1": np.ones((2, DIM), np.int64)})
    tx.rollback()


def test_int64_ids_and_float64_embeddings_write_what_uint64_and_float32_write(tmp_path):
    w, ids, vecs = build(tmp_path / "s")
    new = rng_vecs = np.random.default_rng(2).standard_normal((2, DIM))
    with w.begin() as tx:
        tx.add_items(np.array([1, 2], dtype=np.int64), embeddings={"p@v1": new})  # float64
        tx.delete_items(ids[:2].astype(np.int64))
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    assert len(snap) == len(ids)
    user = np.ones(DIM, dtype=np.float32)
    r = snap.query("p@v1", user, np.array([1, 2, int(ids[0])], dtype=np.uint64), 3)
    assert r.not_found.tolist() == [int(ids[0])]
    by_id = dict(zip(r.ids.tolist(), r.scores.tolist()))
    want = rng_vecs.astype(np.float32) @ user
    assert by_id[1] == pytest.approx(float(want[0]), rel=1e-6)
    assert by_id[2] == pytest.approx(float(want[1]), rel=1e-6)


def test_an_empty_candidate_list_says_how_to_scan_every_item(tmp_path):
    _, ids, _ = build(tmp_path / "s")
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    user = np.ones(DIM, dtype=np.float32)
    with pytest.raises(vstore.InvalidInputError, match="candidates=None to score every item") as e:
        snap.query("p@v1", user, np.array([], dtype=np.uint64), 3)
    assert "Query::full_scan" not in str(e.value)
    with pytest.raises(vstore.InvalidInputError, match=r"candidates\[1\]: no candidate ids; pass candidates=None"):
        snap.query_batch("p@v1", np.stack([user, user]), [ids[:3], np.array([], np.uint64)], 3)
    assert len(snap.query("p@v1", user, None, 3)) == 3


def test_a_nan_user_in_a_batch_is_named_by_its_row(tmp_path):
    _, ids, _ = build(tmp_path / "s")
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    users = np.ones((4, DIM), dtype=np.float32)
    users[2, 5] = np.nan
    with pytest.raises(vstore.InvalidInputError, match=r"users row 2: .*component 5 is NaN"):
        snap.query_batch("p@v1", users, ids, 3, workers=2)
    # errors="return": the bad user's exception in its place, the others'
    # results as alone.
    got = snap.query_batch("p@v1", users, ids, 3, workers=2, errors="return")
    assert isinstance(got[2], vstore.InvalidInputError) and "users row 2" in str(got[2])
    want = snap.query("p@v1", users[0], ids, 3)
    for i in (0, 1, 3):
        assert got[i].ids.tolist() == want.ids.tolist()
    with pytest.raises(vstore.InvalidInputError, match='errors "ignore"'):
        snap.query_batch("p@v1", users, ids, 3, errors="ignore")


def test_category_codes_out_of_range_name_the_column_and_value():
    with pytest.raises(vstore.InvalidInputError, match=r'categorical column "x": default: -1 is not a category code \(an integer from 0 to 4294967295\)'):
        vstore.Schema().categorical("x", -1)
    with pytest.raises(vstore.InvalidInputError, match=r'column "x": default: 4294967296 is not'):
        vstore.Schema().categorical("x", 2**32)
    with pytest.raises(vstore.InvalidInputError, match=r'Filter.is_in column "brand", values\[1\]: -1 is not a category code'):
        vstore.Filter.is_in("brand", [3, -1])
    with pytest.raises(vstore.InvalidInputError, match=r'Filter.not_in column "brand", values\[0\]: 1.5 is not'):
        vstore.Filter.not_in("brand", [1.5])
    vstore.Schema().categorical("x", 4294967295)
    vstore.Schema().categorical("x")
    vstore.Filter.is_in("brand", np.array([0, 4294967295], dtype=np.int64))


def test_categorical_default_and_filters_still_apply(tmp_path):
    _, ids, _ = build(tmp_path / "s")
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    assert snap.inspect()["columns"]["category"]["default"] == 3
    r = snap.query("p@v1", np.ones(DIM, np.float32), ids, 1000,
                   filter=vstore.Filter.is_in("category", np.array([2], dtype=np.int64)))
    assert sorted(r.ids.tolist()) == [int(i) for j, i in enumerate(ids) if j % 5 == 2]


def test_keep_last_zero_is_refused(tmp_path):
    w, _, _ = build(tmp_path / "s")
    with pytest.raises(vstore.InvalidInputError, match="keep_last 0: expected an integer >= 1"):
        w.set_retention(0, 0.0)
    with pytest.raises(vstore.InvalidInputError, match="keep_last -1"):
        w.set_retention(-1, 0.0)
    w.set_retention(1, 0.0)


def test_a_damaged_newest_manifest_is_warned_and_listed(tmp_path):
    path = str(tmp_path / "s")
    w, ids, vecs = build(tmp_path / "s")
    with w.begin() as tx:
        tx.delete_items(ids[:1])
    del w
    newest = sorted(glob.glob(os.path.join(path, "MANIFEST-*")))[-1]
    assert vstore.open(path).skipped_manifests == []
    with open(newest, "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xfe")
    with pytest.warns(vstore.DamagedManifestWarning) as rec:
        store = vstore.open(path)
    assert store.snapshot().number == 1
    name = os.path.basename(newest)
    msg = str(rec[0].message)
    assert msg.startswith(f"{name} is damaged and was skipped; reading the older snapshot 1 instead (")
    assert issubclass(vstore.DamagedManifestWarning, RuntimeWarning)
    assert [m for m, _ in store.skipped_manifests] == [name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(vstore.DamagedManifestWarning):
            vstore.open(path)


def test_upsert_without_every_column_warns_that_replaced_items_take_defaults(tmp_path):
    w, ids, vecs = build(tmp_path / "s")
    with pytest.warns(vstore.ReplacedItemsWarning,
                      match=r"upsert_items: 2 of the 3 items are already in the store and are replaced whole; category, price, ctr not given"):
        with w.begin() as tx:
            tx.upsert_items(np.array([ids[0], ids[1], 1], dtype=np.uint64),
                            embeddings={"p@v1": np.ones((3, DIM), np.float32)})
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    # What the warning says: the replaced item reads the defaults.
    r = snap.query("p@v1", np.ones(DIM, np.float32), ids[:1], 1,
                   filter=vstore.Filter.is_in("category", [3]) & vstore.Filter.range("price", -1, -1)
                   & vstore.Filter.range("ctr", 0.5, 0.5))
    assert r.ids.tolist() == [int(ids[0])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with w.begin() as tx:  # every column given, or no item replaced: no warning
            tx.upsert_items(ids[2:4], embeddings={"p@v1": np.ones((2, DIM), np.float32)},
                            categorical={"category": [1, 1]}, numeric={"price": [2.0, 2.0]},
                            stats={"ctr": [0.1, 0.1]})
            tx.upsert_items(np.array([5, 6]), embeddings={"p@v1": np.ones((2, DIM), np.float32)})


def test_refresh_warns_for_a_damaged_newer_manifest(tmp_path):
    path = str(tmp_path / "s")
    w, ids, _ = build(tmp_path / "s")
    store = vstore.open(path)
    with w.begin() as tx:
        tx.delete_items(ids[:1])
    newest = sorted(glob.glob(os.path.join(path, "MANIFEST-*")))[-1]
    with open(newest, "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xfe")
    with pytest.warns(vstore.DamagedManifestWarning,
                      match=f"{os.path.basename(newest)} is damaged and was skipped; reading the older snapshot 1"):
        assert store.refresh() is False
    assert store.snapshot().number == 1
    assert [m for m, _ in store.skipped_manifests] == [os.path.basename(newest)]


def test_large_python_int_ids_strings_booleans_and_out_of_range_numbers(tmp_path):
    w, ids, _ = build(tmp_path / "s")
    big = 2**63 + 5
    # A list of Python ints mixing small and large ids: read as integers
    # (numpy promoted it to float64, and the list was refused as floats).
    with w.begin() as tx:
        tx.add_items([3, big], embeddings={"p@v1": np.ones((2, DIM), np.float32)})
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    r = snap.query("p@v1", np.ones(DIM, np.float32), [3, big], 5)
    assert sorted(r.ids.tolist()) == [3, big] and r.not_found.tolist() == []
    tx = w.begin()
    one = {"p@v1": np.ones((1, DIM), np.float32)}
    with pytest.raises(vstore.InvalidInputError, match=r"column .*price.*holds strings"):
        tx.add_items([4], embeddings=one, numeric={"price": np.array(["3.5"])})
    with pytest.raises(vstore.InvalidInputError, match=r"category.*holds booleans"):
        tx.add_items([4], embeddings=one, categorical={"category": np.array([True])})
    with pytest.raises(vstore.InvalidInputError, match=r"row 0: 1e300 is beyond float32's range"):
        tx.add_items([4], embeddings=one, numeric={"price": np.array([1e300])})
    # NaN is a missing value in Python (pandas writes missing values so):
    # the item takes the column's default, -1.0.
    tx.add_items([4], embeddings=one, numeric={"price": np.array([np.nan])})
    tx.commit()
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    r = snap.query("p@v1", np.ones(DIM, np.float32), [4], 1,
                   filter=vstore.Filter.range("price", -1.0, -1.0))
    assert r.ids.tolist() == [4]


def test_item_reads_back_what_was_written(tmp_path):
    w, ids, vecs = build(tmp_path / "s")
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    assert snap.ids().tolist() == ids.tolist()
    assert int(ids[4]) in snap and 5 not in snap
    it = snap.item(int(ids[4]))
    assert np.array_equal(it["embeddings"]["p@v1"], vecs[4])
    assert it["computed"] == {"p@v1": False}
    assert it["profile"] == {"category": 4, "price": 4.0}
    assert it["stats"] == {"ctr": 0.25}
    assert snap.item(5) is None
    assert snap.computed_count("p@v1") == 0
    # A missing value reads as None (the default is what scoring uses);
    # drop_embedding removes the version.
    with w.begin() as tx:
        tx.add_items([5], embeddings={"p@v1": np.zeros((1, DIM), np.float32)})
    with w.begin() as tx:
        tx.add_embedding("p", "v2", "f16", snap.ids().tolist() + [5],
                         np.ones((len(ids) + 1, DIM), np.float32))
        tx.drop_embedding("p@v1")
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    it = snap.item(5)
    assert it["profile"] == {"category": None, "price": None} and it["stats"] == {"ctr": None}
    assert list(it["embeddings"]) == ["p@v2"]
    with pytest.raises(vstore.VersionSkewError):
        snap.query("p@v1", np.ones(DIM, np.float32), None, 3)
    # The dropped name is not given to other vectors, unless forgotten
    # (vectors of the same model).
    dropped_in = snap.number
    assert snap.dropped_versions() == {"p@v1": dropped_in}
    all_ids = snap.ids().tolist()
    tx = w.begin()
    tx.add_embedding("p", "v1", "f32", all_ids, np.ones((len(all_ids), DIM), np.float32))
    with pytest.raises(vstore.InvalidInputError, match=f"p@v1 was dropped in snapshot {dropped_in}"):
        tx.commit()
    with w.begin() as tx:
        tx.forget_dropped_version("p@v1")
        tx.add_embedding("p", "v1", "f32", all_ids, np.ones((len(all_ids), DIM), np.float32))
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    assert snap.dropped_versions() == {} and "p@v1" in snap.item(5)["embeddings"]
    with w.begin() as tx:
        with pytest.raises(vstore.InvalidInputError, match="the library's"):
            tx.remove_metadata("vstore.dropped_versions")
        with pytest.raises(vstore.InvalidInputError, match="the library's"):
            tx.set_metadata("vstore.job", "x")


def test_a_polars_frame_is_a_table(tmp_path):
    pl = pytest.importorskip("polars", reason="polars is not installed (pip install polars to run this test)")
    w, ids, _ = build(tmp_path / "s")
    with w.begin() as tx:
        tx.add_items([11], embeddings={"p@v1": np.ones((1, DIM), np.float32)},
                     profile=pl.DataFrame({"category": [2], "price": [9.5]}),
                     stats=pl.DataFrame({"ctr": [0.75]}))
    it = vstore.open(str(tmp_path / "s")).snapshot().item(11)
    assert it["profile"] == {"category": 2, "price": 9.5} and it["stats"] == {"ctr": 0.75}


def test_bad_inputs_of_one_user_in_a_batch_are_its_error_only(tmp_path):
    _, ids, _ = build(tmp_path / "s")
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    users = np.ones((3, DIM), dtype=np.float32)
    lists = [ids[:5], np.array([], np.uint64), np.array([7, -1], dtype=np.int64)]
    with pytest.raises(vstore.InvalidInputError, match=r"candidates\[1\]"):
        snap.query_batch("p@v1", users, lists, 3)
    got = snap.query_batch("p@v1", users, lists, 3, errors="return")
    assert got[0].ids.tolist() == snap.query("p@v1", users[0], ids[:5], 3).ids.tolist()
    assert isinstance(got[1], vstore.InvalidInputError) and "candidates[1]" in str(got[1])
    assert isinstance(got[2], vstore.InvalidInputError) and "candidates[2][1]" in str(got[2])


def test_object_columns_of_strings_or_booleans_and_odd_users_and_ids(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    w, ids, _ = build(tmp_path / "s")
    tx = w.begin()
    one = {"p@v1": np.ones((1, DIM), np.float32)}
    with pytest.raises(vstore.InvalidInputError, match=r"price.*row 0: expected a number, not '3.5'"):
        tx.add_items([4], embeddings=one, profile=pd.DataFrame({"price": pd.array(["3.5"], dtype="string")}))
    with pytest.raises(vstore.InvalidInputError, match=r"category.*row 0: expected a number, not True"):
        tx.add_items([4], embeddings=one, categorical={"category": np.array([True], dtype=object)})
    # numpy integers in a list keep their value, however large.
    big = np.uint64(2**63 + 5)
    tx.add_items([np.uint64(4), big], embeddings={"p@v1": np.ones((2, DIM), np.float32)},
                 profile=pd.DataFrame({"price": pd.array([1.5, None], dtype="Float64")}))
    tx.commit()
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    assert int(big) in snap and snap.item(int(big))["profile"]["price"] is None
    assert snap.item(4)["profile"]["price"] == 1.5
    # A one-row DataFrame as the user.
    user = pd.DataFrame([np.ones(DIM, np.float32)])
    r = snap.query("p@v1", user, [4], 1)
    assert r.ids.tolist() == [4]
