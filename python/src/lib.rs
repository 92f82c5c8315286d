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

mod distributed;

use numpy::{
    IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
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
pyo3::create_exception!(
    vstore,
    DamagedManifestWarning,
    pyo3::exceptions::PyRuntimeWarning,
    "Warned by `vstore.open` (and `Store.refresh`) when the newest manifest is damaged and an older snapshot is read instead (`Store.skipped_manifests` lists them)."
);
pyo3::create_exception!(
    vstore,
    ReplacedItemsWarning,
    pyo3::exceptions::PyUserWarning,
    "Warned by `Transaction.upsert_items` when it replaces items already in the store without giving every profile and statistics column: replaced items are replaced whole, so those columns take their defaults."
);
macro_rules! kinds {
    ($($name:ident: $doc:literal),* $(,)?) => {
        $(pyo3::create_exception!(vstore, $name, VstoreError, $doc);)*
        /// Adds the exception classes to the module.
        fn add_exceptions(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add("VstoreError", m.py().get_type::<VstoreError>())?;
            m.add("DamagedManifestWarning", m.py().get_type::<DamagedManifestWarning>())?;
            m.add("ReplacedItemsWarning", m.py().get_type::<ReplacedItemsWarning>())?;
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
    ConflictError: "Another writer published first (the message says how to rebase).",
    PoisonedError: "The writer is unusable after an earlier failure.",
);

/// The Python exception for a library error, with its message.
fn err(e: vstore::Error) -> PyErr {
    err_at(e, "")
}

/// `e` (a Python exception) with its message prefixed by `ctx`, of the
/// same type.
fn err_prefixed(py: Python<'_>, e: PyErr, ctx: &str) -> PyErr {
    PyErr::from_type(e.get_type(py), format!("{ctx}{}", e.value(py)))
}

/// [`err`] with `ctx` (which user of a batch, ...) before the message.
fn err_at(e: vstore::Error, ctx: &str) -> PyErr {
    use vstore::Error as E;
    let msg = format!("{ctx}{e}");
    match e {
        E::Io { .. } | E::Mlock { .. } => IoError::new_err(msg),
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
        E::Conflict { .. } => ConflictError::new_err(msg),
        E::Poisoned { .. } => PoisonedError::new_err(msg),
        // A kind added to the library later: the base class.
        _ => VstoreError::new_err(msg),
    }
}

/// `secs` as a duration, or an `InvalidInputError` naming argument `name`
/// if it is negative or not finite.
fn seconds(name: &str, secs: f64) -> PyResult<std::time::Duration> {
    if !(secs >= 0.0 && secs.is_finite()) {
        return Err(invalid(format!(
            "{name} {secs}: expected a finite number >= 0"
        )));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| {
        invalid(format!(
            "{name} {secs}: too large (at most about 5.8e11 years)"
        ))
    })
}

/// An `InvalidInputError` naming the argument.
fn invalid(what: impl std::fmt::Display) -> PyErr {
    InvalidInputError::new_err(what.to_string())
}

/// Item ids from Python: read in place when they are a contiguous, aligned
/// uint64 array, else copied from any array or list of integers (a strided
/// array, int64 from pandas, a list), refusing floats, negative values and
/// anything not an integer with an `InvalidInputError` naming `what`.
enum Ids<'py> {
    InPlace(PyReadonlyArray1<'py, u64>),
    Copied(Vec<u64>),
}

impl Ids<'_> {
    fn as_slice(&self) -> &[u64] {
        match self {
            Ids::InPlace(a) => a.as_slice().expect("checked by ids_arg"),
            Ids::Copied(v) => v,
        }
    }

    fn into_vec(self) -> Vec<u64> {
        match self {
            Ids::InPlace(a) => a.as_slice().expect("checked by ids_arg").to_vec(),
            Ids::Copied(v) => v,
        }
    }
}

/// `v` through `numpy.asarray`, with its number of dimensions, size, dtype
/// kind (`"f"`, `"i"`, ...) and dtype name; an error names `what`.
fn np_array<'py>(
    v: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<(Bound<'py, PyAny>, usize, usize, String, String)> {
    let np = v.py().import("numpy")?;
    let a = np
        .call_method1("asarray", (v,))
        .map_err(|e| invalid(format!("{what}: not an array ({e})")))?;
    let ndim: usize = a.getattr("ndim")?.extract()?;
    let size: usize = a.getattr("size")?.extract()?;
    let dtype = a.getattr("dtype")?;
    let kind: String = dtype.getattr("kind")?.extract()?;
    let name: String = dtype.getattr("name")?.extract()?;
    Ok((a, ndim, size, kind, name))
}

/// Item ids (see [`Ids`]) from `v`, the argument `what`.
/// Element `i` of a list or tuple of ids: a Python or numpy integer in
/// `0..2^64` (read as it is: numpy would promote `[1, 2**63 + 5]` to
/// float64, losing the large id), or an `InvalidInputError` naming the
/// element and what is wrong with it.
fn list_id(x: &Bound<'_, PyAny>, what: &str, i: usize) -> PyResult<u64> {
    let ty = x.get_type().name()?.to_string();
    let bad = |why: String| invalid(format!("{what}[{i}]: {why}"));
    if x.is_none() {
        return Err(bad("missing (None); every item needs an id".into()));
    }
    // Booleans (Python's or numpy's) have `__index__` too.
    if x.is_instance_of::<pyo3::types::PyBool>() || matches!(ty.as_str(), "bool" | "bool_") {
        return Err(bad(format!("{} is a boolean, not an id", x.repr()?)));
    }
    if !x.hasattr("__index__")? {
        return Err(bad(format!(
            "{} ({ty}) is not an integer; ids are unsigned 64-bit integers",
            x.repr()?
        )));
    }
    let n: pyo3::Bound<'_, pyo3::types::PyInt> = x.call_method0("__index__")?.cast_into()?;
    n.extract::<u64>().map_err(|_| {
        let why = if n.lt(0).unwrap_or(false) {
            "is negative"
        } else {
            "is above 2^64 - 1"
        };
        bad(format!("id {n} {why} (ids are unsigned 64-bit integers)"))
    })
}

fn ids_arg<'py>(v: &Bound<'py, PyAny>, what: &str) -> PyResult<Ids<'py>> {
    if let Ok(a) = v.extract::<PyReadonlyArray1<'py, u64>>() {
        // In place needs a slice: contiguous and aligned (an array
        // unpickled by Dask may be neither).
        if a.as_slice().is_ok() {
            return Ok(Ids::InPlace(a));
        }
        return Ok(Ids::Copied(a.as_array().to_vec()));
    }
    // A list or tuple of integers, read as they are: numpy would promote
    // `[1, 2**63 + 5]` to float64 (losing the large id).
    if v.is_instance_of::<pyo3::types::PyList>() || v.is_instance_of::<pyo3::types::PyTuple>() {
        let mut ids = Vec::new();
        for (i, x) in v.try_iter()?.enumerate() {
            ids.push(list_id(&x?, what, i)?);
        }
        return Ok(Ids::Copied(ids));
    }
    let (a, ndim, size, kind, name) = np_array(v, what)?;
    if ndim != 1 {
        return Err(invalid(format!(
            "{what}: expected a 1-D array of item ids, got {ndim} dimensions"
        )));
    }
    if size == 0 {
        return Ok(Ids::Copied(Vec::new()));
    }
    match kind.as_str() {
        "u" => {
            let a = a.call_method1("astype", ("uint64",))?;
            let a: PyReadonlyArray1<'_, u64> = a.extract()?;
            Ok(Ids::Copied(a.as_array().to_vec()))
        }
        "i" => {
            let a = a.call_method1("astype", ("int64",))?;
            let a: PyReadonlyArray1<'_, i64> = a.extract()?;
            a.as_array()
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    u64::try_from(x).map_err(|_| {
                        invalid(format!(
                            "{what}[{i}]: id {x} is negative (ids are unsigned)"
                        ))
                    })
                })
                .collect::<PyResult<_>>()
                .map(Ids::Copied)
        }
        "f" => {
            // A missing value (NaN: pandas' nullable integers with NA
            // become floats) is named by its row.
            let f = a.call_method1("astype", ("float64",))?;
            let f: PyReadonlyArray1<'_, f64> = f.extract()?;
            if let Some(i) = f.as_array().iter().position(|x| x.is_nan()) {
                return Err(invalid(format!(
                    "{what}[{i}]: missing (None, NaN or NA); every item needs an id"
                )));
            }
            Err(invalid(format!(
                "{what}: the array holds floats ({name}); ids are integers (uint64, or a signed \
                 integer type with no negative value)"
            )))
        }
        _ => Err(invalid(format!(
            "{what}: expected integer ids (uint64, or a signed integer type with no negative \
             value), not {name}"
        ))),
    }
}

/// Float32 values from Python: read in place when `v` is a C-contiguous,
/// aligned float32 array, else copied (a strided array, float64 or float16
/// converted to float32).
enum Floats<'py> {
    InPlace(PyReadonlyArrayDyn<'py, f32>),
    Copied(Vec<f32>),
}

impl Floats<'_> {
    fn as_slice(&self) -> &[f32] {
        match self {
            Floats::InPlace(a) => a.as_slice().expect("checked by floats_arg"),
            Floats::Copied(v) => v,
        }
    }
}

