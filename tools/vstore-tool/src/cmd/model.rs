//! `add-model` and `drop-model`: model bundles for three-tower scoring.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use vstore::{Dtype, Model, Writer};

use crate::cli::{AddModelArgs, DropArgs};
use crate::error::{Context, Result, ToolError};
use crate::report;
use crate::say;

/// Reads `model.json` and `weights.safetensors` from a bundle directory.
pub fn read_bundle(dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    if !dir.is_dir() {
        return Err(ToolError::input(
            dir,
            "not a bundle directory (expected a directory holding model.json and weights.safetensors)",
        ));
    }
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| ToolError::io("read", &p, e))
    };
    Ok((read("model.json")?, read("weights.safetensors")?))
}

/// Parses the `--precompute` dtype (f32 or f16).
pub fn parse_precompute(s: &str) -> Result<Dtype> {
    match s {
        "f32" => Ok(Dtype::F32),
        "f16" => Ok(Dtype::F16),
        _ => Err(ToolError::Usage(format!(
            "--precompute {s:?}: use f32 or f16"
        ))),
    }
}

/// Runs `add-model`.
pub fn add(a: &AddModelArgs, out: &mut dyn Write) -> Result<()> {
    let pre = a.precompute.as_deref().map(parse_precompute).transpose()?;
    let (json, weights) = read_bundle(&a.bundle)?;
    let what = || format!("model bundle {}", a.bundle.display());
    // Checked against a pinned snapshot before the writer's lock is taken,
    // so a refusal leaves the store as it was (the writer checks again).
    let check = |schema: &vstore::Schema, held: Vec<String>| -> Result<(String, bool)> {
        let key = Model::load(&json, &weights, schema)
            .context(what)?
            .key()
            .to_string();
        let replacing = held.contains(&key);
        if replacing && !a.replace {
            return Err(ToolError::Refused(format!(
                "the store already holds a bundle for {key}; pass --replace to replace it"
            )));
        }
        Ok((key, replacing))
    };
    {
        let store = super::open_store(&a.store)?;
        let snap = store.snapshot();
        check(snap.schema(), snap.model_keys())?;
    }
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let held = base.as_ref().map(|b| b.model_keys()).unwrap_or_default();
    let (key, replacing) = check(w.schema(), held)?;
    let t = Instant::now();
    let mut tx = w.begin();
    match pre {
        Some(d) => tx.add_model_precomputed(&json, &weights, d),
        None => tx.add_model(&json, &weights),
    }
    .context(what)?;
    let snap = tx.commit()?;
    say!(
        out,
        "{} bundle for {key}{}",
        if replacing { "replaced the" } else { "added a" },
        match pre {
            Some(d) => format!(" (first-layer item part precomputed as {})", d.name()),
            None => String::new(),
        }
    );
    report::published(out, base.as_ref(), &snap, t.elapsed())
}

/// Runs `drop-model`.
pub fn drop_model(a: &DropArgs, out: &mut dyn Write) -> Result<()> {
    // Checked against a pinned snapshot before the writer's lock is taken,
    // with the writer's own error (the writer checks again).
    {
        let store = super::open_store(&a.store)?;
        let snap = store.snapshot();
        let held = snap.model_keys();
        if !held.contains(&a.key) {
            return Err(vstore::Error::NoModel {
                snapshot: snap.number(),
                requested: a.key.clone(),
                available: held,
            }
            .into());
        }
    }
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let t = Instant::now();
    let mut tx = w.begin();
    tx.drop_model(&a.key)?;
    let snap = tx.commit()?;
    say!(out, "dropped the bundle for {}", a.key);
    report::published(out, base.as_ref(), &snap, t.elapsed())
}
