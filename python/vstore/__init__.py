"""vstore: an embedded, memory-mapped, versioned store for the pre-rank
stage of recommender systems (Python bindings of the Rust crate).

Reading::

    import vstore
    store = vstore.open("store")
    snap = store.snapshot()
    r = snap.query("prerank@v42", user, candidates, k=500)
    r.ids, r.scores, r.not_found

Writing::

    schema = vstore.Schema().embedding("prerank", "v42", 64, "f16").categorical("category")
    writer = vstore.create("store", schema)
    with writer.begin() as tx:
        tx.add_items(ids, embeddings={"prerank@v42": vectors}, categorical={"category": cats})

Every error is a subclass of :class:`VstoreError`, one class per kind, with
the library's message (the file, field, row or id).
"""

from ._vstore import (  # noqa: F401
    FORMAT_VERSION,
    BuildPlan,
    BuildReceipt,
    BundleError,
    CompactedSegment,
    CompactionJob,
    Filter,
    CompactionConflictError,
    ConflictError,
    CorruptError,
    DamagedManifestError,
    DamagedManifestWarning,
    DuplicateIdError,
    InvalidInputError,
    IoError,
    LockedError,
    ModelChoiceError,
    NoModelError,
    NoSuchColumnError,
    NotAStoreError,
    PoisonedError,
    QueryResult,
    ReplacedItemsWarning,
    Schema,
    SchemaError,
    Snapshot,
    Store,
    Transaction,
    UnknownIdError,
    UnsupportedFormatError,
    VersionSkewError,
    VstoreError,
    Writer,
    abort_build,
    abort_job,
    check_bundle,
    commit_build,
    create,
    kernel_level,
    open,
    published_build,
    stage,
)

from . import bundle  # noqa: E402,F401
from . import distributed  # noqa: E402,F401

__all__ = [
    "FORMAT_VERSION",
    "BuildPlan",
    "BuildReceipt",
    "BundleError",
    "CompactedSegment",
    "CompactionJob",
    "Filter",
    "CompactionConflictError",
    "ConflictError",
    "CorruptError",
    "DamagedManifestError",
    "DamagedManifestWarning",
    "DuplicateIdError",
    "InvalidInputError",
    "IoError",
    "LockedError",
    "ModelChoiceError",
    "NoModelError",
    "NoSuchColumnError",
    "NotAStoreError",
    "PoisonedError",
    "QueryResult",
    "ReplacedItemsWarning",
    "Schema",
    "SchemaError",
    "Snapshot",
    "Store",
    "Transaction",
    "UnknownIdError",
    "UnsupportedFormatError",
    "VersionSkewError",
    "VstoreError",
    "Writer",
    "abort_build",
    "abort_job",
    "bundle",
    "check_bundle",
    "commit_build",
    "create",
    "distributed",
    "kernel_level",
    "open",
    "published_build",
    "stage",
]