/// The `ndim`-dimensional float array `v`, the argument `what` (see
/// [`Floats`]), and its shape; an `InvalidInputError` names `what` if it
/// has another number of dimensions or does not hold floats.
fn floats_arg<'py>(
    v: &Bound<'py, PyAny>,
    what: &str,
    ndim: usize,
) -> PyResult<(Floats<'py>, Vec<usize>)> {
    if let Ok(a) = v.extract::<PyReadonlyArrayDyn<'py, f32>>() {
        if a.ndim() == ndim && a.is_c_contiguous() && a.as_slice().is_ok() {
            let shape = a.shape().to_vec();
            return Ok((Floats::InPlace(a), shape));
        }
    }
    let (a, got, _, kind, name) = np_array(v, what)?;
    if got != ndim {
        return Err(invalid(format!(
            "{what}: expected a {ndim}-D float array, got {got} dimensions"
        )));
    }
    if kind != "f" {
        return Err(invalid(format!(
            "{what}: expected a float array (float32; float64 and float16 are converted), \
             not {name}"
        )));
    }
    let wide = a.call_method1("astype", ("float32",))?;
    let wide: PyReadonlyArrayDyn<'_, f32> = wide.extract()?;
    let shape = wide.shape().to_vec();
    // Row-major order whatever the layout.
    let values: Vec<f32> = wide.as_array().iter().copied().collect();
    // A finite value beyond float32's range would round to infinity, and
    // a later check would report "inf", not what was given.
    if let Some(i) = values.iter().position(|x| x.is_infinite()) {
        let f = a.call_method1("astype", ("float64",))?;
        let f: PyReadonlyArrayDyn<'_, f64> = f.extract()?;
        if let Some(x) = f.as_array().iter().nth(i).filter(|x| x.is_finite()) {
            let row = if shape.len() == 2 && shape[1] > 0 {
                format!(" row {}, component {}", i / shape[1], i % shape[1])
            } else {
                format!(" element {i}")
            };
            return Err(invalid(format!(
                "{what},{row}: {x:e} is beyond float32's range (vectors are float32)"
            )));
        }
    }
    Ok((Floats::Copied(values), shape))
}

/// A category code (0 to 4294967295) from `v`; an `InvalidInputError`
/// says `what` it is and shows the value.
fn code_arg(v: &Bound<'_, PyAny>, what: impl FnOnce() -> String) -> PyResult<u32> {
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(invalid(format!(
            "{}: {} is not a category code (an integer from 0 to 4294967295)",
            what(),
            v.repr()?
        )));
    }
    v.extract::<u32>().map_err(|_| {
        let shown = v.repr().map(|r| r.to_string()).unwrap_or_default();
        invalid(format!(
            "{}: {shown} is not a category code (an integer from 0 to 4294967295)",
            what()
        ))
    })
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

    /// Moves to the newest published snapshot; True if there was a newer
    /// one. A newer manifest found damaged and skipped is reported as at
    /// `vstore.open` (a `DamagedManifestWarning`, and `skipped_manifests`).
    fn refresh(&self, py: Python<'_>) -> PyResult<bool> {
        let before = self.inner.skipped_manifests();
        let moved = py.detach(|| self.inner.refresh()).map_err(err)?;
        self.warn_skipped(py, &before)?;
        Ok(moved)
    }

    /// The manifests newer than the current snapshot that were found
    /// damaged and skipped (the store reads an older snapshot instead), as
    /// (file name, reason) pairs; empty in a healthy store.
    #[getter]
    fn skipped_manifests(&self) -> Vec<(String, String)> {
        self.inner.skipped_manifests()
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

    /// How far the background prefault of the current snapshot has got (a
    /// dict: snapshot, bytes_total, bytes_done, bytes_skipped,
    /// bytes_verified, damage (None, or the message naming the damaged
    /// file: the snapshot's queries then raise it), finished, stopped,
    /// seconds), or None if the store was opened with `prefault="off"`.
    fn prefault_progress<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.inner
            .prefault_progress()
            .map(|p| progress_dict(py, &p))
            .transpose()
    }

    /// Waits (GIL released) until the background prefault of the current
    /// snapshot ends; returns `prefault_progress()`.
    fn wait_prefault<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        py.detach(|| self.inner.wait_prefault())
            .map(|p| progress_dict(py, &p))
            .transpose()
    }
}

impl PyStore {
    /// Issues a `DamagedManifestWarning` for each skipped manifest not in
    /// `known` (the CLI's warning: the file, the snapshot read instead and
    /// why).
    fn warn_skipped(&self, py: Python<'_>, known: &[(String, String)]) -> PyResult<()> {
        let number = self.inner.snapshot().number();
        for (m, why) in self.inner.skipped_manifests() {
            if known.iter().any(|(k, _)| *k == m) {
                continue;
            }
            let msg = format!(
                "{m} is damaged and was skipped; reading the older snapshot {number} instead ({why})"
            );
            warn::<DamagedManifestWarning>(py, &msg)?;
        }
        Ok(())
    }
}

/// Issues a Python warning of class `W` with `msg`, attributed to the
/// caller's line.
fn warn<W: pyo3::PyTypeInfo>(py: Python<'_>, msg: &str) -> PyResult<()> {
    let msg = std::ffi::CString::new(msg.replace('\0', " ")).expect("NULs replaced");
    PyErr::warn(py, &py.get_type::<W>(), &msg, 1)
}

/// A `vstore::PrefaultProgress` as a dict.
fn progress_dict<'py>(
    py: Python<'py>,
    p: &vstore::PrefaultProgress,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("snapshot", p.snapshot)?;
    d.set_item("bytes_total", p.bytes_total)?;
    d.set_item("bytes_done", p.bytes_done)?;
    d.set_item("bytes_skipped", p.bytes_skipped)?;
    d.set_item("bytes_verified", p.bytes_verified)?;
    d.set_item("damage", p.damage.as_deref())?;
    d.set_item("finished", p.finished)?;
    d.set_item("stopped", p.stopped)?;
    d.set_item("seconds", p.elapsed.as_secs_f64())?;
    Ok(d)
}

/// One immutable snapshot of a store.
#[pyclass(name = "Snapshot", module = "vstore", frozen)]
struct PySnapshot {
    inner: Arc<vstore::Snapshot>,
}

/// What a query returns: `ids` (uint64) and `scores` (float32) of the top
/// k, best first; `heads` (float32, `[k, heads]`, or None) and
/// `head_names`; the candidates not found (`not_found`, uint64, input
/// order), the number the filter removed (`filtered_out`) and which
/// (`filtered`, uint64 ascending; empty for a full scan), the number
/// scored (`scored`), those whose score was not finite (`non_finite`), the
/// snapshot that answered and `query_seconds`, the time the library's query
/// took (the rest of a call's time is the binding's).
#[pyclass(name = "QueryResult", module = "vstore", frozen, get_all)]
struct PyQueryResult {
    snapshot: u64,
    ids: Py<PyArray1<u64>>,
    scores: Py<PyArray1<f32>>,
    heads: Option<Py<PyAny>>,
    head_names: Vec<String>,
    not_found: Py<PyArray1<u64>>,
    filtered_out: usize,
    filtered: Py<PyArray1<u64>>,
    scored: usize,
    non_finite: Py<PyArray1<u64>>,
    over_budget: usize,
    over_budget_ids: Py<PyArray1<u64>>,
    multiply_adds: u64,
    timings: Py<PyDict>,
    features: Option<Py<PyDict>>,
    query_seconds: f64,
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
        let query_seconds = r.timings.total.as_secs_f64();
        let t = &r.timings;
        let timings = PyDict::new(py);
        for (name, d) in [
            ("prepare", t.prepare),
            ("resolve", t.resolve),
            ("gather", t.gather),
            ("cross", t.cross),
            ("upper", t.upper),
            ("heads", t.heads),
            ("rescore", t.rescore),
            ("topk", t.topk),
            ("total", t.total),
        ] {
            timings.set_item(name, d.as_secs_f64())?;
        }
        let features = match r.features {
            None => None,
            Some(log) => {
                let (k, nh) = (log.scores.len(), log.head_names.len());
                let f = PyDict::new(py);
                f.set_item("inputs", log.inputs)?;
                let cross = log.cross_inputs.into_pyarray(py);
                f.set_item("cross_inputs", cross.reshape([k, log.cross_dim])?)?;
                f.set_item("head_names", log.head_names)?;
                f.set_item(
                    "head_logits",
                    log.head_logits.into_pyarray(py).reshape([k, nh])?,
                )?;
                f.set_item("heads", log.heads.into_pyarray(py).reshape([k, nh])?)?;
                f.set_item("scores", log.scores.into_pyarray(py))?;
                Some(f.unbind())
            }
        };
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
            filtered: r.filtered.into_pyarray(py).unbind(),
            scored: r.scored,
            non_finite: r.non_finite.into_pyarray(py).unbind(),
            over_budget: r.over_budget,
            over_budget_ids: r.over_budget_ids.into_pyarray(py).unbind(),
            multiply_adds: r.multiply_adds,
            timings: timings.unbind(),
            features,
            query_seconds,
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

    /// Whether item `id` is live in this snapshot (`CorruptError` if the id
    /// index or deletion bitmap that says so is damaged).
    fn __contains__(&self, id: u64) -> PyResult<bool> {
        Ok(self.inner.item(id).map_err(err)?.is_some())
    }

