"""Distributed builds: workers of Dask, Ray or Spark write segments, one
commit publishes them.

The protocol (the same as the crate's ``vstore::stage`` / ``commit_build``):

1. the driver plans a job: ``plan = vstore.distributed.plan(path, "nightly-2026-12-06",
   parts=8)`` reserves a segment id per part and fixes the snapshot it builds on;
2. each worker stages its part: ``receipt = vstore.distributed.stage_frame(plan, i, frame)``
   writes the part's files into ``<store>/_staging/<job>/`` (no lock, any host that
   sees the directory) and returns a small receipt;
3. the driver commits once: ``vstore.distributed.commit(path, plan, receipts)`` checks
   every receipt against its files and the ids against each other and the store,
   moves the files in and publishes one snapshot. Retried, it returns the same
   snapshot; if another writer published meanwhile it raises ``ConflictError``
   (pass ``rebase=True`` to build on the newest snapshot).

``build_dask``, ``build_ray`` and ``build_spark`` run the three steps on an engine:
a DataFrame (or a list of partitions) in, the published snapshot's number out.
Running one again with the same job id resumes it (a staged job) or returns the
snapshot it published.

A partition is a pandas DataFrame, a pyarrow Table or a dict of numpy arrays
with an id column (``id_column``, default ``"id"``), the schema's profile and
statistics columns (missing ones take their defaults), and one column per
embedding version: named as the version (``"prerank@v42"``) or mapped by
``embeddings={"prerank@v42": "vec"}``, holding a 2-D array (dict) or one
vector per row (DataFrame). A version left out is computed by its item tower in
the base snapshot. A partition with no rows stages an empty part.

The ids must be integers: unsigned, or signed with no negative value (pandas'
and pyarrow's int64 are fine); a float id column (as pandas makes of an integer
column with missing values), a negative id or a missing one is refused, naming
the part, the column, the row and the value. A column the schema does not name
(a misspelt ``"categry"``) is refused too, naming it, rather than left out
while its items take the default: list the columns a frame carries that are
not for the store (a Spark frame's partition columns, a label) in
``ignore=[...]``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ._vstore import (
    abort_job,
    BuildPlan,
    BuildReceipt,
    InvalidInputError,
    Schema,
    Writer,
    commit_build,
    create,
    published_build,
    stage,
)

__all__ = [
    "BuildPlan",
    "BuildReceipt",
    "plan",
    "stage_frame",
    "commit",
    "abort",
    "build_dask",
    "build_ray",
    "build_spark",
]


def _is_store(path) -> bool:
    import os

    return os.path.isdir(path) and any(n.startswith("MANIFEST-") for n in os.listdir(path))


def plan(path, job: str, parts: int, schema: Optional[Schema] = None) -> BuildPlan:
    """Plans job ``job`` of ``parts`` parts on the store at ``path`` (created
    with ``schema`` if it holds no store yet). A job staged already is resumed:
    its plan is returned if it has the same number of parts."""
    import os

    if os.path.exists(os.path.join(path, "_staging", job, "PLAN.json")):
        p = BuildPlan.load(path, job)
        if p.parts != parts:
            raise InvalidInputError(
                f"job {job} is staged with {p.parts} parts, not {parts}; abort it "
                f"(vstore.distributed.abort) or use another job id"
            )
        return p
    if _is_store(path):
        w = Writer.open(path)
    elif schema is not None:
        w = create(path, schema)
    else:
        raise InvalidInputError(f"{path} holds no store: pass schema= to create it")
    with w:
        return w.plan_build(job, parts)


def _columns(frame) -> dict:
    """A partition as a dict of column name to numpy array (or, for a
    DataFrame's vector column, an object array of vectors)."""
    if isinstance(frame, Mapping):
        return {k: np.asarray(v) if not isinstance(v, np.ndarray) else v for k, v in frame.items()}
    if hasattr(frame, "to_pandas") and not hasattr(frame, "iloc"):
        frame = frame.to_pandas()
    if hasattr(frame, "iloc"):
        return {c: frame[c].to_numpy() for c in frame.columns}
    raise InvalidInputError(
        f"a partition must be a pandas DataFrame, a pyarrow Table or a dict of arrays, "
        f"not {type(frame).__name__}"
    )


def _ids(col, id_column: str, part: int) -> np.ndarray:
    """The id column as uint64, or an ``InvalidInputError`` naming the part,
    the column and the first bad row and value (floats, negative or missing
    ids, anything not an integer)."""
    where = f"part {part}: id column {id_column!r}"
    a = np.asarray(col)
    if a.ndim != 1:
        raise InvalidInputError(f"{where}: expected one id per row, got shape {a.shape}")
    if len(a) == 0:
        return np.zeros(0, dtype=np.uint64)
    kind = a.dtype.kind
    if kind == "u":
        return np.ascontiguousarray(a, dtype=np.uint64)
    if kind == "i":
        neg = np.flatnonzero(a < 0)
        if len(neg):
            i = int(neg[0])
            raise InvalidInputError(f"{where}, row {i}: id {a[i]} is negative (ids are unsigned)")
        return np.ascontiguousarray(a, dtype=np.uint64)
    if kind == "f":
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(a) | (a != np.floor(a)) | (a < 0) | (a >= 2.0**64))
        i = int(bad[0]) if len(bad) else 0
        what = "missing id" if np.isnan(a[i]) else f"id {float(a[i])!r}"
        raise InvalidInputError(
            f"{where} holds floats ({a.dtype}); ids are integers (row {i}: {what}); cast the column "
            f"to an integer type (missing ids are refused)"
        )
    if kind == "O":
        out = np.empty(len(a), dtype=np.uint64)
        for i, v in enumerate(a):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                what = "missing id" if v is None or v != v else f"{v!r} is not an integer id"
                raise InvalidInputError(f"{where}, row {i}: {what}")
            if v < 0:
                raise InvalidInputError(f"{where}, row {i}: id {v} is negative (ids are unsigned)")
            if v > np.iinfo(np.uint64).max:
                raise InvalidInputError(f"{where}, row {i}: id {v} is above 2^64-1")
            out[i] = v
        return out
    raise InvalidInputError(f"{where} holds {a.dtype}, not integer ids (row 0: {a[0]!r})")


