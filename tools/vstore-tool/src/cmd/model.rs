//! `add-model` and `drop-model`: model bundles for three-tower scoring.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use vstore::{BundleHeader, Dtype, ItemTowerBundle, Model, Precision, Writer};

use crate::cli::{AddModelArgs, DropModelArgs};
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
    let json = crate::inputs::read_text_file(&dir.join("model.json"))?;
    // A device or pipe (e.g. a link to /dev/zero) would be read without
    // end: the weights are a regular file.
    let p = dir.join("weights.safetensors");
    let meta = std::fs::metadata(&p).map_err(|e| ToolError::io("stat", &p, e))?;
    if !meta.is_file() {
        return Err(ToolError::input(&p, "not a regular file"));
    }
    let weights = std::fs::read(&p).map_err(|e| ToolError::io("read", &p, e))?;
    Ok((json, weights))
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

/// Parses `--precision` (f32, bf16 or int8).
pub fn parse_precision(s: &str) -> Result<Precision> {
    Precision::parse(s)
        .ok_or_else(|| ToolError::Usage(format!("--precision {s:?}: use f32, bf16 or int8")))
}

/// Runs `add-model`.
pub fn add(a: &AddModelArgs, out: &mut dyn Write) -> Result<()> {
    let pre = a.precompute.as_deref().map(parse_precompute).transpose()?;
    let precision = parse_precision(&a.precision)?;
    let (json, weights) = read_bundle(&a.bundle)?;
    if BundleHeader::read(&json).is_ok_and(|h| h.is_item_tower_only()) {
        if let Some(d) = pre {
            return Err(ToolError::Refused(format!(
                "--precompute {}: an item-tower-only bundle has no upper network",
                d.name()
            )));
        }
        if precision != Precision::F32 {
            return Err(ToolError::Refused(format!(
                "--precision {}: an item-tower-only bundle runs in f32",
                precision.name()
            )));
        }
        return add_item_tower(a, &json, &weights, out);
    }
    let what = || format!("model bundle {}", a.bundle.display());
    // Checked against a pinned snapshot before the writer's lock is taken,
    // so a refusal leaves the store as it was (the writer checks again).
    let check = |schema: &vstore::Schema,
                 snap: Option<&vstore::Snapshot>|
     -> Result<(Model, bool)> {
        let m = Model::load_at(&json, &weights, schema, precision).context(what)?;
        let held = snap.map(|s| s.model_names(m.key())).unwrap_or_default();
        let replacing = held.iter().any(|n| n == m.name());
        if replacing && !a.replace {
            return Err(ToolError::Refused(format!(
                "the store already holds a bundle named {:?} for {}; pass --replace to replace it, or give the new bundle another \"name\" in model.json",
                m.name(),
                m.key()
            )));
        }
        if let (Some(d), Some(why)) = (pre, m.precompute_refusal()) {
            return Err(ToolError::Refused(format!(
                "--precompute {}: {why}",
                d.name()
            )));
        }
        Ok((m, replacing))
    };
    {
        let store = super::open_store(&a.store)?;
        let snap = store.snapshot();
        check(snap.schema(), Some(&snap))?;
    }
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let (model, replacing) = check(w.schema(), base.as_deref())?;
    let (key, name) = (model.key().to_string(), model.name().to_string());
    let t = Instant::now();
    let mut tx = w.begin();
    tx.add_model_with(&json, &weights, pre, precision)
        .context(what)?;
    let snap = super::commit(tx)?;
    let named = if name == vstore::DEFAULT_BUNDLE_NAME {
        String::new()
    } else {
        format!(" named {name:?}")
    };
    say!(
        out,
        "{} bundle for {key}{named}{}{}",
        if replacing { "replaced the" } else { "added a" },
        match pre {
            Some(d) => format!(" (first-layer item part precomputed as {})", d.name()),
            None => String::new(),
        },
        match precision {
            Precision::F32 => String::new(),
            p => format!(", dense layers at {}", p.name()),
        }
    );
    say!(
        out,
        "  contract v{}: {}",
        model.contract(),
        model.describe()
    );
    report::published(out, base.as_ref(), &snap, t.elapsed(), a.json)
}