    /// The live ids, segment by segment in row order, as a uint64 array
    /// (`CorruptError` if an id index or deletion bitmap is damaged).
    fn ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        self.inner.check_identity().map_err(err)?;
        Ok(self.inner.ids().collect::<Vec<u64>>().into_pyarray(py))
    }

    /// What the snapshot holds for item `id`, or None if it is not live: a
    /// dict with `embeddings` (version key → float32 vector), `computed`
    /// (version key → whether the store computed the vector with the
    /// version's item tower), `profile` and `stats` (column → value, or
    /// None where the item has no value and the column's default is what
    /// scoring reads).
    fn item<'py>(&self, py: Python<'py>, id: u64) -> PyResult<Option<Bound<'py, PyDict>>> {
        let s = &self.inner;
        // Checked: a damaged id index is a CorruptError, not "absent".
        if s.item(id).map_err(err)?.is_none() {
            return Ok(None);
        }
        let embeddings = PyDict::new(py);
        let computed = PyDict::new(py);
        for key in s.embedding_keys() {
            embeddings.set_item(
                &key,
                s.get_embedding(id, &key).map_err(err)?.into_pyarray(py),
            )?;
            computed.set_item(&key, s.is_computed(id, &key).map_err(err)?)?;
        }
        let profile = PyDict::new(py);
        for c in &s.schema().profile {
            match c.kind {
                vstore::ColumnKind::Categorical { .. } => {
                    profile.set_item(&c.name, s.get_categorical(id, &c.name).map_err(err)?)?
                }
                _ => profile.set_item(&c.name, s.get_numeric(id, &c.name).map_err(err)?)?,
            }
        }
        let stats = PyDict::new(py);
        for c in &s.schema().stats {
            stats.set_item(&c.name, s.get_stat(id, &c.name).map_err(err)?)?;
        }
        let d = PyDict::new(py);
        d.set_item("embeddings", embeddings)?;
        d.set_item("computed", computed)?;
        d.set_item("profile", profile)?;
        d.set_item("stats", stats)?;
        Ok(Some(d))
    }

    /// How many live items hold a vector of `key` the store computed with
    /// the version's item tower.
    fn computed_count(&self, key: &str) -> PyResult<u64> {
        self.inner.computed_count(key).map_err(err)
    }

    /// The embedding versions dropped earlier in the store's history, as a
    /// dict `space@version` → the snapshot that dropped it. Their names
    /// are not given to other vectors (`add_embedding` refuses them; see
    /// `Transaction.forget_dropped_version`).
    fn dropped_versions(&self) -> PyResult<std::collections::BTreeMap<String, u64>> {
        Ok(self
            .inner
            .dropped_versions()
            .map_err(err)?
            .into_iter()
            .collect())
    }

    /// The snapshot's metadata entries as a dict.
    fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        self.inner
            .metadata_entries()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Scores `candidates` (uint64 ids, or integers with no negative value;
    /// None: every item, an empty array is refused) against `user`
    /// (float32, or float64 / float16 converted; from the model version
    /// `version`, `space@version`) and
    /// returns the best `k`. `filter`: a [`Filter`](PyFilter).
    /// `three_tower`: the user inputs of a three-tower query (name → a
    /// float32 vector for a `user_dense` input, or name → {category code:
    /// vector} for a `user_by_item` one; `{}` for none), scored by the
    /// version's bundle (`model` names one of several) with its fusion or
    /// `fusion` (a JSON object, as a dict or a string); `heads` returns the
    /// head values; `exact` the f32 top k of a low-precision bundle;
    /// `threads` splits the model over that many threads. `max_items` or
    /// `max_multiply_adds`: a compute budget (over it, the first candidates
    /// in your order are scored; the result's `over_budget` and
    /// `over_budget_ids` say which were not). `log_features`: the result's
    /// `features` holds what the model saw for each hit (a dict:
    /// `inputs` [(name, width)], `cross_inputs` [k, width], `head_names`,
    /// `head_logits` and `heads` [k, heads], `scores` [k]). Every result
    /// has `timings` (seconds per stage) and `multiply_adds`.
    #[pyo3(signature = (version, user, candidates, k, *, filter = None, three_tower = None, model = None, fusion = None, heads = false, exact = false, threads = 1, max_items = None, max_multiply_adds = None, log_features = false))]
    #[allow(clippy::too_many_arguments)]
    fn query(
        &self,
        py: Python<'_>,
        version: &str,
        user: &Bound<'_, PyAny>,
        candidates: Option<&Bound<'_, PyAny>>,
        k: usize,
        filter: Option<&PyFilter>,
        three_tower: Option<&Bound<'_, PyDict>>,
        model: Option<&str>,
        fusion: Option<&Bound<'_, PyAny>>,
        heads: bool,
        exact: bool,
        threads: usize,
        max_items: Option<usize>,
        max_multiply_adds: Option<u64>,
        log_features: bool,
    ) -> PyResult<PyQueryResult> {
        // A one-row matrix (`(1, dim)`, as a model's output for one user
        // comes) is the vector; the CLI reads such an .npy alike.
        let one_row = user
            .getattr("shape")
            .ok()
            .and_then(|s| s.extract::<(usize, usize)>().ok())
            .is_some_and(|(rows, _)| rows == 1);
        let flat;
        let user = if one_row {
            // (numpy.ravel: a one-row pandas DataFrame has no reshape.)
            flat = py.import("numpy")?.call_method1("ravel", (user,))?;
            &flat
        } else {
            user
        };
        let (user, _) = floats_arg(user, "user", 1)?;
        let user = user.as_slice();
        let ids = candidates.map(|c| ids_arg(c, "candidates")).transpose()?;
        let ids = ids.as_ref().map(Ids::as_slice);
        if ids.is_some_and(<[u64]>::is_empty) {
            return Err(no_candidates("candidates"));
        }
        let opts = Options::new(
            py,
            filter,
            three_tower,
            model,
            fusion,
            heads,
            exact,
            threads,
            Extra {
                max_items,
                max_multiply_adds,
                log_features,
            },
        )?;
        let snap = &self.inner;
        let r = py
            .detach(|| snap.query(&opts.query(version, user, ids, k)))
            .map_err(err)?;
        PyQueryResult::new(py, r)
    }

    /// [`query`](PySnapshot::query) for many users at once: `users` is
    /// `[n, dim]` float32 (other floats converted); an error of one user's
    /// query names its row; `candidates` one uint64 array every user shares
    /// (resolved once per worker: the library's `Snapshot::query_batch`),
    /// a list of `n` arrays (one per user), or None (full scans);
    /// `three_tower` is one dict of user inputs for every query, or a list
    /// of `n` (one per user); the other options apply to every query. Runs
    /// with the GIL released, the users split into `workers` contiguous
    /// runs, each one library batch call on its own thread; returns a list
    /// of results in user order. `errors`: `"raise"` (the default) raises
    /// the first user's error (naming its row); `"return"` puts each failed
    /// user's exception in its place in the list, so that one bad user does
    /// not cost the others their results.
    #[pyo3(signature = (version, users, candidates, k, *, workers = 1, filter = None, three_tower = None, model = None, fusion = None, heads = false, exact = false, max_items = None, max_multiply_adds = None, log_features = false, errors = "raise"))]
    #[allow(clippy::too_many_arguments)]
    fn query_batch(
        &self,
        py: Python<'_>,
        version: &str,
        users: &Bound<'_, PyAny>,
        candidates: Option<&Bound<'_, PyAny>>,
        k: usize,
        workers: usize,
        filter: Option<&PyFilter>,
        three_tower: Option<&Bound<'_, PyAny>>,
        model: Option<&str>,
        fusion: Option<&Bound<'_, PyAny>>,
        heads: bool,
        exact: bool,
        max_items: Option<usize>,
        max_multiply_adds: Option<u64>,
        log_features: bool,
        errors: &str,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let keep_errors = match errors {
            "raise" => false,
            "return" => true,
            other => {
                return Err(invalid(format!(
                    "errors {other:?}: expected \"raise\" or \"return\""
                )))
            }
        };
        let (users, shape) = floats_arg(users, "users", 2)?;
        let u = users.as_slice();
        let (n, dim) = (shape[0], shape[1]);
        // One shared array, or one per user (a list or tuple of arrays).
        let per_user_lists = candidates.is_some_and(|c| {
            (c.is_instance_of::<pyo3::types::PyList>()
                || c.is_instance_of::<pyo3::types::PyTuple>())
                && c.get_item(0)
                    .is_ok_and(|e| e.hasattr("__len__").unwrap_or(false))
        });
        // A user whose own inputs are bad (its candidate list, its input
        // dict): its error, raised at once, or with `errors="return"` put in
        // its place while the others are queried.
        let mut bad: Vec<Option<PyErr>> = (0..n).map(|_| None).collect();
        let mut fail = |i: usize, e: PyErr| -> PyResult<()> {
            if keep_errors {
                bad[i] = Some(e);
                Ok(())
            } else {
                Err(e)
            }
        };
        let (one, lists): (Option<Ids<'_>>, Vec<Option<Ids<'_>>>) = match candidates {
            None => (None, Vec::new()),
            Some(c) if per_user_lists => {
                let l: Vec<Bound<'_, PyAny>> = c.extract()?;
                if l.len() != n {
                    return Err(invalid(format!(
                        "candidates: {} lists for {n} users",
                        l.len()
                    )));
                }
                let mut lists = Vec::with_capacity(n);
                for (i, a) in l.iter().enumerate() {
                    let what = format!("candidates[{i}]");
                    match ids_arg(a, &what) {
                        Ok(ids) if ids.as_slice().is_empty() => {
                            fail(i, no_candidates(&what))?;
                            lists.push(None);
                        }
                        Ok(ids) => lists.push(Some(ids)),
                        Err(e) => {
                            fail(i, e)?;
                            lists.push(None);
                        }
                    }
                }
                (None, lists)
            }
            Some(c) => (Some(ids_arg(c, "candidates")?), Vec::new()),
        };
        let cands: Option<Vec<&[u64]>> = match (&one, candidates) {
            (Some(a), _) => {
                if a.as_slice().is_empty() {
                    return Err(no_candidates("candidates"));
                }
                Some(vec![a.as_slice(); n])
            }
            (None, Some(_)) => Some(
                (lists.iter())
                    .map(|l| l.as_ref().map_or(&[][..], Ids::as_slice))
                    .collect(),
            ),
            (None, None) => None,
        };
        // One shared dict of inputs, or one per user.
        let (shared, per_user): (Option<Bound<'_, PyDict>>, Option<Vec<vstore::UserInputs>>) =
            match three_tower {
                None => (None, None),
                Some(t) => match t.cast::<PyDict>() {
                    Ok(d) => (Some(d.clone()), None),
                    Err(_) => {
                        let list: Vec<Bound<'_, PyDict>> = t.extract().map_err(|_| {
                            invalid("three_tower: expected a dict of user inputs or a list of them")
                        })?;
                        if list.len() != n {
                            return Err(invalid(format!(
                                "three_tower: {} input dicts for {n} users",
                                list.len()
                            )));
                        }
                        let mut all = Vec::with_capacity(n);
                        for (i, d) in list.iter().enumerate() {
                            match user_inputs(d) {
                                Ok(u) => all.push(u),
                                Err(e) => {
                                    fail(i, err_prefixed(py, e, &format!("three_tower[{i}]: ")))?;
                                    all.push(vstore::UserInputs::new());
                                }
                            }
                        }
                        (Some(PyDict::new(py)), Some(all))
                    }
                },
            };
        let extra = Extra {
            max_items,
            max_multiply_adds,
            log_features,
        };
        let opts = Options::new(
            py,
            filter,
            shared.as_ref(),
            model,
            fusion,
            heads,
            exact,
            1,
            extra,
        )?;
        let snap = &self.inner;
        let query = |i: usize| {
            let user = &u[i * dim..(i + 1) * dim];
            let inputs = match &per_user {
                Some(all) => Some(&all[i]),
                None => opts.inputs.as_ref(),
            };
            let ids = cands.as_ref().map(|c| c[i]);
            opts.query_with(inputs, version, user, ids, k)
        };
        // The users to query (all but those with bad inputs), in contiguous
        // runs, one library batch each.
        let good: Vec<usize> = (0..n).filter(|&i| bad[i].is_none()).collect();
        let workers = workers.clamp(1, good.len().max(1));
        let per = good.len().div_ceil(workers).max(1);
        let run = |r: usize| {
            let queries: Vec<vstore::Query<'_>> = good[r * per..((r + 1) * per).min(good.len())]
                .iter()
                .map(|&i| query(i))
                .collect();
            snap.query_batch(&queries)
        };
        let results: Vec<vstore::Result<vstore::QueryResult>> = py.detach(|| {
            use rayon::prelude::*;
            let runs = good.len().div_ceil(per);
            let pool = (workers > 1)
                .then(|| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(workers)
                        .build()
                        .ok()
                })
                .flatten();
            match pool {
                Some(pool) => {
                    pool.install(|| (0..runs).into_par_iter().flat_map_iter(run).collect())
                }
                None => (0..runs).flat_map(run).collect(),
            }
        });
        // Results come in user order: an error names the user's row.
        let mut results = results.into_iter();
        bad.into_iter()
            .enumerate()
            .map(|(i, b)| {
                let r = match b {
                    Some(e) => Err(e),
                    None => results
                        .next()
                        .expect("one result per user queried")
                        .map_err(|e| err_at(e, &format!("users row {i}: ")))
                        .and_then(|r| PyQueryResult::new(py, r)),
                };
                match r {
                    Ok(r) => Ok(Py::new(py, r)?.into_any()),
                    Err(e) if keep_errors => Ok(e.into_value(py).into_any()),
                    Err(e) => Err(e),
                }
            })
            .collect()
    }

    /// The snapshot's schema and size as a dict: `number`, `items`,
    /// `segments`, `embeddings` (key → `{dim, dtype}`) and `columns` (name → `{kind:
    /// categorical | numeric | stat, default}`).
    fn inspect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner;
        let d = PyDict::new(py);
        d.set_item("number", s.number())?;
        d.set_item("items", s.len())?;
        d.set_item("segments", s.segments().len())?;
        let emb = PyDict::new(py);
        for e in &s.schema().embeddings {
            let v = PyDict::new(py);
            v.set_item("dim", e.dim)?;
            v.set_item("dtype", e.dtype.name())?;
            emb.set_item(e.key(), v)?;
        }
        d.set_item("embeddings", emb)?;
        let cols = PyDict::new(py);
        let schema = s.schema();
        let groups = [(&schema.profile, false), (&schema.stats, true)];
        for (defs, stat) in groups {
            for c in defs.iter() {
                let v = PyDict::new(py);
                match c.kind {
                    vstore::ColumnKind::Categorical { default } => {
                        v.set_item("kind", "categorical")?;
                        v.set_item("default", default)?;
                    }
                    vstore::ColumnKind::Numeric { default } => {
                        v.set_item("kind", if stat { "stat" } else { "numeric" })?;
                        v.set_item("default", default)?;
                    }
                }
                cols.set_item(&c.name, v)?;
            }
        }
        d.set_item("columns", cols)?;
        Ok(d)
    }
}