def _matrix(col: np.ndarray, key: str, where: str) -> np.ndarray:
    """One vector per row as a 2-D float array: float16 only if every row
    is float16 (float16 converts exactly), else float32, so that no row is
    rounded to another row's narrower type. A missing row, a row that is
    not a 1-D vector of numbers, or rows of different lengths are refused
    naming the row."""
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if col.dtype == object:
        rows = []
        for i, v in enumerate(col):
            if v is None or (isinstance(v, float) and v != v):
                raise InvalidInputError(f"{where}, embedding {key}, row {i}: missing vector "
                                        "(every item needs one for each version it is given)")
            a = np.asarray(v)
            if a.ndim != 1 or a.dtype.kind not in "fiu":
                raise InvalidInputError(f"{where}, embedding {key}, row {i}: expected a vector of "
                                        f"numbers, got {a.dtype} of shape {a.shape}")
            if rows and len(a) != len(rows[0]):
                raise InvalidInputError(f"{where}, embedding {key}, row {i}: {len(a)} values, but "
                                        f"row 0 has {len(rows[0])}")
            rows.append(a)
        half = all(r.dtype == np.float16 for r in rows)
        return np.stack(rows).astype(np.float16 if half else np.float32, copy=False)
    if col.ndim != 2:
        raise InvalidInputError(f"{where}, embedding {key}: expected one vector per row, got shape "
                                f"{col.shape}")
    return col


def stage_frame(
    plan: BuildPlan,
    part: int,
    frame,
    *,
    id_column: str = "id",
    embeddings: Optional[Mapping[str, str]] = None,
    ignore: Iterable[str] = (),
) -> BuildReceipt:
    """Stages part ``part`` of ``plan`` from one partition (see the module
    docstring for its columns); returns the receipt for :func:`commit`.

    Raises ``InvalidInputError`` for an id column that is not integers
    (naming the row and value) and for a column that is neither the id
    column, a schema column, an embedding version (or mapped to one by
    ``embeddings``) nor listed in ``ignore`` (columns to leave out)."""
    cols = _columns(frame)
    if id_column not in cols:
        raise InvalidInputError(f"part {part}: no id column {id_column!r} (columns: {sorted(cols)})")
    ids = _ids(cols[id_column], id_column, part)
    wanted = dict(embeddings or {})
    vectors = {}
    used = {id_column, *plan.profile_columns, *plan.stats_columns}
    for key in plan.embedding_keys:
        name = wanted.pop(key, key)
        used.add(name)
        if name in cols:
            vectors[key] = _matrix(cols[name], key, f"part {part}")
    if wanted:
        raise InvalidInputError(f"embeddings {sorted(wanted)} are not versions of the plan's schema")
    used.update(ignore)
    unknown = [c for c in cols if c not in used]
    if unknown:
        raise InvalidInputError(
            f"part {part}: columns {unknown} are not in the schema (profile: {plan.profile_columns}, "
            f"statistics: {plan.stats_columns}, embeddings: {plan.embedding_keys}, id: {id_column!r}); "
            f"pass ignore={unknown!r} to leave them out"
        )
    profile = {c: cols[c] for c in plan.profile_columns if c in cols}
    stats = {c: cols[c] for c in plan.stats_columns if c in cols}
    return stage(plan, part, ids, embeddings=vectors, profile=profile, stats=stats)


