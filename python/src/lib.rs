//! Python bindings of vstore (the `vstore._vstore` extension module; the
//! Python package `vstore` re-exports it). Built by maturin
//! (`pip install ./python`); outside the Cargo workspace, so the Rust test
//! suite never links libpython.
//!
//! Reading: `open(path)` → [`PyStore`]; `Store.snapshot()` → [`PySnapshot`];
//! `Snapshot.query(...)` → [`PyQueryResult`] with numpy arrays. Queries
//! borrow the numpy inputs in place and run with the GIL released.
//! Writing: `create(path, schema)` / `Writer.open(path)` → [`PyWriter`];
//! `Writer.begin()` → [`PyTransaction`], whose operations run together
//! when it commits (so a `with writer.begin() as tx:` block publishes one
//! snapshot or, on an exception, nothing).
//! Errors: one exception class per `vstore::Error` kind, all subclasses of
//! `VstoreError`, with the library's message.

use std::sync::{Arc, Mutex};

use numpy::{
    IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

pyo3::create_exception!(
    vstore,
    VstoreError,
    PyException,
    "Base class of every vstore error."
);
macro_rules! kinds {
    ($($name:ident: $doc:literal),* $(,)?) => {
        $(pyo3::create_exception!(vstore, $name, VstoreError, $doc);)*
        /// Adds the exception classes to the module.
        fn add_exceptions(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add("VstoreError", m.py().get_type::<VstoreError>())?;
            $(m.add(stringify!($name), m.py().get_type::<$name>())?;)*
            Ok(())
        }
    };
}
kinds!(
    IoError: "A file operation failed (the path is in the message).",
    CorruptError: "A store file failed its checks (checksum, structure).",
    UnsupportedFormatError: "A file was written by a format version this build cannot read.",
    NotAStoreError: "The directory is not a vstore store.",
    DamagedManifestError: "The newest manifest is damaged.",
    LockedError: "Another writer holds the store's lock.",
    VersionSkewError: "The query names a model version the store has no embedding for.",
    NoSuchColumnError: "A column or embedding named in the call does not exist.",
    SchemaError: "The schema is invalid, or the data does not match it.",
    DuplicateIdError: "An id appears twice, or is already in the store.",
    UnknownIdError: "An id the call needs is not in the store.",
    InvalidInputError: "An argument is invalid (the message names it).",
    BundleError: "A model bundle is invalid.",
    NoModelError: "No model bundle for the version.",
    ModelChoiceError: "The bundle or fusion named is not available.",
    CompactionConflictError: "A compaction conflicts with a commit made meanwhile.",
    PoisonedError: "The writer is unusable after an earlier failure.",
);

/// The Python exception for a library error, with its message.
fn err(e: vstore::Error) -> PyErr {
    use vstore::Error as E;
    let msg = e.to_string();
    match e {
        E::Io { .. } => IoError::new_err(msg),
        E::Corrupt { .. } => CorruptError::new_err(msg),
        E::UnsupportedFormat { .. } => UnsupportedFormatError::new_err(msg),
        E::NotAStore { .. } => NotAStoreError::new_err(msg),
        E::DamagedManifest { .. } => DamagedManifestError::new_err(msg),
        E::Locked { .. } => LockedError::new_err(msg),
        E::VersionSkew { .. } => VersionSkewError::new_err(msg),
        E::NoSuchColumn { .. } => NoSuchColumnError::new_err(msg),
        E::Schema(_) => SchemaError::new_err(msg),
        E::DuplicateId { .. } => DuplicateIdError::new_err(msg),
        E::UnknownId { .. } => UnknownIdError::new_err(msg),
        E::InvalidInput(_) => InvalidInputError::new_err(msg),
        E::Bundle { .. } => BundleError::new_err(msg),
        E::NoModel { .. } => NoModelError::new_err(msg),
        E::ModelChoice { .. } => ModelChoiceError::new_err(msg),
        E::CompactionConflict { .. } => CompactionConflictError::new_err(msg),
        E::Poisoned { .. } => PoisonedError::new_err(msg),
        // A kind added to the library later: the base class.
        _ => VstoreError::new_err(msg),
    }
}

/// An `InvalidInputError` naming the argument.
fn invalid(what: impl std::fmt::Display) -> PyErr {
    InvalidInputError::new_err(what.to_string())
}

/// A store opened for reading (`vstore.open(path)`).
#[pyclass(name = "Store", module = "vstore", frozen)]
struct PyStore {
    inner: vstore::Store,
}

#[pymethods]
impl PyStore {
    /// The newest snapshot this handle has seen.
    fn snapshot(&self) -> PySnapshot {
        PySnapshot {
            inner: self.inner.snapshot(),
        }
    }

    /// Moves to the newest published snapshot; True if there was a newer one.
    fn refresh(&self, py: Python<'_>) -> PyResult<bool> {
        py.detach(|| self.inner.refresh()).map_err(err)
    }

    /// Checksums every file of the current snapshot: a dict of what was
    /// checked, or a `CorruptError` naming the damaged file.
    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = py.detach(|| self.inner.verify()).map_err(err)?;
        let d = PyDict::new(py);
        d.set_item("snapshot", r.snapshot)?;
        d.set_item("files", r.files)?;
        d.set_item("bytes", r.bytes)?;
        d.set_item("manifests", r.manifests)?;
        Ok(d)
    }

    /// The store's directory.
    #[getter]
    fn path(&self) -> String {
        self.inner.dir().display().to_string()
    }
}

