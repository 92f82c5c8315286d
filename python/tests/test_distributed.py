"""Distributed builds on a Dask local cluster (2 worker processes): 8
partitions give the store one writer builds from the same rows; a killed
worker leaves the published store byte-identical and the retried job
succeeds; two commits on one base: one wins; a retried commit is
idempotent; overlapping ids are refused naming them. Ray and Spark run the
same build where they are installed (else the test says why it skips)."""

import os
import sys
import threading

import numpy as np
import pytest

import vstore
from vstore import distributed as vd

DIM = 16
KEY = "prerank@v7"
N = 4000
PARTS = 8

dask = pytest.importorskip("dask", reason="dask is not installed (python/requirements-test.txt has it)")
pytest.importorskip("distributed", reason="dask.distributed is not installed")
import cloudpickle  # noqa: E402  (a dependency of dask.distributed)
from distributed import Client, LocalCluster  # noqa: E402

# Workers unpickle this module's functions by value (they cannot import it).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def schema():
    return (vstore.Schema().embedding("prerank", "v7", DIM, "f16")
            .categorical("category").numeric("price", -1.0).stat("ctr", 0.0))


def data(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**12, size=N, replace=False).astype(np.uint64)
    vecs = rng.standard_normal((N, DIM)).astype(np.float16)
    cats = (ids % 11).astype(np.uint32)
    price = rng.uniform(0, 100, N).astype(np.float32)
    ctr = rng.uniform(0, 1, N).astype(np.float32)
    return ids, vecs, cats, price, ctr


def partition(i, parts=PARTS, seed=0):
    """Part i of the data as a dict of arrays."""
    ids, vecs, cats, price, ctr = data(seed)
    sl = slice(i, None, parts)
    return {"id": ids[sl], KEY: vecs[sl], "category": cats[sl], "price": price[sl], "ctr": ctr[sl]}


def frame(i, parts=PARTS):
    """Part i as a pandas DataFrame with one vector per row."""
    import pandas as pd

    p = partition(i, parts)
    df = pd.DataFrame({k: v for k, v in p.items() if k != KEY})
    df["vec"] = list(p[KEY])
    return df


def single_writer(path):
    ids, vecs, cats, price, ctr = data()
    w = vstore.create(str(path), schema())
    with w.begin() as tx:
        tx.add_items(ids, embeddings={KEY: vecs}, profile={"category": cats, "price": price},
                     stats={"ctr": ctr})
    return ids


def assert_same_answers(a, b):
    sa, sb = vstore.open(str(a)).snapshot(), vstore.open(str(b)).snapshot()
    assert len(sa) == len(sb) == N
    ids, *_ = data()
    rng = np.random.default_rng(5)
    for _ in range(4):
        user = rng.standard_normal(DIM).astype(np.float32)
        cands = rng.choice(ids, 1500, replace=False)
        ra = sa.query(KEY, user, cands, 100)
        rb = sb.query(KEY, user, cands, 100)
        np.testing.assert_array_equal(ra.ids, rb.ids)
        np.testing.assert_array_equal(ra.scores, rb.scores)
        fa = sa.query(KEY, user, cands, 50, filter=vstore.Filter.is_in("category", [1, 2]))
        fb = sb.query(KEY, user, cands, 50, filter=vstore.Filter.is_in("category", [1, 2]))
        np.testing.assert_array_equal(fa.ids, fb.ids)


def manifests(path):
    return sum(n.startswith("MANIFEST-") for n in os.listdir(path))


