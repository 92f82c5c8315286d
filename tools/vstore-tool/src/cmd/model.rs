//! `add-model` and `drop-model`: model bundles for three-tower scoring.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use vstore::{Dtype, Model, Writer};

use crate::cli::{AddModelArgs, DropVersionArgs};
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
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let schema = w.schema().clone();
    let what = || format!("model bundle {}", a.bundle.display());
    let key = Model::load(&json, &weights, &schema)
        .context(what)?
        .key()
        .to_string();
    let replacing = base.as_ref().is_some_and(|b| b.model_keys().contains(&key));
    if replacing && !a.replace {
        return Err(ToolError::Usage(format!(
            "the store already holds a bundle for {key}; pass --replace to replace it"
        )));
    }
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
pub fn drop_model(a: &DropVersionArgs, out: &mut dyn Write) -> Result<()> {
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let t = Instant::now();
    let mut tx = w.begin();
    tx.drop_model(&a.key)?;
    let snap = tx.commit()?;
    say!(out, "dropped the bundle for {}", a.key);
    report::published(out, base.as_ref(), &snap, t.elapsed())
}