/// One immutable snapshot of a store.
#[pyclass(name = "Snapshot", module = "vstore", frozen)]
struct PySnapshot {
    inner: Arc<vstore::Snapshot>,
}

/// What a query returns: `ids` (uint64) and `scores` (float32) of the top
/// k, best first; `heads` (float32, `[k, heads]`, or None) and
/// `head_names`; the candidates not found (`not_found`, uint64, input
/// order), the number the filter removed (`filtered_out`), the number
/// scored (`scored`), those whose score was not finite (`non_finite`) and
/// the snapshot that answered.
#[pyclass(name = "QueryResult", module = "vstore", frozen, get_all)]
struct PyQueryResult {
    snapshot: u64,
    ids: Py<PyArray1<u64>>,
    scores: Py<PyArray1<f32>>,
    heads: Option<Py<PyAny>>,
    head_names: Vec<String>,
    not_found: Py<PyArray1<u64>>,
    filtered_out: usize,
    scored: usize,
    non_finite: Py<PyArray1<u64>>,
}

#[pymethods]
impl PyQueryResult {
    fn __len__(&self) -> usize {
        Python::attach(|py| self.ids.bind(py).len())
    }

    fn __repr__(&self) -> String {
        Python::attach(|py| {
            format!(
                "QueryResult(snapshot={}, hits={}, not_found={}, filtered_out={}, scored={})",
                self.snapshot,
                self.ids.bind(py).len(),
                self.not_found.bind(py).len(),
                self.filtered_out,
                self.scored
            )
        })
    }
}

impl PyQueryResult {
    fn new(py: Python<'_>, r: vstore::QueryResult) -> PyResult<Self> {
        let ids: Vec<u64> = r.hits.iter().map(|h| h.id).collect();
        let scores: Vec<f32> = r.hits.iter().map(|h| h.score).collect();
        let heads = if r.head_names.is_empty() {
            None
        } else {
            let nh = r.head_names.len();
            let flat = r.heads.into_pyarray(py);
            Some(flat.reshape([ids.len(), nh])?.into_any().unbind())
        };
        Ok(PyQueryResult {
            snapshot: r.snapshot,
            ids: ids.into_pyarray(py).unbind(),
            scores: scores.into_pyarray(py).unbind(),
            heads,
            head_names: r.head_names,
            not_found: r.not_found.into_pyarray(py).unbind(),
            filtered_out: r.filtered_out,
            scored: r.scored,
            non_finite: r.non_finite.into_pyarray(py).unbind(),
        })
    }
}

#[pymethods]
impl PySnapshot {
    /// The snapshot's number.
    #[getter]
    fn number(&self) -> u64 {
        self.inner.number()
    }