def published_bytes(path):
    out = {}
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        if os.path.isfile(p) and name != "LOCK":
            with open(p, "rb") as f:
                out[name] = f.read()
    return out


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def test_dask_build_of_8_partitions_answers_as_one_writer(tmp_path, client):
    single_writer(tmp_path / "one")
    parts = [dask.delayed(partition)(i) for i in range(PARTS)]
    n = vd.build_dask(str(tmp_path / "dist"), "job-1", parts, schema=schema(), client=client)
    snap = vstore.open(str(tmp_path / "dist")).snapshot()
    assert snap.number == n and snap.metadata()["vstore.job"] == "job-1"
    assert snap.inspect()["segments"] == PARTS
    assert_same_answers(tmp_path / "one", tmp_path / "dist")
    assert not os.path.exists(tmp_path / "dist" / "_staging" / "job-1")
    # Run again: the job was published, so the same snapshot comes back.
    assert vd.build_dask(str(tmp_path / "dist"), "job-1", parts, client=client) == n
    assert manifests(tmp_path / "dist") == 1


def test_dask_dataframe_with_vector_column(tmp_path, client):
    import pandas as pd
    import dask.dataframe as dd

    single_writer(tmp_path / "one")
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(pd.concat([frame(i) for i in range(PARTS)]), npartitions=PARTS)
        n = vd.build_dask(str(tmp_path / "dist"), "ddf", ddf, schema=schema(), client=client,
                          embeddings={KEY: "vec"})
    assert vstore.open(str(tmp_path / "dist")).snapshot().number == n
    assert_same_answers(tmp_path / "one", tmp_path / "dist")


def kill_or_load(i, marker):
    """Partition i; kills its worker process while the marker file exists."""
    if i == 3 and os.path.exists(marker):
        os._exit(1)
    return partition(i)


def test_a_killed_worker_leaves_the_store_as_it_was_and_the_retry_succeeds(tmp_path):
    path = str(tmp_path / "s")
    single_writer(tmp_path / "one")
    # A published store to build on: parts 0 to 2.
    vd.build_dask(path, "first", [partition(i) for i in range(3)], schema=schema(), client=None)
    before = published_bytes(path)
    marker = str(tmp_path / "kill")
    open(marker, "w").close()
    # Parts 3 to 7 in a second job; the worker loading part 3 dies, and
    # with no retries allowed the job fails.
    parts = [dask.delayed(kill_or_load)(i, marker) for i in range(3, PARTS)]
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as c:
            from distributed.scheduler import KilledWorker

            with pytest.raises(KilledWorker):
                vd.build_dask(path, "second", parts, client=c)
            assert published_bytes(path) == before, "the published store changed"
            assert os.path.exists(os.path.join(path, "_staging", "second", "PLAN.json"))
            # The retried job (same id) resumes its plan and succeeds.
            os.remove(marker)
            parts = [dask.delayed(kill_or_load)(i, marker) for i in range(3, PARTS)]
            n = vd.build_dask(path, "second", parts, client=c)
    snap = vstore.open(path).snapshot()
    assert snap.number == n and len(snap) == N
    assert_same_answers(tmp_path / "one", path)


def test_two_commits_on_one_base_exactly_one_wins(tmp_path):
    path = str(tmp_path / "s")
    w = vstore.create(path, schema())
    pa, pb = w.plan_build("a", 2), w.plan_build("b", 2)
    del w
    ra = [vd.stage_frame(pa, i, partition(i, 4)) for i in range(2)]
    rb = [vd.stage_frame(pb, i, partition(i + 2, 4)) for i in range(2)]
    results = [None, None]

    def go(k, p, r):
        try:
            results[k] = vstore.commit_build(path, p, r)
        except vstore.VstoreError as e:
            results[k] = e

    ts = [threading.Thread(target=go, args=(0, pa, ra)), threading.Thread(target=go, args=(1, pb, rb))]
    [t.start() for t in ts]
    [t.join() for t in ts]
    won = [r for r in results if isinstance(r, int)]
    lost = [r for r in results if isinstance(r, vstore.ConflictError)]
    assert len(won) == 1 and len(lost) == 1, results
    assert "rebase" in str(lost[0])
    loser = (pa, ra) if isinstance(results[0], vstore.ConflictError) else (pb, rb)
    # A retried commit of the winner is idempotent; the loser rebases.
    winner = (pb, rb) if loser[0] is pa else (pa, ra)
    assert vstore.commit_build(path, *winner) == won[0]
    n = vstore.commit_build(path, *loser, rebase=True)
    assert n > won[0] and len(vstore.open(path).snapshot()) == N