def commit(path, plan: BuildPlan, receipts: Iterable[BuildReceipt], *, rebase: bool = False,
           compact: bool = False, lock_timeout: float = 60.0) -> int:
    """Commits the job (see the module docstring); returns the snapshot number."""
    return commit_build(path, plan, list(receipts), rebase=rebase, compact=compact,
                        lock_timeout=lock_timeout)


def abort(path, job: str) -> None:
    """Discards staged job ``job`` (refused if it was published). A job whose
    plan failed before it was written whole (a full disk, a kill: its
    directory holds no ``PLAN.json``) is removed too, under the writer lock;
    no worker can hold it."""
    abort_job(path, job)


def _run(path, job, nparts, schema, stage_all: Callable[[BuildPlan], Sequence[BuildReceipt]],
         rebase, compact) -> int:
    done = published_build(path, job)
    if done is not None:
        return done
    p = plan(path, job, nparts, schema)
    receipts = stage_all(p)
    return commit(path, p, receipts, rebase=rebase, compact=compact)


def _stage_task(plan_json: str, part: int, frame, id_column: str, embeddings, ignore=()) -> str:
    return stage_frame(BuildPlan.from_json(plan_json), part, frame, id_column=id_column,
                       embeddings=embeddings, ignore=ignore).to_json()


def build_dask(path, job: str, partitions, *, schema: Optional[Schema] = None,
               id_column: str = "id", embeddings: Optional[Mapping[str, str]] = None,
               client: Any = None, rebase: bool = False, compact: bool = False,
               ignore: Iterable[str] = ()) -> int:
    """Builds with Dask: ``partitions`` is a dask DataFrame (one part per
    partition) or a list of partitions or ``dask.delayed`` partitions. Runs on
    ``client`` (a ``distributed.Client``) or Dask's default scheduler. Returns
    the published snapshot's number. ``ignore``: columns to leave out (any
    other column the schema does not name is refused, see
    :func:`stage_frame`)."""
    ignore = list(ignore)
    import dask

    parts = partitions.to_delayed() if hasattr(partitions, "to_delayed") else list(partitions)

    def stage_all(p: BuildPlan):
        tasks = [dask.delayed(_stage_task, pure=False)(p.to_json(), i, part, id_column, embeddings,
                                                       ignore)
                 for i, part in enumerate(parts)]
        out = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
        return [BuildReceipt.from_json(r) for r in out]

    return _run(path, job, len(parts), schema, stage_all, rebase, compact)


def build_ray(path, job: str, partitions, *, schema: Optional[Schema] = None,
              id_column: str = "id", embeddings: Optional[Mapping[str, str]] = None,
              rebase: bool = False, compact: bool = False, ignore: Iterable[str] = ()) -> int:
    """Builds with Ray: ``partitions`` is a ``ray.data.Dataset`` (one part per
    block, as pandas) or a list of partitions (or object refs to them); each
    part is a Ray task. Ray must be initialised (``ray.init()``). ``ignore``:
    columns to leave out (see :func:`stage_frame`)."""
    ignore = list(ignore)
    import ray

    if hasattr(partitions, "to_pandas_refs"):
        parts = list(partitions.to_pandas_refs())
    else:
        parts = list(partitions)
    task = ray.remote(_stage_task)

    def stage_all(p: BuildPlan):
        refs = [task.remote(p.to_json(), i, part, id_column, embeddings, ignore)
                for i, part in enumerate(parts)]
        return [BuildReceipt.from_json(r) for r in ray.get(refs)]

    return _run(path, job, len(parts), schema, stage_all, rebase, compact)


def build_spark(path, job: str, df, *, schema: Optional[Schema] = None,
                id_column: str = "id", embeddings: Optional[Mapping[str, str]] = None,
                rebase: bool = False, compact: bool = False, ignore: Iterable[str] = ()) -> int:
    """Builds with Spark: one part per partition of the PySpark DataFrame
    ``df`` (vector columns as ``array<float>``), staged by
    ``mapPartitionsWithIndex`` on the executors. ``ignore``: columns to leave
    out, such as partition columns (see :func:`stage_frame`)."""
    ignore = list(ignore)
    nparts = df.rdd.getNumPartitions()
    columns = list(df.columns)

    def stage_all(p: BuildPlan):
        plan_json = p.to_json()

        def run(i, rows):
            import pandas as pd

            frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
            yield _stage_task(plan_json, i, frame, id_column, embeddings, ignore)

        out = df.rdd.mapPartitionsWithIndex(run).collect()
        return [BuildReceipt.from_json(r) for r in out]

    return _run(path, job, nparts, schema, stage_all, rebase, compact)