    /// Number of live items.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Scores `candidates` (uint64 ids; None: every item) against `user`
    /// (float32, from the model version `version`, `space@version`) and
    /// returns the best `k`.
    #[pyo3(signature = (version, user, candidates, k))]
    fn query(
        &self,
        py: Python<'_>,
        version: &str,
        user: PyReadonlyArray1<'_, f32>,
        candidates: Option<PyReadonlyArray1<'_, u64>>,
        k: usize,
    ) -> PyResult<PyQueryResult> {
        let user = user
            .as_slice()
            .map_err(|_| invalid("user: the array must be contiguous"))?;
        let ids = match &candidates {
            Some(c) => Some(
                c.as_slice()
                    .map_err(|_| invalid("candidates: the array must be contiguous"))?,
            ),
            None => None,
        };
        let snap = &self.inner;
        let r = py
            .detach(|| {
                let q = match ids {
                    Some(ids) => vstore::Query::ids(version, user, ids, k),
                    None => vstore::Query::full_scan(version, user, k),
                };
                snap.query(&q)
            })
            .map_err(err)?;
        PyQueryResult::new(py, r)
    }

    /// The snapshot's schema and size as a dict: `number`, `items`,
    /// `embeddings` (key → `{dim, dtype}`) and `columns` (name → kind).
    fn inspect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner;
        let d = PyDict::new(py);
        d.set_item("number", s.number())?;
        d.set_item("items", s.len())?;
        let emb = PyDict::new(py);
        for e in &s.schema().embeddings {
            let v = PyDict::new(py);
            v.set_item("dim", e.dim)?;
            v.set_item("dtype", e.dtype.name())?;
            emb.set_item(e.key(), v)?;
        }
        d.set_item("embeddings", emb)?;
        let cols = PyDict::new(py);
        for c in s.schema().profile.iter().chain(&s.schema().stats) {
            cols.set_item(&c.name, format!("{:?}", c.kind).to_lowercase())?;
        }
        d.set_item("columns", cols)?;
        Ok(d)
    }
}

/// Opens the store at `path` for reading.
#[pyfunction]
fn open(py: Python<'_>, path: std::path::PathBuf) -> PyResult<PyStore> {
    let inner = py.detach(|| vstore::Store::open(&path)).map_err(err)?;
    Ok(PyStore { inner })
}

/// A store's schema: embedding versions and profile / stats columns,
/// built by chaining (`Schema().embedding("prerank", "v42", 64, "f16")`).
#[pyclass(name = "Schema", module = "vstore", frozen)]
#[derive(Clone)]
struct PySchema {
    inner: vstore::Schema,
}

#[pymethods]
impl PySchema {
    #[new]
    fn new() -> Self {
        PySchema {
            inner: vstore::Schema::new(),
        }
    }

    /// Adds the embedding version `space@version` of `dim` components
    /// stored as `dtype` (`f32`, `f16`, `bf16` or `i8`).
    fn embedding(&self, space: &str, version: &str, dim: u32, dtype: &str) -> PyResult<Self> {
        let dtype = vstore::Dtype::parse(dtype).map_err(err)?;
        Ok(PySchema {
            inner: self.inner.clone().embedding(space, version, dim, dtype),
        })
    }

    /// Adds a categorical profile column (uint32 codes; `default` for
    /// items that have none).
    #[pyo3(signature = (name, default = 0))]
    fn categorical(&self, name: &str, default: u32) -> Self {
        PySchema {
            inner: self.inner.clone().categorical(name, default),
        }
    }

    /// Adds a numeric profile column (float32).
    #[pyo3(signature = (name, default = 0.0))]
    fn numeric(&self, name: &str, default: f32) -> Self {
        PySchema {
            inner: self.inner.clone().numeric(name, default),
        }
    }

    /// Adds a statistics column (float32, refreshed by `update_stats`).
    #[pyo3(signature = (name, default = 0.0))]
    fn stat(&self, name: &str, default: f32) -> Self {
        PySchema {
            inner: self.inner.clone().stat(name, default),
        }
    }
}