/// The error for an empty candidate array, the argument `what`.
fn no_candidates(what: &str) -> PyErr {
    invalid(format!(
        "{what}: no candidate ids; pass candidates=None to score every item (a full scan)"
    ))
}

/// Runs a query, timing it: the result and the seconds it took.
/// The options of a query, converted from Python once (shared by the
/// queries of a batch).
struct Options {
    filter: Option<vstore::Filter>,
    inputs: Option<vstore::UserInputs>,
    model: Option<String>,
    fusion: Option<vstore::Fusion>,
    heads: bool,
    exact: bool,
    threads: usize,
    budget: Option<vstore::Budget>,
    log_features: bool,
}

/// The keyword options every query form takes besides its inputs.
#[derive(Clone, Copy, Default)]
struct Extra {
    max_items: Option<usize>,
    max_multiply_adds: Option<u64>,
    log_features: bool,
}

impl Options {
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        filter: Option<&PyFilter>,
        three_tower: Option<&Bound<'_, PyDict>>,
        model: Option<&str>,
        fusion: Option<&Bound<'_, PyAny>>,
        heads: bool,
        exact: bool,
        threads: usize,
        extra: Extra,
    ) -> PyResult<Self> {
        let inputs = three_tower.map(user_inputs).transpose()?;
        let budget = match (extra.max_items, extra.max_multiply_adds) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "max_items and max_multiply_adds: give one budget, not both",
                ))
            }
            (Some(n), None) => Some(vstore::Budget::Items(n)),
            (None, Some(m)) => Some(vstore::Budget::MultiplyAdds(m)),
            (None, None) => None,
        };
        if inputs.is_none() && extra.log_features {
            return Err(invalid(
                "log_features needs a three-tower query: pass three_tower={...}",
            ));
        }
        let fusion = match fusion {
            None => None,
            Some(f) => {
                let text: String = match f.extract::<String>() {
                    Ok(s) => s,
                    Err(_) => {
                        // NaN and infinities would become `NaN` and
                        // `Infinity`, which JSON does not have.
                        let kw = PyDict::new(py);
                        kw.set_item("allow_nan", false)?;
                        py.import("json")?
                            .call_method("dumps", (f,), Some(&kw))
                            .map_err(|e| {
                                invalid(format!(
                                    "fusion: not expressible as JSON ({e}); weights and \
                                     parameters must be finite numbers"
                                ))
                            })?
                            .extract()?
                    }
                };
                Some(vstore::Fusion::from_json(text.as_bytes()).map_err(err)?)
            }
        };
        if inputs.is_none() && (model.is_some() || fusion.is_some() || heads || exact) {
            return Err(invalid(
                "model, fusion, heads and exact need a three-tower query: pass three_tower={...}",
            ));
        }
        Ok(Options {
            filter: filter.map(|f| f.inner.clone()),
            inputs,
            model: model.map(str::to_string),
            fusion,
            heads,
            exact,
            threads: threads.max(1),
            budget,
            log_features: extra.log_features,
        })
    }

    /// The query over `ids` (None: every item).
    fn query<'a>(
        &'a self,
        version: &'a str,
        user: &'a [f32],
        ids: Option<&'a [u64]>,
        k: usize,
    ) -> vstore::Query<'a> {
        self.query_with(self.inputs.as_ref(), version, user, ids, k)
    }

    /// [`Options::query`] with these three-tower inputs (a batch's user's).
    fn query_with<'a>(
        &'a self,
        inputs: Option<&'a vstore::UserInputs>,
        version: &'a str,
        user: &'a [f32],
        ids: Option<&'a [u64]>,
        k: usize,
    ) -> vstore::Query<'a> {
        let mut q = match ids {
            Some(ids) => vstore::Query::ids(version, user, ids, k),
            None => vstore::Query::full_scan(version, user, k),
        };
        if let Some(f) = &self.filter {
            q = q.filter(f);
        }
        if let Some(b) = self.budget {
            q = q.budget(b);
        }
        if let Some(i) = inputs {
            if self.log_features {
                q = q.log_features();
            }
            q = q.three_tower(i).threads(self.threads);
            if let Some(m) = &self.model {
                q = q.model(m);
            }
            if let Some(f) = &self.fusion {
                q = q.fusion(f);
            }
            if self.heads {
                q = q.with_heads();
            }
            if self.exact {
                q = q.exact();
            }
        }
        q
    }
}

/// A three-tower query's user inputs from a dict: name → float32 vector
/// (`user_dense`) or name → {code: float32 vector} (`user_by_item`).
fn user_inputs(d: &Bound<'_, PyDict>) -> PyResult<vstore::UserInputs> {
    let mut u = vstore::UserInputs::new();
    for (k, v) in d {
        let name: String = k.extract()?;
        if let Ok(m) = v.cast::<PyDict>() {
            let mut entries = Vec::with_capacity(m.len());
            for (code, vec) in m {
                let code = code_arg(&code, || format!("three_tower[{name:?}]: key"))?;
                let vec: Vec<f32> = vec.extract().map_err(|_| {
                    invalid(format!(
                        "three_tower[{name:?}][{code}]: expected a float32 vector"
                    ))
                })?;
                entries.push((code, vec));
            }
            u = u.by_item(&name, entries);
        } else {
            let vec: Vec<f32> = v.extract().map_err(|_| {
                invalid(format!(
                    "three_tower[{name:?}]: expected a float32 vector or a dict of them"
                ))
            })?;
            u = u.dense(&name, vec);
        }
    }
    Ok(u)
}

/// A filter on profile or statistics columns: `Filter.is_in("category",
/// [1, 2])`, `Filter.not_in(...)`, `Filter.range("price", 0, 10)`,
/// combined with `&`, `|` and `~`.
#[pyclass(name = "Filter", module = "vstore", frozen)]
struct PyFilter {
    inner: vstore::Filter,
}

#[pymethods]
impl PyFilter {
    /// The categorical column's value is one of `values` (category codes,
    /// 0 to 4294967295).
    #[staticmethod]
    fn is_in(column: &str, values: Vec<Bound<'_, PyAny>>) -> PyResult<Self> {
        let values = filter_codes("is_in", column, &values)?;
        Ok(PyFilter {
            inner: vstore::Filter::is_in(column, values),
        })
    }

    /// The categorical column's value is none of `values`.
    #[staticmethod]
    fn not_in(column: &str, values: Vec<Bound<'_, PyAny>>) -> PyResult<Self> {
        let values = filter_codes("not_in", column, &values)?;
        Ok(PyFilter {
            inner: vstore::Filter::not_in(column, values),
        })
    }

