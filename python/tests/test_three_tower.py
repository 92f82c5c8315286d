"""Three-tower queries from Python against the float64 numpy references of
the Rust parity tests (tests/data/three_tower*/case.json), with the items
given as a pandas DataFrame and a pyarrow Table; filters, the batch form,
bundles at low precision, a second embedding version."""

import json
import pathlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import vstore

DATA = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data"


def load(name):
    return json.loads((DATA / name / "case.json").read_text())


def build(path, case):
    s = case["schema"]
    schema = vstore.Schema()
    for c in s["categorical"]:
        schema = schema.categorical(c["name"], c["default"])
    for c in s["numeric"]:
        schema = schema.numeric(c["name"], c["default"])
    for c in s["stats"]:
        schema = schema.stat(c["name"], c["default"])
    e = s["embedding"]
    schema = schema.embedding(e["space"], e["version"], e["dim"], "f32")
    it = case["items"]
    ids = np.array(it["ids"], dtype=np.uint64)
    # Profile as a DataFrame (None: missing, NaN in pandas), stats as a
    # pyarrow Table (None: null).
    profile = pd.DataFrame({**it["categorical"], **it["numeric"]})
    stats = pa.table(it["stats"])
    w = vstore.create(str(path), schema)
    with w.begin() as tx:
        tx.add_items(
            ids,
            embeddings={f"{e['space']}@{e['version']}": np.array(it["embedding"], np.float32)},
            profile=profile,
            stats=stats,
        )
    return w, f"{e['space']}@{e['version']}"


def inputs(q):
    d = {k: np.array(v, np.float32) for k, v in q["user_dense"].items()}
    for k, m in q["user_by_item"].items():
        d[k] = {int(c): np.array(v, np.float32) for c, v in m.items()}
    return d