/// The store's one writer (`vstore.create` / `Writer.open`).
#[pyclass(name = "Writer", module = "vstore", frozen)]
struct PyWriter {
    inner: Arc<Mutex<vstore::Writer>>,
}

#[pymethods]
impl PyWriter {
    /// Opens the writer of the existing store at `path` (taking its lock).
    #[staticmethod]
    fn open(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let w = py.detach(|| vstore::Writer::open(&path)).map_err(err)?;
        Ok(PyWriter {
            inner: Arc::new(Mutex::new(w)),
        })
    }

    /// A transaction: its operations run together, and publish one
    /// snapshot, at `commit()` (or at the end of a `with` block).
    fn begin(&self) -> PyTransaction {
        PyTransaction {
            writer: self.inner.clone(),
            ops: Mutex::new(Some(Vec::new())),
        }
    }
}

/// Creates a store at `path` (a new directory) with `schema`, and returns
/// its writer.
#[pyfunction]
fn create(py: Python<'_>, path: std::path::PathBuf, schema: &PySchema) -> PyResult<PyWriter> {
    let schema = schema.inner.clone();
    let w = py
        .detach(|| vstore::Writer::create(&path, schema))
        .map_err(err)?;
    Ok(PyWriter {
        inner: Arc::new(Mutex::new(w)),
    })
}

/// One operation of a transaction, applied at commit.
enum Op {
    Add(vstore::ItemBatch),
    Upsert(vstore::ItemBatch),
    Stats(vstore::ItemBatch),
    Delete(Vec<u64>),
}

/// The operations of one snapshot to be (`Writer.begin()`).
#[pyclass(name = "Transaction", module = "vstore", frozen)]
struct PyTransaction {
    writer: Arc<Mutex<vstore::Writer>>,
    /// None once committed or rolled back.
    ops: Mutex<Option<Vec<Op>>>,
}

/// A batch of items from numpy arrays: `ids` (uint64), `embeddings`
/// (key → float32 or float16 array `[n, dim]`), `categorical` (name →
/// uint32), `numeric` and `stats` (name → float32), each `n` long.
fn batch(
    ids: PyReadonlyArray1<'_, u64>,
    embeddings: Option<&Bound<'_, PyDict>>,
    categorical: Option<&Bound<'_, PyDict>>,
    numeric: Option<&Bound<'_, PyDict>>,
    stats: Option<&Bound<'_, PyDict>>,
) -> PyResult<vstore::ItemBatch> {
    let ids = ids.as_array().to_vec();
    let n = ids.len();
    let mut b = vstore::ItemBatch::new(ids);
    let check = |what: &str, name: &str, len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(invalid(format!("{what} {name:?}: {len} rows for {n} ids")))
        }
    };
    for (k, v) in embeddings.into_iter().flatten() {
        let key: String = k.extract()?;
        let values: Vec<f32> = if let Ok(a) = v.extract::<PyReadonlyArray2<'_, f32>>() {
            check("embedding", &key, a.shape()[0])?;
            a.as_array().iter().copied().collect()
        } else if let Ok(a) = v.extract::<PyReadonlyArray2<'_, half::f16>>() {
            check("embedding", &key, a.shape()[0])?;
            a.as_array().iter().map(|h| h.to_f32()).collect()
        } else {
            return Err(invalid(format!(
                "embedding {key:?}: expected a 2-D float32 or float16 array"
            )));
        };
        b = b.embedding(&key, values);
    }
    for (k, v) in categorical.into_iter().flatten() {
        let name: String = k.extract()?;
        let a: PyReadonlyArray1<'_, u32> = v
            .extract()
            .map_err(|_| invalid(format!("categorical {name:?}: expected a uint32 array")))?;
        check("categorical", &name, a.len())?;
        b = b.categorical(&name, a.as_array().to_vec());
    }
    for (k, v) in numeric.into_iter().flatten() {
        let name: String = k.extract()?;
        let a: PyReadonlyArray1<'_, f32> = v
            .extract()
            .map_err(|_| invalid(format!("numeric {name:?}: expected a float32 array")))?;
        check("numeric", &name, a.len())?;
        b = b.numeric(&name, a.as_array().to_vec());
    }
    for (k, v) in stats.into_iter().flatten() {
        let name: String = k.extract()?;
        let a: PyReadonlyArray1<'_, f32> = v
            .extract()
            .map_err(|_| invalid(format!("stat {name:?}: expected a float32 array")))?;
        check("stat", &name, a.len())?;
        b = b.stat(&name, a.as_array().to_vec());
    }
    Ok(b)
}