    /// `min <= value <= max` for a numeric or statistics column (values are
    /// float32: exactly those within the float64 bounds pass; an empty
    /// range is refused when the filter is used).
    #[staticmethod]
    fn range(column: &str, min: &Bound<'_, PyAny>, max: &Bound<'_, PyAny>) -> PyResult<Self> {
        let bound = |v: &Bound<'_, PyAny>, which: &str| -> PyResult<f64> {
            if v.is_instance_of::<pyo3::types::PyBool>() {
                return Err(invalid(format!(
                    "Filter.range({column:?}): {which} {} is a boolean, not a number",
                    v.repr()?
                )));
            }
            v.extract::<f64>().map_err(|_| {
                invalid(format!(
                    "Filter.range({column:?}): {which} {} is not a number",
                    v.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })
        };
        let (lo, hi) = (bound(min, "min")?, bound(max, "max")?);
        if lo > hi {
            return Err(invalid(format!(
                "Filter.range({column:?}): min {lo} > max {hi}: the range is empty"
            )));
        }
        Ok(PyFilter {
            inner: vstore::Filter::range_f64(column, lo, hi),
        })
    }

    fn __and__(&self, other: &PyFilter) -> Self {
        PyFilter {
            inner: self.inner.clone().and(other.inner.clone()),
        }
    }

    fn __or__(&self, other: &PyFilter) -> Self {
        PyFilter {
            inner: self.inner.clone().or(other.inner.clone()),
        }
    }

    fn __invert__(&self) -> Self {
        PyFilter {
            inner: vstore::Filter::Not(Box::new(self.inner.clone())),
        }
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// The category codes of `Filter.<call>(column, values)`; an error names
/// the column, the value and its position.
fn filter_codes(call: &str, column: &str, values: &[Bound<'_, PyAny>]) -> PyResult<Vec<u32>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            code_arg(v, || {
                format!("Filter.{call} column {column:?}, values[{i}]")
            })
        })
        .collect()
}

/// The kernels this process runs: `portable`, `avx2`, `avxvnni`, `avx512`,
/// `avx512bf16` or `amx` (the CPU's best, lowered by the environment
/// variable `VSTORE_KERNEL_LEVEL`, read once when the first kernel runs).
#[pyfunction]
fn kernel_level() -> &'static str {
    vstore::kernel_level()
}

/// Validates a bundle (`model.json` text or bytes and the safetensors
/// bytes) against `schema` (a `Schema`, or a `Snapshot`'s schema) exactly as
/// `Transaction.add_model` would, without a store; returns the bundle's
/// `space@version`, or raises `BundleError` naming the field.
#[pyfunction]
fn check_bundle(
    json: &Bound<'_, PyAny>,
    weights: &[u8],
    schema: &Bound<'_, PyAny>,
) -> PyResult<String> {
    let json: Vec<u8> = match json.extract::<String>() {
        Ok(s) => s.into_bytes(),
        Err(_) => json
            .extract()
            .map_err(|_| invalid("json: expected str or bytes"))?,
    };
    let schema = if let Ok(s) = schema.cast::<PySchema>() {
        s.get().inner.clone()
    } else if let Ok(s) = schema.cast::<PySnapshot>() {
        s.get().inner.schema().clone()
    } else {
        return Err(invalid(
            "schema: expected a vstore.Schema or a vstore.Snapshot",
        ));
    };
    let bundle = vstore::Bundle::load(&json, weights, &schema).map_err(err)?;
    Ok(bundle.key().to_string())
}

/// Opens the store at `path` for reading. `prefault`: `"background"` (the
/// default) faults the pages queries read in on a background thread after
/// the open, `"off"` reads them when a query first touches them. `mlock`:
/// lock the store's mapped files in memory (an `IoError` naming
/// RLIMIT_MEMLOCK when they do not fit). If the newest manifest is damaged
/// the store reads the newest intact snapshot instead and a
/// `DamagedManifestWarning` names each skipped file (also listed by
/// `Store.skipped_manifests`).
#[pyfunction]
#[pyo3(signature = (path, *, prefault = "background", mlock = false))]
fn open(
    py: Python<'_>,
    path: std::path::PathBuf,
    prefault: &str,
    mlock: bool,
) -> PyResult<PyStore> {
    let mode = match prefault {
        "background" => vstore::Prefault::Background,
        "off" => vstore::Prefault::Off,
        other => {
            return Err(invalid(format!(
                "prefault {other:?}: expected \"background\" or \"off\""
            )))
        }
    };
    let opts = vstore::OpenOptions::new().prefault(mode).mlock(mlock);
    let inner = py
        .detach(|| vstore::Store::open_with(&path, opts))
        .map_err(err)?;
    let store = PyStore { inner };
    store.warn_skipped(py, &[])?;
    Ok(store)
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

    /// Adds a categorical profile column (uint32 codes; `default`, 0 if
    /// not given, for items that have none).
    #[pyo3(signature = (name, default = None))]
    fn categorical(&self, name: &str, default: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let default = match default {
            None => 0,
            Some(d) => code_arg(d, || format!("categorical column {name:?}: default"))?,
        };
        Ok(PySchema {
            inner: self.inner.clone().categorical(name, default),
        })
    }

    /// Adds a numeric profile column (float32).
    #[pyo3(signature = (name, default = 0.0))]
    fn numeric(&self, name: &str, default: f64) -> PyResult<Self> {
        Ok(PySchema {
            inner: self
                .inner
                .clone()
                .numeric(name, f32_default(name, default)?),
        })
    }

    /// Adds a statistics column (float32, refreshed by `update_stats`).
    #[pyo3(signature = (name, default = 0.0))]
    fn stat(&self, name: &str, default: f64) -> PyResult<Self> {
        Ok(PySchema {
            inner: self.inner.clone().stat(name, f32_default(name, default)?),
        })
    }
}

/// A column's default as float32: a finite value beyond float32's range
/// is refused naming the column (it would round to infinity, and the
/// schema's check would then report "inf", not what was given).
fn f32_default(name: &str, default: f64) -> PyResult<f32> {
    if default.is_finite() && default.abs() > f32::MAX as f64 {
        return Err(invalid(format!(
            "column {name:?}: default {default:e} is beyond float32's range (the store keeps float32)"
        )));
    }
    Ok(default as f32)
}

/// The store's one writer (`vstore.create` / `Writer.open`).
#[pyclass(name = "Writer", module = "vstore", frozen)]
struct PyWriter {
    inner: SharedWriter,
}

/// A writer shared by its Python object and its transactions; `None` once
/// closed (the store's lock released).
#[derive(Clone)]
struct SharedWriter(Arc<Mutex<Option<vstore::Writer>>>);

impl SharedWriter {
    fn new(w: vstore::Writer) -> Self {
        SharedWriter(Arc::new(Mutex::new(Some(w))))
    }

    /// Runs `f` on the writer with the GIL released; `InvalidInputError`
    /// if it is closed.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut vstore::Writer) -> vstore::Result<T> + Send,
    ) -> PyResult<T> {
        let me = self.clone();
        py.detach(move || match me.lock().as_mut() {
            Some(w) => f(w).map_err(Some),
            None => Err(None),
        })
        .map_err(|e| e.map_or_else(closed, err))
    }

    /// Runs `f` on the writer (a quick call: the GIL kept);
    /// `InvalidInputError` if it is closed.
    fn with<T>(&self, f: impl FnOnce(&mut vstore::Writer) -> T) -> PyResult<T> {
        self.lock().as_mut().map(f).ok_or_else(closed)
    }

    /// The writer slot (a panic while it was held leaves the writer as the
    /// failed call left it, which poisons the writer itself if that
    /// matters).
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<vstore::Writer>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The error of a call on a closed writer.
fn closed() -> PyErr {
    invalid(
        "this writer is closed (Writer.close(), or the end of its `with` block); \
         open the store again with vstore.Writer.open(path)",
    )
}

#[pymethods]
impl PyWriter {
    /// Opens the writer of the existing store at `path` (taking its lock).
    #[staticmethod]
    fn open(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let w = py.detach(|| vstore::Writer::open(&path)).map_err(err)?;
        Ok(PyWriter {
            inner: SharedWriter::new(w),
        })
    }

    /// Closes the writer: releases the store's lock, so that another
    /// writer (of this process or another) may open it. Its transactions
    /// not yet committed can no longer commit; any other call raises
    /// `InvalidInputError`. Closing twice is fine. A compaction job started
    /// from it keeps the lock until the job and its result are dropped.
    fn close(&self) {
        self.inner.lock().take();
    }

    /// Whether [`close`](PyWriter::close) was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.lock().is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the writer at the end of a `with` block.
    fn __exit__(
        &self,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }

    /// Starts a compaction of the newest snapshot that runs without the
    /// writer (`job.run()`, on any thread) while it goes on publishing;
    /// None if there is nothing to merge. Publish the result with
    /// `Transaction.apply_compaction`.
    fn start_compaction(&self, py: Python<'_>) -> PyResult<Option<PyCompactionJob>> {
        let job = self.inner.run(py, |w| w.start_compaction())?;
        Ok(job.map(|j| PyCompactionJob {
            base: j.base_snapshot(),
            job: Mutex::new(Some(j)),
        }))
    }

    /// Sets how many snapshots [`gc`](PyWriter::gc) keeps: the newest
    /// `keep_last` (at least 1: 0 is refused), and any whose successor was
    /// published less than `grace_seconds` ago.
    fn set_retention(&self, keep_last: &Bound<'_, PyAny>, grace_seconds: f64) -> PyResult<()> {
        let keep_last = match keep_last.extract::<usize>() {
            Ok(n) if n >= 1 && !keep_last.is_instance_of::<pyo3::types::PyBool>() => n,
            _ => {
                return Err(invalid(format!(
                    "keep_last {}: expected an integer >= 1 (the newest snapshot is always kept)",
                    keep_last.repr()?
                )))
            }
        };
        let grace = seconds("grace_seconds", grace_seconds)?;
        self.inner
            .with(|w| w.set_retention(vstore::Retention { keep_last, grace }))
    }