/// `add-model` of an item-tower-only bundle.
fn add_item_tower(
    a: &AddModelArgs,
    json: &[u8],
    weights: &[u8],
    out: &mut dyn Write,
) -> Result<()> {
    let what = || format!("item-tower bundle {}", a.bundle.display());
    let check = |snap: &vstore::Snapshot| -> Result<(ItemTowerBundle, bool)> {
        let t = ItemTowerBundle::load(json, weights, snap.schema()).context(what)?;
        let replacing = snap.has_item_tower_bundle(t.key());
        if replacing && !a.replace {
            return Err(ToolError::Refused(format!(
                "the store already holds an item-tower bundle for {}; pass --replace to replace it \
                 (the vectors it computed are computed again with the new tower)",
                t.key()
            )));
        }
        Ok((t, replacing))
    };
    {
        let store = super::open_store(&a.store)?;
        check(&store.snapshot())?;
    }
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let (tower, replacing) = match &base {
        Some(s) => check(s)?,
        None => (
            ItemTowerBundle::load(json, weights, w.schema()).context(what)?,
            false,
        ),
    };
    // Vectors an earlier tower computed (one replaced, or dropped before):
    // the commit computes them again with this one.
    let earlier = match &base {
        Some(s) => s.computed_count(tower.key()).unwrap_or(0),
        None => 0,
    };
    let t = Instant::now();
    let mut tx = w.begin();
    tx.add_model(json, weights).context(what)?;
    let snap = super::commit(tx)?;
    say!(
        out,
        "{} item tower for {}: {}",
        if replacing {
            "replaced the"
        } else {
            "added an"
        },
        tower.key(),
        tower.describe()
    );
    say!(
        out,
        "  items added without a {} vector now get one computed from their profile; {} computed so far",
        tower.key(),
        snap.computed_count(tower.key())?
    );
    if earlier > 0 {
        say!(
            out,
            "  the {earlier} vectors an earlier tower had computed were computed again with this one"
        );
    }
    report::published(out, base.as_ref(), &snap, t.elapsed(), a.json)
}

/// Runs `drop-model`.
pub fn drop_model(a: &DropModelArgs, out: &mut dyn Write) -> Result<()> {
    if a.item_tower {
        return drop_item_tower(a, out);
    }
    let drop = |tx: &mut vstore::Transaction<'_>| match &a.name {
        Some(n) => tx.drop_model_named(&a.key, n),
        None => tx.drop_model(&a.key),
    };
    // Checked against a pinned snapshot before the writer's lock is taken,
    // with the library's own error (the writer checks again).
    {
        let store = super::open_store(&a.store)?;
        let snap = store.snapshot();
        match &a.name {
            Some(n) => snap.model_named(&a.key, n).map(|_| ()),
            None => snap.model(&a.key).map(|_| ()),
        }?;
    }
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let t = Instant::now();
    let mut tx = w.begin();
    drop(&mut tx)?;
    let snap = super::commit(tx)?;
    match &a.name {
        Some(n) => say!(out, "dropped the bundle {n:?} for {}", a.key),
        None => say!(out, "dropped the bundle for {}", a.key),
    }
    report::published(out, base.as_ref(), &snap, t.elapsed(), a.json)
}

/// `drop-model --item-tower`: removes the version's item-tower-only bundle.
fn drop_item_tower(a: &DropModelArgs, out: &mut dyn Write) -> Result<()> {
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let t = Instant::now();
    let mut tx = w.begin();
    tx.drop_item_tower(&a.key)?;
    let snap = super::commit(tx)?;
    say!(
        out,
        "dropped the item tower of {} (the vectors it computed stay; new items need a vector for it{})",
        a.key,
        if snap.has_item_tower(&a.key) {
            ", except that a three-tower bundle of it still carries the tower"
        } else {
            ""
        }
    );
    report::published(out, base.as_ref(), &snap, t.elapsed(), a.json)
}
