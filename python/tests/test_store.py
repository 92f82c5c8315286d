"""The Python package against numpy references: build, query, errors,
concurrency. Run by `.ci/run` (see python/README.md)."""

import os
import threading

import numpy as np
import pytest

import vstore

DIM = 32


def build(path, n=2000, dtype="f32", seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**9, size=n, replace=False).astype(np.uint64)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    cats = (np.arange(n) % 7).astype(np.uint32)
    schema = vstore.Schema().embedding("prerank", "v1", DIM, dtype).categorical("category")
    w = vstore.create(str(path), schema)
    emb = vecs.astype(np.float16) if dtype == "f16" else vecs
    with w.begin() as tx:
        tx.add_items(ids, embeddings={"prerank@v1": emb}, categorical={"category": cats})
    return w, ids, vecs


def reference(ids, vecs, user, cands, k):
    """Top k by float64 inner product, ties by ascending id."""
    pos = {int(i): j for j, i in enumerate(ids)}
    found = [c for c in dict.fromkeys(int(c) for c in cands) if c in pos]
    scores = np.array([vecs[pos[c]].astype(np.float64) @ user for c in found])
    order = sorted(range(len(found)), key=lambda j: (-scores[j], found[j]))[:k]
    return np.array([found[j] for j in order], dtype=np.uint64), scores[order]


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_query_matches_numpy(tmp_path, dtype):
    _, ids, vecs = build(tmp_path / "s", dtype=dtype)
    if dtype == "f16":
        vecs = vecs.astype(np.float16).astype(np.float32)
    store = vstore.open(str(tmp_path / "s"))
    snap = store.snapshot()
    assert len(snap) == len(ids)
    rng = np.random.default_rng(1)
    for _ in range(5):
        user = rng.standard_normal(DIM).astype(np.float32)
        missing = np.array([7, 11], dtype=np.uint64)  # not in the store
        cands = np.concatenate([rng.choice(ids, 500, replace=False), missing])
        r = snap.query("prerank@v1", user, cands, 50)
        want_ids, want_scores = reference(ids, vecs, user.astype(np.float64), cands, 50)
        assert r.ids.dtype == np.uint64 and r.scores.dtype == np.float32
        np.testing.assert_array_equal(r.ids, want_ids)
        np.testing.assert_allclose(r.scores, want_scores, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(r.not_found, missing)
        assert r.scored == 500 and r.filtered_out == 0 and len(r) == 50
    # A full scan is the reference over every item.
    user = rng.standard_normal(DIM).astype(np.float32)
    r = snap.query("prerank@v1", user, None, 20)
    want_ids, _ = reference(ids, vecs, user.astype(np.float64), ids, 20)
    np.testing.assert_array_equal(r.ids, want_ids)


def test_inspect_verify_and_refresh(tmp_path):
    w, ids, _ = build(tmp_path / "s", n=100)
    store = vstore.open(str(tmp_path / "s"))
    info = store.snapshot().inspect()
    assert info["items"] == 100
    assert info["embeddings"] == {"prerank@v1": {"dim": DIM, "dtype": "f32"}}
    assert info["columns"]["category"] == {"kind": "categorical", "default": 0}
    report = store.verify()
    assert report["files"] > 0 and report["bytes"] > 0
    first = store.snapshot().number
    assert store.refresh() is False
    with w.begin() as tx:
        tx.delete_items(ids[:10])
    assert store.refresh() is True
    assert store.snapshot().number > first and len(store.snapshot()) == 90


def test_a_failed_block_publishes_nothing(tmp_path):
    w, ids, _ = build(tmp_path / "s", n=100)
    store = vstore.open(str(tmp_path / "s"))
    before = store.snapshot().number
    with pytest.raises(RuntimeError):
        with w.begin() as tx:
            tx.delete_items(ids[:10])
            raise RuntimeError("abandon")
    store.refresh()
    assert store.snapshot().number == before and len(store.snapshot()) == 100


def test_every_error_kind_is_its_own_class(tmp_path):
    w, ids, _ = build(tmp_path / "s", n=100)
    user = np.zeros(DIM, dtype=np.float32)
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    with pytest.raises(vstore.VersionSkewError, match="prerank@v2"):
        snap.query("prerank@v2", user, ids, 5)
    with pytest.raises(vstore.IoError, match="nothing-here"):
        vstore.open(str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(vstore.NotAStoreError, match="empty"):
        vstore.open(str(tmp_path / "empty"))
    with pytest.raises(vstore.LockedError):
        vstore.Writer.open(str(tmp_path / "s"))
    with pytest.raises(vstore.DuplicateIdError, match=str(int(ids[0]))):
        with w.begin() as tx:
            tx.add_items(ids[:1], embeddings={"prerank@v1": np.zeros((1, DIM), np.float32)})
    with pytest.raises(vstore.InvalidInputError, match="2 rows for 3 ids"):
        w.begin().add_items(
            np.array([1, 2, 3], np.uint64),
            embeddings={"prerank@v1": np.zeros((2, DIM), np.float32)},
        )
    tx = w.begin()
    tx.commit()
    with pytest.raises(vstore.InvalidInputError, match="already committed"):
        tx.commit()
    with pytest.raises(vstore.InvalidInputError, match="f64"):
        vstore.Schema().embedding("prerank", "v1", DIM, "f64")
    with pytest.raises(vstore.SchemaError, match="declared twice"):
        vstore.create(str(tmp_path / "t"), vstore.Schema().categorical("a").categorical("a"))
    # Every class is a VstoreError.
    for name in vstore.__all__:
        obj = getattr(vstore, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, vstore.VstoreError), name


def test_a_damaged_file_is_named(tmp_path):
    build(tmp_path / "s", n=100)
    store = vstore.open(str(tmp_path / "s"))
    victims = [f for f in os.listdir(tmp_path / "s") if "-emb-" in f]
    assert victims, os.listdir(tmp_path / "s")
    path = tmp_path / "s" / victims[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    # Rewriting a file truncates it first: never under a reader that maps
    # it (its background prefault would read past the new end: SIGBUS).
    del store
    path.write_bytes(bytes(data))
    store = vstore.open(str(tmp_path / "s"))
    with pytest.raises(vstore.CorruptError, match=victims[0]):
        store.verify()
    # The background prefault checksums what it faulted in: once it has,
    # it reports the damage and the snapshot's queries raise it.
    p = store.wait_prefault()
    assert p["damage"] is not None and victims[0] in p["damage"], p
    assert p["bytes_verified"] > 0, p
    with pytest.raises(vstore.CorruptError, match=victims[0]):
        store.snapshot().query("prerank@v1", np.ones(DIM, np.float32), np.arange(10, dtype=np.uint64), 3)


def test_queries_from_threads_while_the_writer_publishes(tmp_path):
    w, ids, vecs = build(tmp_path / "s", n=3000)
    store = vstore.open(str(tmp_path / "s"))
    errors = []
    stop = threading.Event()

    def reader(seed):
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                store.refresh()
                snap = store.snapshot()
                user = rng.standard_normal(DIM).astype(np.float32)
                cands = rng.choice(ids, 400, replace=False)
                r = snap.query("prerank@v1", user, cands, 10)
                # Deleted ids are reported missing, never scored.
                assert r.scored + len(r.not_found) == 400
                assert np.all(np.diff(r.scores) <= 0)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for i in range(10):
        with w.begin() as tx:
            tx.delete_items(ids[i * 50 : (i + 1) * 50])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(vstore.open(str(tmp_path / "s")).snapshot()) == 3000 - 500


def test_compaction_and_gc(tmp_path):
    w, ids, vecs = build(tmp_path / "s", n=600)
    rng = np.random.default_rng(4)
    extra = np.arange(1, 201, dtype=np.uint64)  # ids below the build's (>= 0)
    extra = extra[~np.isin(extra, ids)]
    with w.begin() as tx:
        tx.add_items(extra, embeddings={"prerank@v1": rng.standard_normal((len(extra), DIM)).astype(np.float32)})
    with w.begin() as tx:
        tx.delete_items(ids[:100])
    store = vstore.open(str(tmp_path / "s"))
    assert store.snapshot().inspect()["segments"] == 2
    user = rng.standard_normal(DIM).astype(np.float32)
    cands = np.concatenate([ids, extra])
    before = store.snapshot().query("prerank@v1", user, cands, 50)
    # A policy that is not due leaves the segments; a plain compact merges.
    with w.begin() as tx:
        tx.compact(max_segments=8, max_dead_fraction=0.5)
    store.refresh()
    assert store.snapshot().inspect()["segments"] == 2
    with w.begin() as tx:
        tx.compact()
    store.refresh()
    snap = store.snapshot()
    assert snap.inspect()["segments"] == 1 and len(snap) == 600 - 100 + len(extra)
    after = snap.query("prerank@v1", user, cands, 50)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)
    # gc keeps the newest snapshot only and removes the files of the others.
    w.set_retention(1, 0.0)
    report = w.gc()
    assert report["kept"] == [snap.number]
    assert len(report["removed_snapshots"]) >= 3 and report["removed_files"]
    np.testing.assert_array_equal(
        vstore.open(str(tmp_path / "s")).snapshot().query("prerank@v1", user, cands, 50).ids, before.ids
    )
    with pytest.raises(vstore.InvalidInputError, match="grace_seconds"):
        w.set_retention(1, -1.0)


def test_the_remaining_error_kinds_and_metadata(tmp_path):
    d = str(tmp_path / "s")
    w = vstore.create(d, vstore.Schema().embedding("prerank", "v1", 4, "f32").stat("ctr", 0.0))
    with w.begin() as tx:
        tx.add_items(np.array([1, 2, 3], np.uint64), embeddings={"prerank@v1": np.ones((3, 4), np.float32)})
        tx.set_metadata("job", "nightly-42")
    assert vstore.open(d).snapshot().metadata() == {"job": "nightly-42"}
    tx = w.begin()
    tx.update_stats(np.array([99], np.uint64), {"ctr": [0.5]})
    with pytest.raises(vstore.UnknownIdError, match="99"):
        tx.commit()
    snap = vstore.open(d).snapshot()
    with pytest.raises(vstore.NoModelError, match="prerank@v1"):
        snap.query("prerank@v1", np.ones(4, np.float32), np.array([1], np.uint64), 1, three_tower={})
    with w.begin() as tx:
        tx.remove_metadata("job")
    del tx, w  # releases the writer's lock
    import gc

    gc.collect()
    manifests = sorted(f for f in os.listdir(d) if f.startswith("MANIFEST"))
    newest = os.path.join(d, manifests[-1])
    data = bytearray(open(newest, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(newest, "wb").write(bytes(data))
    with pytest.raises(vstore.DamagedManifestError, match=manifests[-1]):
        vstore.Writer.open(d)
    data[len(data) // 2] ^= 0xFF  # repaired
    # A manifest from a newer format (header and footer agree on version 99).
    data[8:12] = (99).to_bytes(4, "little")
    data[len(data) - 16 : len(data) - 12] = (99).to_bytes(4, "little")
    open(newest, "wb").write(bytes(data))
    with pytest.raises(vstore.UnsupportedFormatError, match="version 99"):
        vstore.Writer.open(d)


def test_a_background_compaction_and_a_conflicting_one(tmp_path):
    w, ids, vecs = build(tmp_path / "s", n=400)
    extra = np.arange(1, 101, dtype=np.uint64)
    extra = extra[~np.isin(extra, ids)]
    rng = np.random.default_rng(6)
    with w.begin() as tx:
        tx.add_items(extra, embeddings={"prerank@v1": rng.standard_normal((len(extra), DIM)).astype(np.float32)})
    a, b = w.start_compaction(), w.start_compaction()
    assert a is not None and b is not None and a.base_snapshot == b.base_snapshot
    # The writer goes on publishing while the jobs run.
    with w.begin() as tx:
        tx.delete_items(ids[:50])
    done_a, done_b = a.run(), b.run()
    with pytest.raises(vstore.InvalidInputError, match="already ran"):
        a.run()
    with w.begin() as tx:
        tx.apply_compaction(done_a)
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    assert snap.inspect()["segments"] == 1 and len(snap) == 400 - 50 + len(extra)
    # The deletes made meanwhile hold in the merged segment.
    user = rng.standard_normal(DIM).astype(np.float32)
    r = snap.query("prerank@v1", user, ids[:60], 60)
    assert set(r.not_found.tolist()) == set(ids[:50].tolist()) and len(r.ids) == 10
    # The second job merged the same sources: refused, nothing changes.
    tx = w.begin()
    tx.apply_compaction(done_b)
    with pytest.raises(vstore.CompactionConflictError):
        tx.commit()
    with pytest.raises(vstore.InvalidInputError, match="already applied"):
        w.begin().apply_compaction(done_b)
    assert vstore.open(str(tmp_path / "s")).snapshot().number == snap.number


def test_a_failed_publish_poisons_the_writer(tmp_path):
    d = tmp_path / "s"
    w, ids, vecs = build(d, n=50)
    before = vstore.open(str(d)).snapshot()
    # Something else took the name of the next segment's id file: the
    # publish fails on an I/O error, naming the file...
    stray = d / f"s{before.number + 1:010}-g1-ids.vidx"
    stray.mkdir()
    more = np.arange(1, 11, dtype=np.uint64)
    more = more[~np.isin(more, ids)]
    add = {"prerank@v1": np.ones((len(more), DIM), np.float32)}
    with pytest.raises(vstore.IoError, match=stray.name):
        with w.begin() as tx:
            tx.add_items(more, embeddings=add)
    # ...and the writer refuses everything after it, naming the cause.
    with pytest.raises(vstore.PoisonedError, match="reopen"):
        with w.begin() as tx:
            tx.delete_items(ids[:1])
    with pytest.raises(vstore.PoisonedError):
        w.gc()
    # Nothing was published; a reopened writer carries on.
    assert vstore.open(str(d)).snapshot().number == before.number
    # While it is open (here: still referenced by `w` and `tx`), a new
    # writer is refused as one of this process; close() lets it open.
    with pytest.raises(vstore.LockedError, match="of this process"):
        vstore.Writer.open(str(d))
    w.close()
    stray.rmdir()
    w = vstore.Writer.open(str(d))
    with w.begin() as tx:
        tx.add_items(more, embeddings=add)
    snap = vstore.open(str(d)).snapshot()
    assert snap.number == before.number + 1 and len(snap) == 50 + len(more)


def test_restore_publishes_an_old_snapshot_again(tmp_path):
    w, ids, _ = build(tmp_path / "s", n=100)
    store = vstore.open(str(tmp_path / "s"))
    first = store.snapshot().number
    with w.begin() as tx:
        tx.delete_items(ids[:40])
    store.refresh()
    assert len(store.snapshot()) == 60
    n = w.restore(first)
    store.refresh()
    snap = store.snapshot()
    assert snap.number == n and n > first + 1
    assert len(snap) == 100
    assert snap.metadata()["vstore.restored_from"] == str(first)
    with pytest.raises(vstore.InvalidInputError, match="does not exist"):
        w.restore(12345)


def test_open_options_prefault_and_mlock(tmp_path):
    _, ids, _ = build(tmp_path / "s", n=3000)
    user = np.linspace(-1, 1, DIM).astype(np.float32)
    ids = np.ascontiguousarray(ids[::3])
    off = vstore.open(str(tmp_path / "s"), prefault="off")
    assert off.prefault_progress() is None and off.wait_prefault() is None
    want = off.snapshot().query("prerank@v1", user, ids, 40)
    on = vstore.open(str(tmp_path / "s"))  # background by default
    p = on.wait_prefault()
    assert p["finished"] and not p["stopped"] and p["bytes_done"] == p["bytes_total"] > 0
    assert p["snapshot"] == on.snapshot().number and p["seconds"] >= 0
    got = on.snapshot().query("prerank@v1", user, ids, 40)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    try:
        locked = vstore.open(str(tmp_path / "s"), mlock=True)
        locked.wait_prefault()
        r = locked.snapshot().query("prerank@v1", user, ids, 40)
        np.testing.assert_array_equal(r.ids, want.ids)
    except vstore.IoError as e:
        assert "RLIMIT_MEMLOCK" in str(e)
    with pytest.raises(vstore.InvalidInputError, match="prefault"):
        vstore.open(str(tmp_path / "s"), prefault="eager")


def test_kernel_level_names_the_kernels_and_the_environment_lowers_it():
    import subprocess
    import sys

    levels = ["portable", "avx2", "avxvnni", "avx512", "avx512bf16", "amx"]
    assert vstore.kernel_level() in levels
    code = "import vstore; print(vstore.kernel_level())"
    env = dict(os.environ, VSTORE_KERNEL_LEVEL="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "portable"


def test_close_releases_the_lock_and_refuses_later_calls(tmp_path):
    d = tmp_path / "s"
    w, ids, _ = build(d, n=20)
    tx = w.begin()
    tx.delete_items(ids[:2])
    # A transaction alive keeps the writer (and the lock) alive: before
    # close() existed, `del w` alone left the store locked.
    del w
    with pytest.raises(vstore.LockedError, match="of this process"):
        vstore.Writer.open(str(d))
    tx.rollback()
    del tx
    w = vstore.Writer.open(str(d))
    pending = w.begin()
    pending.delete_items(ids[:1])
    assert not w.closed
    w.close()
    assert w.closed
    w.close()  # twice is fine
    # The lock is free: another process's writer opens the store.
    import subprocess
    import sys

    code = f"import vstore; w = vstore.Writer.open({str(d)!r}); print(w.closed)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    # Every call of the closed writer, and of its transaction, is refused.
    for call in (w.begin, w.gc, lambda: w.restore(1), lambda: w.set_retention(2, 0.0),
                 pending.commit):
        with pytest.raises(vstore.InvalidInputError, match="writer is closed"):
            call()
    assert len(vstore.open(str(d)).snapshot()) == 20
    # A `with` block closes the writer at its end, and on an error too.
    with vstore.Writer.open(str(d)) as w2:
        with w2.begin() as tx:
            tx.delete_items(ids[:1])
    assert w2.closed
    with pytest.raises(RuntimeError):
        with vstore.Writer.open(str(d)) as w3:
            raise RuntimeError("boom")
    assert w3.closed
    assert len(vstore.open(str(d)).snapshot()) == 19