    /// Removes the snapshots the retention policy does not keep, then every
    /// file no remaining snapshot references; returns what it did as a
    /// dict (`kept`, `removed_snapshots`, `removed_files`,
    /// `unreadable_manifests`, `skipped`, `removed_staging`).
    fn gc<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = self.inner.run(py, |w| w.gc())?;
        let d = PyDict::new(py);
        d.set_item("kept", r.kept)?;
        d.set_item("removed_snapshots", r.removed_snapshots)?;
        d.set_item("removed_files", r.removed_files)?;
        d.set_item("unreadable_manifests", r.unreadable_manifests)?;
        d.set_item("skipped", r.skipped)?;
        d.set_item("removed_staging", r.removed_staging)?;
        Ok(d)
    }

    /// Plans a distributed build of `parts` parts on the newest snapshot
    /// (a snapshot number and a segment id per part reserved; the plan
    /// written to the store's `_staging/<job>/`).
    fn plan_build(
        &self,
        py: Python<'_>,
        job: &str,
        parts: u32,
    ) -> PyResult<distributed::PyBuildPlan> {
        let inner = self.inner.run(py, |w| w.plan_build(job, parts))?;
        Ok(distributed::PyBuildPlan { inner })
    }

    /// Discards a job that was not published: its staging area and any
    /// file an unfinished commit moved in.
    fn abort_build(&self, py: Python<'_>, plan: &distributed::PyBuildPlan) -> PyResult<()> {
        let plan = plan.inner.clone();
        self.inner.run(py, move |w| w.abort_build(&plan))
    }

    /// How old (seconds) a job's staging area must be before `gc` removes
    /// it (default: a day).
    fn set_staging_grace(&self, seconds: f64) -> PyResult<()> {
        let grace = crate::seconds("seconds", seconds)?;
        self.inner.with(|w| w.set_staging_grace(grace))
    }

    /// Publishes snapshot `n`'s content as the newest snapshot (a rollback
    /// that keeps the history; files shared) and returns its number;
    /// `InvalidInputError` naming the files if gc collected any of them.
    fn restore(&self, py: Python<'_>, n: u64) -> PyResult<u64> {
        self.inner.run(py, |w| w.restore(n).map(|s| s.number()))
    }

    /// A transaction: its operations run together, and publish one
    /// snapshot, at `commit()` (or at the end of a `with` block).
    fn begin(&self) -> PyResult<PyTransaction> {
        self.inner.with(|_| ())?;
        Ok(PyTransaction {
            writer: self.inner.clone(),
            ops: Mutex::new(Some(Vec::new())),
        })
    }
}

/// A compaction started by `Writer.start_compaction`, to `run()` once.
#[pyclass(name = "CompactionJob", module = "vstore", frozen)]
struct PyCompactionJob {
    base: u64,
    job: Mutex<Option<vstore::CompactionJob>>,
}

#[pymethods]
impl PyCompactionJob {
    /// The snapshot the job merges.
    #[getter]
    fn base_snapshot(&self) -> u64 {
        self.base
    }

    /// Writes the merged segment (the GIL released; the writer is not
    /// needed) and returns it, for `Transaction.apply_compaction`.
    fn run(&self, py: Python<'_>) -> PyResult<PyCompacted> {
        let job = self
            .job
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| invalid("this compaction job already ran"))?;
        let done = py.detach(move || job.run()).map_err(err)?;
        Ok(PyCompacted {
            base: self.base,
            done: Mutex::new(Some(done)),
        })
    }
}

/// A merged segment a compaction job wrote, to apply once.
#[pyclass(name = "CompactedSegment", module = "vstore", frozen)]
struct PyCompacted {
    base: u64,
    done: Mutex<Option<vstore::CompactedSegment>>,
}

#[pymethods]
impl PyCompacted {
    /// The snapshot the job merged.
    #[getter]
    fn base_snapshot(&self) -> u64 {
        self.base
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
        inner: SharedWriter::new(w),
    })
}

/// One operation of a transaction, applied at commit.
enum Op {
    Add(vstore::ItemBatch),
    Upsert(vstore::ItemBatch),
    Stats(vstore::ItemBatch),
    Delete(Vec<u64>),
    Model {
        json: Vec<u8>,
        weights: Vec<u8>,
        precompute: Option<vstore::Dtype>,
        precision: vstore::Precision,
    },
    ModelDir(std::path::PathBuf),
    DropModel(String, Option<String>),
    Embedding(vstore::EmbeddingDef, Vec<u64>, Vec<f32>),
    Compact(Option<vstore::Compaction>),
    ApplyCompaction(Box<vstore::CompactedSegment>),
    DropItemTower(String),
    DropEmbedding(String),
    ForgetDroppedVersion(String),
    SetMetadata(String, Option<String>),
}

/// A schema's embedding versions: key → dimension (what [`batch`] checks
/// a batch's vectors against).
fn embedding_dims(schema: &vstore::Schema) -> std::collections::BTreeMap<String, u32> {
    (schema.embeddings.iter())
        .map(|d| (d.key(), d.dim))
        .collect()
}

impl Op {
    /// The call that queued this operation, for an error at commit.
    fn describe(&self) -> String {
        match self {
            Op::Add(b) => format!("add_items of {} items", b.ids().len()),
            Op::Upsert(b) => format!("upsert_items of {} items", b.ids().len()),
            Op::Stats(b) => format!("update_stats of {} items", b.ids().len()),
            Op::Delete(ids) => format!("delete_items of {} ids", ids.len()),
            Op::Model { .. } => "add_model".into(),
            Op::ModelDir(dir) => format!("add_model_dir({})", dir.display()),
            Op::DropModel(key, None) => format!("drop_model({key:?})"),
            Op::DropModel(key, Some(name)) => format!("drop_model({key:?}, name={name:?})"),
            Op::Embedding(def, ids, _) => {
                format!("add_embedding of {} for {} items", def.key(), ids.len())
            }
            Op::Compact(_) => "compact".into(),
            Op::ApplyCompaction(_) => "apply_compaction".into(),
            Op::DropItemTower(key) => format!("drop_item_tower({key:?})"),
            Op::DropEmbedding(key) => format!("drop_embedding({key:?})"),
            Op::ForgetDroppedVersion(key) => format!("forget_dropped_version({key:?})"),
            Op::SetMetadata(key, Some(_)) => format!("set_metadata({key:?})"),
            Op::SetMetadata(key, None) => format!("remove_metadata({key:?})"),
        }
    }
}

/// The operations of one snapshot to be (`Writer.begin()`).
#[pyclass(name = "Transaction", module = "vstore", frozen)]
struct PyTransaction {
    writer: SharedWriter,
    /// None once committed or rolled back.
    ops: Mutex<Option<Vec<Op>>>,
}

/// The values of a float `[rows, dim]` array as f32 (float16 converts
/// exactly, float64 and other floats are rounded to float32) and `dim`; an
/// error names `key` if it is not a 2-D float array of `rows` rows.
fn matrix(v: &Bound<'_, PyAny>, key: &str, rows: usize) -> PyResult<(Vec<f32>, usize)> {
    let (shape, values): (Vec<usize>, Vec<f32>) =
        if let Ok(a) = v.extract::<PyReadonlyArray2<'_, f32>>() {
            (a.shape().to_vec(), a.as_array().iter().copied().collect())
        } else if let Ok(a) = v.extract::<PyReadonlyArray2<'_, half::f16>>() {
            (
                a.shape().to_vec(),
                a.as_array().iter().map(|h| h.to_f32()).collect(),
            )
        } else {
            let (values, shape) = floats_arg(v, &format!("embedding {key:?}"), 2)?;
            let values = match values {
                Floats::Copied(v) => v,
                in_place => in_place.as_slice().to_vec(),
            };
            (shape, values)
        };
    if shape[0] != rows {
        return Err(invalid(format!(
            "embedding {key:?}: {} rows for {rows} ids",
            shape[0]
        )));
    }
    Ok((values, shape[1]))
}

/// The values of a 1-D column (a numpy array, list, pandas Series or
/// pyarrow array) as float64 through `numpy.asarray`, so that `None`, NaN
/// and pandas' NA all read as NaN (a missing value). Strings and booleans
/// are refused (numpy would read `"3.5"` as 3.5 and `True` as 1).
fn floats(py: Python<'_>, v: &Bound<'_, PyAny>, what: &str, rows: usize) -> PyResult<Vec<f64>> {
    let np = py.import("numpy")?;
    let raw = np
        .call_method1("asarray", (v,))
        .map_err(|e| invalid(format!("{what}: not a column of numbers ({e})")))?;
    let dtype = raw.getattr("dtype")?;
    let kind: String = dtype.getattr("kind")?.extract()?;
    if matches!(kind.as_str(), "S" | "U" | "b" | "M" | "m" | "c" | "V") {
        let name: String = dtype.getattr("name")?.extract()?;
        let holds = match kind.as_str() {
            "b" => "booleans",
            "M" => "dates and times",
            "m" => "durations",
            "c" => "complex numbers",
            "V" => "records",
            _ => "strings",
        };
        return Err(invalid(format!(
            "{what}: expected numbers, the column holds {holds} ({name})"
        )));
    }
    // An object column (pandas' string and nullable columns, pyarrow and
    // polars through arrow): numpy would read "3.5" as 3.5 and True as 1.
    if kind == "O" {
        for (row, x) in raw.try_iter()?.enumerate() {
            let x = x?;
            let ty = x.get_type().name()?.to_string();
            if matches!(
                ty.as_str(),
                "str" | "str_" | "bytes" | "bytes_" | "bool" | "bool_"
            ) {
                return Err(invalid(format!(
                    "{what}, row {row}: expected a number, not {} ({ty})",
                    x.repr()?
                )));
            }
        }
    }
    let kw = PyDict::new(py);
    kw.set_item("dtype", "float64")?;
    let a = np
        .call_method("asarray", (raw,), Some(&kw))
        .map_err(|e| invalid(format!("{what}: not a column of numbers ({e})")))?;
    let a: PyReadonlyArray1<'_, f64> = a
        .extract()
        .map_err(|_| invalid(format!("{what}: expected a 1-D column")))?;
    if a.len() != rows {
        return Err(invalid(format!("{what}: {} rows for {rows} ids", a.len())));
    }
    Ok(a.as_array().to_vec())
}

