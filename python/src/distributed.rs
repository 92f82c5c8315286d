//! Distributed builds from Python: `Writer.plan_build`, `stage`,
//! `commit_build`, `Writer.abort_build` and the plan and receipt objects,
//! which pickle (as JSON) so Dask, Ray and Spark ship them to workers.
//! The engine helpers are Python (`vstore/distributed.py`).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::{batch, err, seconds};

/// A distributed build job planned by `Writer.plan_build` (or
/// `BuildPlan.load`): ship it to workers (it pickles), stage each part
/// with `vstore.stage`, commit with `vstore.commit_build`.
#[pyclass(name = "BuildPlan", module = "vstore", frozen)]
pub(crate) struct PyBuildPlan {
    pub(crate) inner: vstore::BuildPlan,
}

#[pymethods]
impl PyBuildPlan {
    /// The job id.
    #[getter]
    fn job(&self) -> &str {
        self.inner.job()
    }

    /// How many parts (one segment each) the job has.
    #[getter]
    fn parts(&self) -> u32 {
        self.inner.parts()
    }

    /// The snapshot the job builds on (None: an empty store).
    #[getter]
    fn base(&self) -> Option<u64> {
        self.inner.base()
    }

    /// The store directory as the driver named it.
    #[getter]
    fn store(&self) -> std::path::PathBuf {
        self.inner.store().to_path_buf()
    }

