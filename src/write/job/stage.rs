//! A worker's side of a distributed build: one part's rows written as one
//! segment into the job's staging area, without the writer lock.

use std::collections::HashSet;
use std::sync::Arc;

use super::plan::{BuildPlan, BuildReceipt};
use super::{attempt_name, job_dir};
use crate::error::{Error, Result};
use crate::io::fs::StdFs;
use crate::read::store::Store;
use crate::write::batch::{self, ItemBatch};
use crate::write::compaction::Sink;
use crate::write::items::batch_vectors;
use crate::write::publish::sync_dir;
use crate::write::transaction::ids_unique;
use crate::write::writer::writer_open_options;

/// Stages part `part` of `plan`: checks `batch` against the plan's schema
/// (columns, ids unique, vectors), computes the vectors of embedding
/// versions the batch leaves out with their item tower in the base
/// snapshot, and writes the part's segment files (synced) into a fresh
/// attempt directory of the job's staging area. Needs no lock: any number
/// of workers stage at once, and a part staged twice (a retried task)
/// leaves two attempts, of which the commit takes the one whose receipt it
/// is given. Ids are checked against each other and the store at commit.
/// Returns the receipt to hand to [`super::commit_build`].
pub fn stage(plan: &BuildPlan, part: u32, batch: ItemBatch) -> Result<BuildReceipt> {
    if part >= plan.parts {
        return Err(Error::InvalidInput(format!(
            "job {}: part {part} is out of range (the plan has {} parts)",
            plan.job, plan.parts
        )));
    }
    plan.check_staged()?;
    let schema = &plan.schema;
    batch.check_columns(schema, &[batch::Group::Profile, batch::Group::Stats])?;
    ids_unique(&batch.ids).map_err(|e| in_part(e, plan, part))?;
    let attempt = attempt_name();
    let mut receipt = BuildReceipt::new(plan, part, format!("{part:05}-{attempt}"));
    if batch.is_empty() {
        return Ok(receipt);
    }
    let profile = batch.scalar_columns(schema, batch::Group::Profile);
    // The base snapshot, for item towers, only if a version needs one.
    let needs_tower =
        (schema.embeddings.iter()).any(|d| !batch.embeddings.iter().any(|(k, _)| *k == d.key()));
    let base = match (needs_tower, plan.base) {
        (true, Some(n)) => Some(Store::open_at(&plan.store, n, writer_open_options())?),
        _ => None,
    };
    let snap = base.as_ref().map(Store::snapshot);
    let vectors = batch_vectors(schema, &batch, &profile, |k| {
        snap.as_ref().and_then(|s| s.item_tower(k).map(Arc::clone))
    })?;
    let dir = job_dir(&plan.store, &plan.job).join(&receipt.attempt);
    std::fs::create_dir(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    let fs = StdFs;
    let mut written = HashSet::new();
    let mut sink = Sink {
        dir: &dir,
        fs: &fs,
        number: plan.number,
        written: &mut written,
    };
    let outcome = sink
        .segment(plan.segment_of(part), schema, &batch, &profile, &vectors)
        .and_then(|meta| {
            sync_dir(&fs, &dir)?;
            sync_dir(&fs, &job_dir(&plan.store, &plan.job))?;
            Ok(meta)
        });
    let meta = match outcome {
        Ok(meta) => meta,
        Err(e) => {
            // (A full disk, say.) The attempt is no receipt's: its partial
            // files would only hold the space that was short.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    receipt.rows = meta.rows;
    receipt.min_id = batch.ids.iter().copied().min();
    receipt.max_id = batch.ids.iter().copied().max();
    receipt.meta = Some(meta);
    Ok(receipt)
}

/// `e` with the job and part named, for a duplicate inside one part.
fn in_part(e: Error, plan: &BuildPlan, part: u32) -> Error {
    match e {
        Error::DuplicateId { id, context } => Error::DuplicateId {
            id,
            context: format!("job {} part {part}, {context}", plan.job),
        },
        e => e,
    }
}