/// A categorical column: codes in 0..=u32::MAX, missing values (NaN,
/// None, NA) as `None`; an error names the column and the row.
fn codes(
    py: Python<'_>,
    v: &Bound<'_, PyAny>,
    name: &str,
    rows: usize,
) -> PyResult<Vec<Option<u32>>> {
    let what = format!("categorical column {name:?}");
    floats(py, v, &what, rows)?
        .into_iter()
        .enumerate()
        .map(|(row, x)| {
            if x.is_nan() {
                Ok(None)
            } else if x.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&x) {
                Ok(Some(x as u32))
            } else {
                Err(invalid(format!(
                    "{what}, row {row}: {x} is not a category code (0 to 4294967295)"
                )))
            }
        })
        .collect()
}

/// A numeric or statistics column as f32, missing values as `None`; a
/// finite value beyond float32's range is refused naming the row (it
/// would round to infinity).
fn numbers(
    py: Python<'_>,
    v: &Bound<'_, PyAny>,
    what: &str,
    rows: usize,
) -> PyResult<Vec<Option<f32>>> {
    floats(py, v, what, rows)?
        .into_iter()
        .enumerate()
        .map(|(row, x)| {
            if x.is_finite() && x.abs() > f32::MAX as f64 {
                return Err(invalid(format!(
                    "{what}, row {row}: {x:e} is beyond float32's range (the store keeps float32)"
                )));
            }
            Ok((!x.is_nan()).then_some(x as f32))
        })
        .collect()
}