def close(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("data", ["three_tower", "three_tower_v2"])
def test_three_tower_queries_match_the_numpy_reference(tmp_path, data):
    case = load(data)
    w, key = build(tmp_path / "s", case)
    checked = 0
    for c in case["cases"]:
        with w.begin() as tx:
            tx.add_model_dir(str(DATA / data / c["bundle"]))
        snap = vstore.open(str(tmp_path / "s")).snapshot()
        for q in c["queries"]:
            user = np.array(q["user"], np.float32)
            cands = None if q["candidates"] is None else np.array(q["candidates"], np.uint64)
            r = snap.query(
                key,
                user,
                cands,
                q["k"],
                three_tower=inputs(q),
                model=c.get("name"),  # v2: named bundles
                fusion=q.get("fusion"),  # v2: per-query fusion (a dict)
                heads=True,
            )
            exp = q["expected"]
            np.testing.assert_array_equal(r.ids, np.array(exp["ids"], np.uint64))
            np.testing.assert_array_equal(r.not_found, np.array(exp["not_found"], np.uint64))
            close(r.scores, exp["scores"])
            if exp.get("heads"):
                assert r.heads.shape == (len(r.ids), len(r.head_names))
                close(r.heads, exp["heads"])
            checked += 1
    assert checked >= 8
    if data == "three_tower_v2":
        # Several named bundles: a query must name one.
        q = case["cases"][0]["queries"][0]
        with pytest.raises(vstore.ModelChoiceError, match="default"):
            snap.query(key, np.array(q["user"], np.float32), None, 5, three_tower=inputs(q))


def build_with_first_bundle(path, case, **add_model):
    """The case's store with its first bundle added (`add_model` options)."""
    w, key = build(path, case)
    bundle = DATA / "three_tower" / case["cases"][0]["bundle"]
    with w.begin() as tx:
        tx.add_model(
            (bundle / "model.json").read_text(),
            (bundle / "weights.safetensors").read_bytes(),
            **add_model,
        )
    return vstore.open(str(path)).snapshot(), key


def test_filters_batches_and_low_precision(tmp_path):
    case = load("three_tower")
    snap, key = build_with_first_bundle(tmp_path / "s", case, precision="bf16")
    q = case["cases"][0]["queries"][0]
    user = np.array(q["user"], np.float32)
    ids = np.array(case["items"]["ids"], np.uint64)
    cats = np.array([np.nan if c is None else c for c in case["items"]["categorical"]["category"]])
    # A filter keeps only its categories; its complement the others.
    f = vstore.Filter.is_in("category", [1, 2, 3])
    r = snap.query(key, user, ids, 300, filter=f, three_tower=inputs(q))
    pos = {int(i): j for j, i in enumerate(ids)}
    assert len(r.ids) > 0 and all(cats[pos[int(i)]] in (1, 2, 3) for i in r.ids)
    r2 = snap.query(key, user, ids, 300, filter=~f, three_tower=inputs(q))
    assert len(r.ids) + len(r2.ids) == len(ids) and r.filtered_out == len(r2.ids)
    # Which ids the filter removed: exactly the complement's, ascending.
    np.testing.assert_array_equal(r.filtered, np.sort(r2.ids))
    np.testing.assert_array_equal(r2.filtered, np.sort(r.ids))
    # Exact mode on the bf16 bundle: the f32 ranking's ids.
    exact = snap.query(key, user, ids, 20, three_tower=inputs(q), exact=True, threads=2)
    assert len(exact.ids) == 20
    # The batch form equals one query at a time, on several workers.
    users = np.random.default_rng(3).standard_normal((9, len(user))).astype(np.float32)
    cands = [ids[i * 20 : i * 20 + 100] for i in range(9)]
    batch = snap.query_batch(key, users, cands, 10, workers=2, three_tower=inputs(q))
    for u, c, got in zip(users, cands, batch):
        one = snap.query(key, u, c, 10, three_tower=inputs(q))
        np.testing.assert_array_equal(got.ids, one.ids)
        np.testing.assert_array_equal(got.scores, one.scores)
    # Per-user inputs: one dict per user.
    per_user = []
    for i in range(9):
        d = inputs(q)
        d = {k: (v * (1 + i / 10) if isinstance(v, np.ndarray) else v) for k, v in d.items()}
        per_user.append(d)
    batch = snap.query_batch(key, users, cands, 10, workers=2, three_tower=per_user, heads=True)
    for u, c, d, got in zip(users, cands, per_user, batch):
        one = snap.query(key, u, c, 10, three_tower=d, heads=True)
        np.testing.assert_array_equal(got.ids, one.ids)
        np.testing.assert_array_equal(got.heads, one.heads)
    with pytest.raises(vstore.InvalidInputError, match="2 input dicts for 9 users"):
        snap.query_batch(key, users, cands, 10, three_tower=per_user[:2])
    with pytest.raises(vstore.InvalidInputError, match="2 lists for 9 users"):
        snap.query_batch(key, users, cands[:2], 10)
    with pytest.raises(vstore.InvalidInputError, match="three-tower"):
        snap.query(key, user, ids, 5, heads=True)


def test_profile_columns_are_checked(tmp_path):
    case = load("three_tower")
    w, _ = build(tmp_path / "s", case)
    new = np.array([10**12, 10**12 + 1], np.uint64)
    vec = np.zeros((2, case["schema"]["embedding"]["dim"]), np.float32)
    with pytest.raises(vstore.InvalidInputError, match=r'"category", row 1: -3'):
        w.begin().add_items(new, embeddings={"prerank@v1": vec}, profile={"category": [1, -3]})
    with pytest.raises(vstore.InvalidInputError, match=r'"category", row 0: 1.5'):
        w.begin().add_items(new, embeddings={"prerank@v1": vec}, profile={"category": [1.5, 2]})
    with pytest.raises(vstore.NoSuchColumnError, match="colour"):
        w.begin().add_items(new, embeddings={"prerank@v1": vec}, profile={"colour": [1, 2]})
    with pytest.raises(vstore.InvalidInputError, match="3 rows for 2 ids"):
        w.begin().add_items(new, embeddings={"prerank@v1": vec}, stats={"ctr_1d": [0.1, 0.2, 0.3]})


def test_a_second_embedding_version(tmp_path):
    case = load("three_tower")
    w, _ = build(tmp_path / "s", case)
    ids = np.array(case["items"]["ids"], np.uint64)
    vecs = np.random.default_rng(5).standard_normal((len(ids), 4)).astype(np.float16)
    with w.begin() as tx:
        tx.add_embedding("prerank", "v2", "f16", ids, vecs)
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    assert snap.inspect()["embeddings"]["prerank@v2"] == {"dim": 4, "dtype": "f16"}
    user = np.ones(4, np.float32)
    r = snap.query("prerank@v2", user, ids, 5)
    want = np.argsort(-(vecs.astype(np.float64) @ np.ones(4)), kind="stable")[:5]
    np.testing.assert_allclose(r.scores, (vecs.astype(np.float64) @ np.ones(4))[want], rtol=1e-3)


def test_timings_budget_feature_log_and_shared_batches(tmp_path):
    case = load("three_tower")
    snap, key = build_with_first_bundle(tmp_path / "s", case)
    q = case["cases"][0]["queries"][3]
    user = np.array(q["user"], np.float32)
    cands = np.array(q["candidates"], np.uint64)
    k = q["k"]
    exp = q["expected"]
    # The feature log holds the reference's intermediate values.
    r = snap.query(key, user, cands, k, three_tower=inputs(q), log_features=True, heads=True)
    np.testing.assert_array_equal(r.ids, np.array(exp["ids"], np.uint64))
    f = r.features
    assert [n for n, _ in f["inputs"]][0] == "ctr_1d"
    assert f["cross_inputs"].shape == (len(r.ids), sum(w for _, w in f["inputs"]))
    np.testing.assert_allclose(f["cross_inputs"], np.array(exp["features"]["cross_inputs"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f["head_logits"], np.array(exp["features"]["logits"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(f["heads"], r.heads)
    np.testing.assert_array_equal(f["scores"], r.scores)
    assert snap.query(key, user, cands, k, three_tower=inputs(q)).features is None
    # Timings in seconds per stage, the total the query's own time.
    t = r.timings
    assert set(t) == {"prepare", "resolve", "gather", "cross", "upper", "heads", "rescore", "topk", "total"}
    assert t["total"] == r.query_seconds and t["gather"] > 0 and t["total"] >= t["upper"]
    assert r.multiply_adds > 0
    # A budget: the first 10 found candidates in the given order are scored.
    b = snap.query(key, user, cands, k, three_tower=inputs(q), max_items=10)
    found = [c for c in dict.fromkeys(cands.tolist()) if c not in set(exp["not_found"])]
    assert b.scored == 10 and b.over_budget == len(found) - 10
    np.testing.assert_array_equal(b.over_budget_ids, np.array(found[10:], np.uint64))
    first = snap.query(key, user, np.array(found[:10], np.uint64), k, three_tower=inputs(q))
    np.testing.assert_array_equal(b.ids, first.ids)
    per = r.multiply_adds // r.scored
    m = snap.query(key, user, cands, k, three_tower=inputs(q), max_multiply_adds=per * 10)
    np.testing.assert_array_equal(m.ids, b.ids)
    with pytest.raises(vstore.InvalidInputError, match="one budget"):
        snap.query(key, user, cands, k, three_tower=inputs(q), max_items=1, max_multiply_adds=1)
    with pytest.raises(vstore.InvalidInputError, match="log_features"):
        snap.query(key, user, cands, k, log_features=True)
    # Shared candidates in a batch: each result is the query's own.
    rng = np.random.default_rng(5)
    dim = case["schema"]["embedding"]["dim"]
    for workers in (1, 2):
        for three in (None, inputs(q)):
            # A two-tower query's user is an item-space vector.
            users = rng.standard_normal((7, dim if three is None else len(user))).astype(np.float32)
            batch = snap.query_batch(key, users, cands, 5, workers=workers, three_tower=three, max_items=40)
            assert len(batch) == 7
            for u, got in zip(users, batch):
                one = snap.query(key, u, cands, 5, three_tower=three, max_items=40)
                np.testing.assert_array_equal(got.ids, one.ids)
                np.testing.assert_array_equal(got.scores, one.scores)
                np.testing.assert_array_equal(got.over_budget_ids, one.over_budget_ids)