impl PyTransaction {
    fn push(&self, op: Op) -> PyResult<()> {
        match self.ops.lock().expect("not poisoned").as_mut() {
            Some(ops) => {
                ops.push(op);
                Ok(())
            }
            None => Err(invalid(
                "the transaction was already committed or rolled back",
            )),
        }
    }
}

#[pymethods]
impl PyTransaction {
    /// Adds new items (ids not in the store).
    #[pyo3(signature = (ids, embeddings = None, categorical = None, numeric = None, stats = None))]
    fn add_items(
        &self,
        ids: PyReadonlyArray1<'_, u64>,
        embeddings: Option<&Bound<'_, PyDict>>,
        categorical: Option<&Bound<'_, PyDict>>,
        numeric: Option<&Bound<'_, PyDict>>,
        stats: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        self.push(Op::Add(batch(
            ids,
            embeddings,
            categorical,
            numeric,
            stats,
        )?))
    }

    /// Adds or replaces items.
    #[pyo3(signature = (ids, embeddings = None, categorical = None, numeric = None, stats = None))]
    fn upsert_items(
        &self,
        ids: PyReadonlyArray1<'_, u64>,
        embeddings: Option<&Bound<'_, PyDict>>,
        categorical: Option<&Bound<'_, PyDict>>,
        numeric: Option<&Bound<'_, PyDict>>,
        stats: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        self.push(Op::Upsert(batch(
            ids,
            embeddings,
            categorical,
            numeric,
            stats,
        )?))
    }

    /// Replaces the statistics of existing items (`stats`: name → float32).
    fn update_stats(
        &self,
        ids: PyReadonlyArray1<'_, u64>,
        stats: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        self.push(Op::Stats(batch(ids, None, None, None, Some(stats))?))
    }

    /// Deletes items.
    fn delete_items(&self, ids: PyReadonlyArray1<'_, u64>) -> PyResult<()> {
        self.push(Op::Delete(ids.as_array().to_vec()))
    }

    /// Runs the operations in order and publishes one snapshot; returns
    /// its number. Nothing is published if one of them fails.
    fn commit(&self, py: Python<'_>) -> PyResult<u64> {
        let ops = self
            .ops
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| invalid("the transaction was already committed or rolled back"))?;
        let writer = self.writer.clone();
        py.detach(move || {
            let mut w = writer.lock().expect("not poisoned");
            let mut tx = w.begin();
            for op in ops {
                match op {
                    Op::Add(b) => tx.add_items(b)?,
                    Op::Upsert(b) => tx.upsert_items(b)?,
                    Op::Stats(b) => tx.update_stats(b)?,
                    Op::Delete(ids) => tx.delete_items(&ids)?,
                }
            }
            tx.commit().map(|s| s.number())
        })
        .map_err(err)
    }

    /// Drops the operations (nothing is published).
    fn rollback(&self) {
        self.ops.lock().expect("not poisoned").take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Commits when the block ended normally, else rolls back.
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if exc_type.is_some() {
            self.rollback();
        } else {
            self.commit(py)?;
        }
        Ok(false)
    }
}

/// The extension module.
#[pymodule]
fn _vstore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(create, m)?)?;
    m.add_class::<PyStore>()?;
    m.add_class::<PySnapshot>()?;
    m.add_class::<PyQueryResult>()?;
    m.add_class::<PySchema>()?;
    m.add_class::<PyWriter>()?;
    m.add_class::<PyTransaction>()?;
    m.add("FORMAT_VERSION", vstore::FORMAT_VERSION)?;
    add_exceptions(m)
}