/// The (name, column) pairs of a table: a dict, a pandas DataFrame
/// (`.items()`), a pyarrow Table (`.column_names`) or a polars DataFrame
/// (read through its `.to_arrow()`).
fn table_columns<'py>(t: &Bound<'py, PyAny>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    let is_polars = t
        .get_type()
        .module()
        .is_ok_and(|m| m.to_string().starts_with("polars"));
    if is_polars {
        return table_columns(&t.call_method0("to_arrow")?);
    }
    if let Ok(names) = t.getattr("column_names") {
        let names: Vec<String> = names.extract()?;
        return names
            .into_iter()
            .map(|n| Ok((n.clone(), t.call_method1("column", (n,))?)))
            .collect();
    }
    let items = t.call_method0("items").map_err(|_| {
        invalid("expected a dict, a pandas DataFrame, a pyarrow Table or a polars DataFrame")
    })?;
    items
        .try_iter()?
        .map(|kv| kv?.extract::<(String, Bound<'py, PyAny>)>())
        .collect()
}

/// A batch of items: `ids` (see [`ids_arg`]), `embeddings` (key → a
/// float `[n, dim]` array, see [`matrix`]), `profile` (a table of profile columns, each
/// categorical or numeric as the schema says), `stats` (a table of
/// statistics columns), `categorical` / `numeric` (dicts of columns by
/// kind). Missing values (NaN, None, NA) take the column's default.
#[allow(clippy::too_many_arguments)]
fn batch(
    py: Python<'_>,
    schema: &vstore::Schema,
    dims: &std::collections::BTreeMap<String, u32>,
    ids: &Bound<'_, PyAny>,
    embeddings: Option<&Bound<'_, PyDict>>,
    profile: Option<&Bound<'_, PyAny>>,
    stats: Option<&Bound<'_, PyAny>>,
    categorical: Option<&Bound<'_, PyDict>>,
    numeric: Option<&Bound<'_, PyDict>>,
) -> PyResult<vstore::ItemBatch> {
    let ids = ids_arg(ids, "ids")?.into_vec();
    let n = ids.len();
    let mut b = vstore::ItemBatch::new(ids);
    for (k, v) in embeddings.into_iter().flatten() {
        let key: String = k.extract()?;
        let Some(&want) = dims.get(&key) else {
            return Err(invalid(format!(
                "embedding {key:?} is not a version of the store (it has [{}]); add one with \
                 Transaction.add_embedding (earlier in the same transaction is fine)",
                dims.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let (values, dim) = matrix(&v, &key, n)?;
        // (An empty batch's array may be [0, 0].)
        if n > 0 && dim != want as usize {
            return Err(invalid(format!(
                "embedding {key:?}: vectors of {dim} values, but the version has dimension {want}"
            )));
        }
        b = b.embedding(&key, values);
    }
    let mut cat: Vec<(String, Bound<'_, PyAny>)> = Vec::new();
    let mut num: Vec<(String, Bound<'_, PyAny>)> = Vec::new();
    if let Some(t) = profile {
        for (name, col) in table_columns(t)? {
            match schema
                .profile
                .iter()
                .find(|c| c.name == name)
                .map(|c| &c.kind)
            {
                Some(vstore::ColumnKind::Categorical { .. }) => cat.push((name, col)),
                Some(_) => num.push((name, col)),
                None => {
                    return Err(NoSuchColumnError::new_err(format!(
                        "profile column {name:?} is not in the schema"
                    )))
                }
            }
        }
    }
    // The dicts by kind: each name a profile column of that kind.
    let profile_kind = |name: &str, categorical: bool| -> PyResult<()> {
        let kind = if categorical {
            "categorical"
        } else {
            "numeric"
        };
        match schema.profile.iter().find(|c| c.name == name) {
            None => Err(NoSuchColumnError::new_err(format!(
                "{kind} column {name:?} is not in the schema (its profile columns: [{}])",
                schema
                    .profile
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            Some(c) if matches!(c.kind, vstore::ColumnKind::Categorical { .. }) != categorical => {
                Err(invalid(format!(
                    "column {name:?} is given as {kind}, but the schema's column is {}",
                    if categorical {
                        "numeric"
                    } else {
                        "categorical"
                    }
                )))
            }
            Some(_) => Ok(()),
        }
    };
    for (k, v) in categorical.into_iter().flatten() {
        let name: String = k.extract()?;
        profile_kind(&name, true)?;
        cat.push((name, v));
    }
    for (k, v) in numeric.into_iter().flatten() {
        let name: String = k.extract()?;
        profile_kind(&name, false)?;
        num.push((name, v));
    }
    for (name, col) in cat {
        b = b.categorical_opt(&name, codes(py, &col, &name, n)?);
    }
    for (name, col) in num {
        let what = format!("numeric column {name:?}");
        b = b.numeric_opt(&name, numbers(py, &col, &what, n)?);
    }
    if let Some(t) = stats {
        for (name, col) in table_columns(t)? {
            if !schema.stats.iter().any(|c| c.name == name) {
                return Err(NoSuchColumnError::new_err(format!(
                    "statistics column {name:?} is not in the schema (its statistics: [{}])",
                    schema
                        .stats
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let what = format!("statistics column {name:?}");
            b = b.stat_opt(&name, numbers(py, &col, &what, n)?);
        }
    }
    Ok(b)
}

impl PyTransaction {
    /// The writer's schema (to sort a table's columns by kind).
    fn schema(&self) -> PyResult<vstore::Schema> {
        self.writer.with(|w| w.schema().clone())
    }

    /// The embedding versions (key → dimension) the transaction's
    /// operations so far leave: the writer's, with those added and dropped
    /// by earlier operations (so a batch's keys and widths are checked at
    /// the call).
    fn embedding_dims(
        &self,
        schema: &vstore::Schema,
    ) -> PyResult<std::collections::BTreeMap<String, u32>> {
        let mut dims = embedding_dims(schema);
        let ops = self.ops.lock().expect("not poisoned");
        for op in ops.iter().flatten() {
            match op {
                Op::Embedding(def, _, _) => {
                    dims.insert(def.key(), def.dim);
                }
                Op::DropEmbedding(key) => {
                    dims.remove(key);
                }
                _ => {}
            }
        }
        Ok(dims)
    }

    /// [`batch`] against the schema as the earlier operations leave it.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        embeddings: Option<&Bound<'_, PyDict>>,
        profile: Option<&Bound<'_, PyAny>>,
        stats: Option<&Bound<'_, PyAny>>,
        categorical: Option<&Bound<'_, PyDict>>,
        numeric: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(vstore::ItemBatch, vstore::Schema)> {
        let schema = self.schema()?;
        let dims = self.embedding_dims(&schema)?;
        let b = batch(
            py,
            &schema,
            &dims,
            ids,
            embeddings,
            profile,
            stats,
            categorical,
            numeric,
        )?;
        Ok((b, schema))
    }

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
    /// Adds new items (ids not in the store; uint64, or integers with no
    /// negative value): `embeddings` (key → float32 or float16 `[n, dim]`;
    /// float64 is converted to float32), `profile` and `stats` (a dict of columns, a
    /// pandas DataFrame or a pyarrow Table; missing values take the
    /// column's default), or `categorical` / `numeric` (dicts of columns).
    #[pyo3(signature = (ids, embeddings = None, profile = None, stats = None, *, categorical = None, numeric = None))]
    #[allow(clippy::too_many_arguments)]
    fn add_items(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        embeddings: Option<&Bound<'_, PyDict>>,
        profile: Option<&Bound<'_, PyAny>>,
        stats: Option<&Bound<'_, PyAny>>,
        categorical: Option<&Bound<'_, PyDict>>,
        numeric: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let (b, _) = self.batch(py, ids, embeddings, profile, stats, categorical, numeric)?;
        self.push(Op::Add(b))
    }

    /// Adds or replaces items (as [`add_items`](PyTransaction::add_items)).
    /// A replaced item is replaced whole: a profile or statistics column
    /// not given takes its default for it (its old value is not kept), as
    /// does an embedding version not given unless its item tower computes
    /// it. If ids already in the newest snapshot are replaced and schema
    /// columns are not given, a `ReplacedItemsWarning` names the columns
    /// (`update_stats` changes statistics without replacing items).
    #[pyo3(signature = (ids, embeddings = None, profile = None, stats = None, *, categorical = None, numeric = None))]
    #[allow(clippy::too_many_arguments)]
    fn upsert_items(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        embeddings: Option<&Bound<'_, PyDict>>,
        profile: Option<&Bound<'_, PyAny>>,
        stats: Option<&Bound<'_, PyAny>>,
        categorical: Option<&Bound<'_, PyDict>>,
        numeric: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let (b, schema) = self.batch(py, ids, embeddings, profile, stats, categorical, numeric)?;
        // As the CLI's note: say which columns replaced items lose.
        let reset = b.columns_left_out(&schema);
        if !reset.is_empty() {
            let snap = self.writer.with(|w| w.snapshot())?;
            let replaced = snap.map_or(0, |s| {
                b.ids().iter().filter(|&&id| s.lookup(id).is_some()).count()
            });
            if replaced > 0 {
                let msg = format!(
                    "upsert_items: {replaced} of the {} items are already in the store and are \
                     replaced whole; {} not given, so the replaced items now take the default \
                     (update_stats changes statistics without replacing items)",
                    b.ids().len(),
                    reset.join(", ")
                );
                warn::<ReplacedItemsWarning>(py, &msg)?;
            }
        }
        self.push(Op::Upsert(b))
    }

    /// Replaces the statistics of existing items (`stats`: a dict of
    /// columns, a pandas DataFrame or a pyarrow Table).
    fn update_stats(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        stats: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (b, _) = self.batch(py, ids, None, None, Some(stats), None, None)?;
        self.push(Op::Stats(b))
    }

    /// Deletes items (`ids`: unsigned or non-negative signed integers).
    fn delete_items(&self, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        self.push(Op::Delete(ids_arg(ids, "ids")?.into_vec()))
    }

    /// Adds a model bundle (`model.json` text or bytes, and the
    /// safetensors bytes): its dense layers at `precision` (`f32`, `bf16`,
    /// `int8`), the item part of its first layer precomputed as
    /// `precompute` (`f16`, `f32`...) if given.
    #[pyo3(signature = (json, weights, *, precision = "f32", precompute = None))]
    fn add_model(
        &self,
        json: &Bound<'_, PyAny>,
        weights: &[u8],
        precision: &str,
        precompute: Option<&str>,
    ) -> PyResult<()> {
        let json: Vec<u8> = match json.extract::<String>() {
            Ok(s) => s.into_bytes(),
            Err(_) => json
                .extract()
                .map_err(|_| invalid("json: expected str or bytes"))?,
        };
        let precision = vstore::Precision::parse(precision).ok_or_else(|| {
            invalid(format!(
                "precision {precision:?}: expected f32, bf16 or int8"
            ))
        })?;
        let precompute = precompute
            .map(vstore::Dtype::parse)
            .transpose()
            .map_err(err)?;
        self.push(Op::Model {
            json,
            weights: weights.to_vec(),
            precompute,
            precision,
        })
    }

    /// Adds the bundle in directory `path` (`model.json` and
    /// `weights.safetensors`).
    fn add_model_dir(&self, path: std::path::PathBuf) -> PyResult<()> {
        self.push(Op::ModelDir(path))
    }

    /// Drops the bundle of `version` (`name`: one of several).
    #[pyo3(signature = (version, name = None))]
    fn drop_model(&self, version: &str, name: Option<&str>) -> PyResult<()> {
        self.push(Op::DropModel(version.into(), name.map(str::to_string)))
    }

    /// Adds the embedding version `space@version` of `dtype` with a vector
    /// per live item (`ids`, and `vectors` float32 or float16 `[n, dim]`).
    fn add_embedding(
        &self,
        space: &str,
        version: &str,
        dtype: &str,
        ids: &Bound<'_, PyAny>,
        vectors: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let dtype = vstore::Dtype::parse(dtype).map_err(err)?;
        let ids = ids_arg(ids, "ids")?.into_vec();
        let (values, dim) = matrix(vectors, &format!("{space}@{version}"), ids.len())?;
        let def = vstore::EmbeddingDef::new(space, version, dim as u32, dtype);
        self.push(Op::Embedding(def, ids, values))
    }

    /// Drops embedding `version` (`space@version`): its vectors and the
    /// bundles of that version (queries naming it then fail with
    /// `VersionSkewError`).
    fn drop_embedding(&self, version: &str) -> PyResult<()> {
        self.push(Op::DropEmbedding(version.into()))
    }

    /// Forgets that `version` (`space@version`) was dropped earlier in the
    /// store's history, so `add_embedding` may take the name again: only
    /// for vectors made by the same model as the dropped ones (a new model
    /// needs a new version string; without this, the name is refused).
    fn forget_dropped_version(&self, version: &str) -> PyResult<()> {
        self.push(Op::ForgetDroppedVersion(version.into()))
    }

    /// Drops the item tower of `version` (`space@version`).
    fn drop_item_tower(&self, version: &str) -> PyResult<()> {
        self.push(Op::DropItemTower(version.into()))
    }

    /// Sets the snapshot's metadata entry `key` (a string the store keeps
    /// with the snapshot: the job that built it, a model run id, ...).
    /// Keys starting `vstore.` are the library's: refused.
    fn set_metadata(&self, key: &str, value: &str) -> PyResult<()> {
        // At the call, not only at commit.
        vstore::check_metadata_key(key).map_err(err)?;
        self.push(Op::SetMetadata(key.into(), Some(value.into())))
    }

    /// Removes the metadata entry `key` (a `vstore.` key is refused).
    fn remove_metadata(&self, key: &str) -> PyResult<()> {
        vstore::check_metadata_key(key).map_err(err)?;
        self.push(Op::SetMetadata(key.into(), None))
    }

    /// Merges every segment into one, dropping deleted rows (vectors are
    /// copied byte for byte; every source file's checksums are verified
    /// first). With `max_segments` or `max_dead_fraction`, only when the
    /// snapshot has more segments, or a larger deleted fraction, than that
    /// (the other bound at its default: 8 segments, 0.2).
    #[pyo3(signature = (*, max_segments = None, max_dead_fraction = None))]
    fn compact(&self, max_segments: Option<usize>, max_dead_fraction: Option<f64>) -> PyResult<()> {
        let policy = if max_segments.is_none() && max_dead_fraction.is_none() {
            None
        } else {
            let d = vstore::Compaction::default();
            Some(vstore::Compaction {
                max_segments: max_segments.unwrap_or(d.max_segments),
                max_dead_fraction: max_dead_fraction.unwrap_or(d.max_dead_fraction),
            })
        };
        self.push(Op::Compact(policy))
    }

    /// Publishes a compaction a [`CompactionJob`](PyCompactionJob) wrote
    /// while the writer went on publishing (rebased onto this snapshot);
    /// `CompactionConflictError` if another compaction merged one of its
    /// sources since, or a restore brought back rows it did not copy.
    fn apply_compaction(&self, done: &PyCompacted) -> PyResult<()> {
        let seg = done
            .done
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| invalid("this compaction was already applied"))?;
        self.push(Op::ApplyCompaction(Box::new(seg)))
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
        let total = ops.len();
        // Which operation failed, if one did: its error then names it.
        let failed: Mutex<Option<String>> = Mutex::new(None);
        let failed_ref = &failed;
        let r = self.writer.run(py, move |w| {
            let mut tx = w.begin();
            for (i, op) in ops.into_iter().enumerate() {
                let what = op.describe();
                if let Err(e) = apply(&mut tx, op) {
                    *failed_ref.lock().expect("not poisoned") =
                        Some(format!("operation {} of {total} ({what})", i + 1));
                    return Err(e);
                }
            }
            tx.commit().map(|s| s.number())
        });
        r.map_err(|e| match failed.into_inner().expect("not poisoned") {
            Some(op) => {
                let msg = format!("{op}: {}", e.value(py));
                PyErr::from_type(e.get_type(py), msg)
            }
            None => e,
        })
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
    m.add_function(wrap_pyfunction!(check_bundle, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_level, m)?)?;
    m.add_function(wrap_pyfunction!(distributed::stage, m)?)?;
    m.add_function(wrap_pyfunction!(distributed::commit_build, m)?)?;
    m.add_function(wrap_pyfunction!(distributed::published_build, m)?)?;
    m.add_function(wrap_pyfunction!(distributed::abort_build, m)?)?;
    m.add_function(wrap_pyfunction!(distributed::abort_job, m)?)?;
    m.add_class::<distributed::PyBuildPlan>()?;
    m.add_class::<distributed::PyBuildReceipt>()?;
    m.add_class::<PyStore>()?;
    m.add_class::<PySnapshot>()?;
    m.add_class::<PyQueryResult>()?;
    m.add_class::<PySchema>()?;
    m.add_class::<PyWriter>()?;
    m.add_class::<PyTransaction>()?;
    m.add_class::<PyFilter>()?;
    m.add_class::<PyCompactionJob>()?;
    m.add_class::<PyCompacted>()?;
    m.add("FORMAT_VERSION", vstore::FORMAT_VERSION)?;
    add_exceptions(m)
}

/// Runs one queued operation on `tx`.
fn apply(tx: &mut vstore::Transaction<'_>, op: Op) -> vstore::Result<()> {
    match op {
        Op::Add(b) => tx.add_items(b)?,
        Op::Upsert(b) => tx.upsert_items(b)?,
        Op::Stats(b) => tx.update_stats(b)?,
        Op::Delete(ids) => tx.delete_items(&ids)?,
        Op::Model {
            json,
            weights,
            precompute,
            precision,
        } => {
            tx.add_model_with(&json, &weights, precompute, precision)?;
        }
        Op::ModelDir(dir) => {
            tx.add_model_dir(&dir)?;
        }
        Op::DropModel(key, None) => tx.drop_model(&key)?,
        Op::DropModel(key, Some(name)) => tx.drop_model_named(&key, &name)?,
        Op::Embedding(def, ids, vectors) => tx.add_embedding(def, &ids, &vectors)?,
        Op::ApplyCompaction(done) => {
            tx.apply_compaction(*done)?;
        }
        Op::DropItemTower(key) => tx.drop_item_tower(&key)?,
        Op::DropEmbedding(key) => tx.drop_embedding(&key)?,
        Op::ForgetDroppedVersion(key) => {
            tx.forget_dropped_version(&key)?;
        }
        Op::SetMetadata(key, Some(value)) => tx.set_metadata(&key, &value)?,
        Op::SetMetadata(key, None) => tx.remove_metadata(&key)?,
        Op::Compact(None) => {
            tx.compact()?;
        }
        Op::Compact(Some(policy)) => {
            tx.compact_if(&policy)?;
        }
    }
    Ok(())
}