    /// The profile column names of the plan's schema.
    #[getter]
    fn profile_columns(&self) -> Vec<String> {
        self.inner
            .schema()
            .profile
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// The statistics column names of the plan's schema.
    #[getter]
    fn stats_columns(&self) -> Vec<String> {
        self.inner
            .schema()
            .stats
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// The embedding versions (`space@version`) of the plan's schema.
    #[getter]
    fn embedding_keys(&self) -> Vec<String> {
        self.inner.schema().embedding_keys()
    }

    /// The same plan with the store at `path` (workers that mount the
    /// store's directory elsewhere).
    fn with_store(&self, path: std::path::PathBuf) -> Self {
        PyBuildPlan {
            inner: self.inner.clone().with_store(path),
        }
    }

    /// The plan as JSON.
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    /// A plan from `to_json`'s output.
    #[staticmethod]
    fn from_json(s: &str) -> PyResult<Self> {
        Ok(PyBuildPlan {
            inner: vstore::BuildPlan::from_json(s).map_err(err)?,
        })
    }

    /// The plan of job `job` staged in the store at `path` (a driver run
    /// again resumes the job with it).
    #[staticmethod]
    fn load(path: std::path::PathBuf, job: &str) -> PyResult<Self> {
        Ok(PyBuildPlan {
            inner: vstore::BuildPlan::load(path, job).map_err(err)?,
        })
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let from_json = py.get_type::<PyBuildPlan>().getattr("from_json")?;
        let args = PyTuple::new(py, [slf.get().inner.to_json()])?;
        PyTuple::new(py, [from_json.into_any(), args.into_any()])
    }

    fn __repr__(&self) -> String {
        format!(
            "BuildPlan(job={:?}, parts={}, base={:?})",
            self.inner.job(),
            self.inner.parts(),
            self.inner.base()
        )
    }
}

/// What `vstore.stage` returns for one part: hand every part's receipt to
/// `vstore.commit_build`. Pickles (as JSON).
#[pyclass(name = "BuildReceipt", module = "vstore", frozen)]
pub(crate) struct PyBuildReceipt {
    pub(crate) inner: vstore::BuildReceipt,
}

#[pymethods]
impl PyBuildReceipt {
    /// The part staged.
    #[getter]
    fn part(&self) -> u32 {
        self.inner.part()
    }

    /// The job id.
    #[getter]
    fn job(&self) -> &str {
        self.inner.job()
    }

    /// The part's rows.
    #[getter]
    fn rows(&self) -> u64 {
        self.inner.rows()
    }

    /// The smallest and largest id (None for an empty part).
    #[getter]
    fn id_range(&self) -> Option<(u64, u64)> {
        self.inner.id_range()
    }

    /// The receipt as JSON.
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    /// A receipt from `to_json`'s output.
    #[staticmethod]
    fn from_json(s: &str) -> PyResult<Self> {
        Ok(PyBuildReceipt {
            inner: vstore::BuildReceipt::from_json(s).map_err(err)?,
        })
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let from_json = py.get_type::<PyBuildReceipt>().getattr("from_json")?;
        let args = PyTuple::new(py, [slf.get().inner.to_json()])?;
        PyTuple::new(py, [from_json.into_any(), args.into_any()])
    }

    fn __repr__(&self) -> String {
        format!(
            "BuildReceipt(job={:?}, part={}, rows={})",
            self.inner.job(),
            self.inner.part(),
            self.inner.rows()
        )
    }
}

/// Stages part `part` of `plan` from the rows given (as
/// `Transaction.add_items` takes them): written into the store's staging
/// area without the writer lock (the GIL released); returns the receipt.
#[pyfunction]
#[pyo3(signature = (plan, part, ids, embeddings = None, profile = None, stats = None, *, categorical = None, numeric = None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage(
    py: Python<'_>,
    plan: &PyBuildPlan,
    part: u32,
    ids: &Bound<'_, PyAny>,
    embeddings: Option<&Bound<'_, PyDict>>,
    profile: Option<&Bound<'_, PyAny>>,
    stats: Option<&Bound<'_, PyAny>>,
    categorical: Option<&Bound<'_, PyDict>>,
    numeric: Option<&Bound<'_, PyDict>>,
) -> PyResult<PyBuildReceipt> {
    let schema = plan.inner.schema();
    let dims = crate::embedding_dims(schema);
    let b = batch(
        py,
        schema,
        &dims,
        ids,
        embeddings,
        profile,
        stats,
        categorical,
        numeric,
    )?;
    let plan = plan.inner.clone();
    let inner = py
        .detach(move || vstore::stage(&plan, part, b))
        .map_err(err)?;
    Ok(PyBuildReceipt { inner })
}

/// Commits a distributed build: checks every receipt against its files and
/// the ids against each other and the store, moves the files in and
/// publishes one snapshot; returns its number. Retried after it succeeded,
/// returns the same number. `rebase`: build on a snapshot published since
/// the plan (else `ConflictError`); `compact`: merge the segments in the
/// same commit; `lock_timeout`: seconds to wait for another writer.
#[pyfunction]
#[pyo3(signature = (path, plan, receipts, *, rebase = false, compact = false, lock_timeout = 60.0))]
pub(crate) fn commit_build(
    py: Python<'_>,
    path: std::path::PathBuf,
    plan: &PyBuildPlan,
    receipts: Vec<PyRef<'_, PyBuildReceipt>>,
    rebase: bool,
    compact: bool,
    lock_timeout: f64,
) -> PyResult<u64> {
    let lock_timeout = seconds("lock_timeout", lock_timeout)?;
    let receipts: Vec<vstore::BuildReceipt> = receipts.iter().map(|r| r.inner.clone()).collect();
    let plan = plan.inner.clone();
    let opts = vstore::CommitOptions {
        rebase,
        compact,
        lock_timeout,
    };
    py.detach(move || vstore::commit_build(&path, &plan, &receipts, &opts))
        .map(|s| s.number())
        .map_err(err)
}

/// The snapshot that published build job `job` in the store at `path`,
/// or None.
#[pyfunction]
pub(crate) fn published_build(path: std::path::PathBuf, job: &str) -> PyResult<Option<u64>> {
    vstore::published_build(path, job).map_err(err)
}

/// Discards job `job` of the store at `path` by its id: as `abort_build`
/// with its staged plan, or a job whose plan was never written whole (no
/// `PLAN.json`: a plan stopped by a full disk) removed under the writer
/// lock. Waits up to `lock_timeout` seconds for another writer.
#[pyfunction]
#[pyo3(signature = (path, job, *, lock_timeout = 60.0))]
pub(crate) fn abort_job(
    py: Python<'_>,
    path: std::path::PathBuf,
    job: &str,
    lock_timeout: f64,
) -> PyResult<()> {
    let t = seconds("lock_timeout", lock_timeout)?;
    py.detach(move || vstore::abort_job(&path, job, t))
        .map_err(err)
}

/// Discards staged job `plan` of the store at `path` (its staging area,
/// and any file an unfinished commit moved in); refused if it was
/// published. Waits up to `lock_timeout` seconds for another writer.
#[pyfunction]
#[pyo3(signature = (path, plan, *, lock_timeout = 60.0))]
pub(crate) fn abort_build(
    py: Python<'_>,
    path: std::path::PathBuf,
    plan: &PyBuildPlan,
    lock_timeout: f64,
) -> PyResult<()> {
    let t = seconds("lock_timeout", lock_timeout)?;
    let plan = plan.inner.clone();
    py.detach(move || vstore::abort_build(&path, &plan, t))
        .map_err(err)
}