def test_overlapping_ids_are_refused_naming_them(tmp_path):
    path = str(tmp_path / "s")
    p = vd.plan(path, "dup", 2, schema())
    a, b = partition(0, 2), partition(1, 2)
    b["id"] = b["id"].copy()
    b["id"][:3] = a["id"][:3]
    r = [vd.stage_frame(p, 0, a), vd.stage_frame(p, 1, b)]
    with pytest.raises(vstore.DuplicateIdError) as e:
        vd.commit(path, p, r)
    for i in a["id"][:3]:
        assert f"{int(i)} (parts 0 and 1)" in str(e.value)
    assert not any(n.startswith("MANIFEST-") for n in os.listdir(path))
    vd.abort(path, "dup")
    assert not os.path.exists(os.path.join(path, "_staging", "dup"))


def test_aborted_and_half_planned_jobs_leave_nothing_behind(tmp_path):
    path = str(tmp_path / "s")
    # A job planned on a new store and aborted leaves only the lock file
    # (an empty `_staging` once stayed, and `vstore-tool build` refused it).
    vd.plan(path, "first", 2, schema())
    vd.abort(path, "first")
    assert os.listdir(path) == ["LOCK"]
    # What a plan stopped by a full disk leaves (no PLAN.json): abort
    # removes it (it once failed reading the plan), and so does planning
    # the job again.
    for fix in ("abort", "plan"):
        jd = os.path.join(path, "_staging", "nightly")
        os.makedirs(jd)
        with open(os.path.join(jd, "PLAN.json.tmp"), "wb") as f:
            f.write(b'{"format": "vstore.bu')
        if fix == "abort":
            vd.abort(path, "nightly")
            assert os.listdir(path) == ["LOCK"]
        else:
            p = vd.plan(path, "nightly", 2, schema())
            r = [vd.stage_frame(p, i, partition(i, 2)) for i in range(2)]
            assert vd.commit(path, p, r) >= 1
            assert len(vstore.open(path).snapshot()) == N
            assert not os.path.exists(os.path.join(path, "_staging"))
    with pytest.raises(vstore.InvalidInputError, match="not staged.*nothing to abort"):
        vd.abort(path, "never-planned")
    with pytest.raises(vstore.InvalidInputError, match="published as snapshot"):
        vd.abort(path, "nightly")
    with pytest.raises(vstore.InvalidInputError, match="job id"):
        vd.abort(path, "../x")


def test_ray_build_where_installed(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[data]' to run this test)")
    single_writer(tmp_path / "one")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        n = vd.build_ray(str(tmp_path / "r"), "ray-1", [partition(i) for i in range(PARTS)], schema=schema())
    finally:
        ray.shutdown()
    assert vstore.open(str(tmp_path / "r")).snapshot().number == n
    assert_same_answers(tmp_path / "one", tmp_path / "r")


def test_spark_build_where_installed(tmp_path):
    pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (pip install pyspark; needs Java 17)")
    from pyspark.sql import SparkSession

    single_writer(tmp_path / "one")
    # Spark's Python workers run this interpreter (the one vstore is in).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master("local[2]").appName("vstore-test")
             .config("spark.ui.enabled", "false").getOrCreate())
    try:
        import pandas as pd

        pdf = pd.concat([frame(i) for i in range(PARTS)])
        pdf["vec"] = [v.astype(np.float32).tolist() for v in pdf["vec"]]
        pdf["id"] = pdf["id"].astype(np.int64)
        df = spark.createDataFrame(pdf).repartition(PARTS)
        n = vd.build_spark(str(tmp_path / "sp"), "spark-1", df, schema=schema(), embeddings={KEY: "vec"})
    finally:
        spark.stop()
    assert vstore.open(str(tmp_path / "sp")).snapshot().number == n
    assert_same_answers(tmp_path / "one", tmp_path / "sp")
