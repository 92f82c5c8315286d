//! `query`: a two-tower or three-tower query from files, printing the top
//! k as a table or JSON, with timing.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vstore::{Budget, Filter, Query, Scratch, Timings, UserInputs};

use crate::cli::QueryArgs;
use crate::error::{Context, Result, ToolError};
use crate::inputs::read_id_list;
use crate::npy;
use crate::progress::Progress;
use crate::report::{self, dur, TextTable};
use crate::say;

/// Reads the user vector for a query of embedding `key`: `.npy` (1-D
/// float) or `.json` (an array of numbers, or an object with a `"vector"`
/// array and, optionally, the `"embedding"` (`space@version`) the user
/// tower made it for, which must be `key`: a vector of another version is
/// refused, never scored).
pub fn read_user(path: &Path, key: &str) -> Result<Vec<f32>> {
    if path.extension().and_then(|e| e.to_str()) == Some("npy") {
        return npy::read_vector(path);
    }
    let v = read_json(path)?;
    let arr = match &v {
        Value::Array(_) => &v,
        Value::Object(m) if m.contains_key("vector") => {
            for (k, tag) in m {
                match k.as_str() {
                    "vector" => {}
                    "embedding" if tag.as_str() == Some(key) => {}
                    "embedding" => {
                        return Err(ToolError::input(
                            path,
                            format!(
                                "the vector is for embedding {tag}, but the query is for {key:?} \
                                 (a user vector is scored only against item vectors of its own \
                                 version)"
                            ),
                        ))
                    }
                    other => {
                        return Err(ToolError::input(
                            path,
                            format!(
                                "unknown key {other:?} (expected \"vector\" and, optionally, \
                                 \"embedding\": the space@version it was made for)"
                            ),
                        ))
                    }
                }
            }
            &m["vector"]
        }
        _ => {
            return Err(ToolError::input(
                path,
                "expected a JSON array of numbers (or {\"vector\": [...]})",
            ))
        }
    };
    floats(path, "vector", arr)
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = crate::inputs::read_text_file(path)?;
    json_of(path, &bytes)
}

/// `bytes` as JSON; an error names `path` (a file, or the option whose
/// value the JSON was) and the line and column.
fn json_of(path: &Path, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| {
        ToolError::input(
            path,
            format!(
                "not valid JSON (line {} column {}: {e})",
                e.line(),
                e.column()
            ),
        )
    })
}

fn floats(path: &Path, field: &str, v: &Value) -> Result<Vec<f32>> {
    let Some(a) = v.as_array() else {
        return Err(ToolError::input(
            path,
            format!("{field}: expected an array of numbers"),
        ));
    };
    a.iter()
        .enumerate()
        .map(|(i, x)| match x.as_f64() {
            Some(f) if (f as f32).is_finite() => Ok(f as f32),
            Some(f) => Err(ToolError::input(
                path,
                format!("{field}[{i}]: {f} does not fit in float32"),
            )),
            None => Err(ToolError::input(
                path,
                format!("{field}[{i}]: {x} is not a number"),
            )),
        })
        .collect()
}

/// Reads three-tower user inputs (JSON given inline, or a file holding
/// it): `{"dense": {"name": [..]}, "by_item": {"name": {"<category code>":
/// [..]}}}`, parsed strictly by [`UserInputs::from_json`].
pub fn read_inputs(path: &Path) -> Result<UserInputs> {
    // A JSON object given inline (it starts with `{`), or a file holding one.
    let inline = path.to_str().filter(|s| s.trim_start().starts_with('{'));
    let (bytes, path) = match inline {
        Some(text) => (text.as_bytes().to_vec(), Path::new("--inputs")),
        None => (crate::inputs::read_text_file(path)?, path),
    };
    UserInputs::from_json(&bytes).map_err(|e| match e {
        vstore::Error::InvalidInput(m) => ToolError::input(path, m),
        other => other.into(),
    })
}

/// Parses one `--where` expression: `COL in 1,2`, `COL not in 3`,
/// `COL between LO HI`.
pub fn parse_filter(s: &str) -> Result<Filter> {
    let usage = |why: &str| {
        ToolError::Usage(format!(
            "--where {s:?}: {why}; expected `COL in 1,2`, `COL not in 3` or `COL between LO HI`"
        ))
    };
    let toks: Vec<&str> = s.split_whitespace().collect();
    // Every item of the list must be a code: an empty list or an empty
    // item (`in ,`, `in 1,,2`) is refused, never read as "no codes"; so
    // are two codes without a comma between them (`in 1 2` is not `12`).
    let codes = |col: &str, t: &[&str]| -> Result<Vec<u32>> {
        let joined = t.join(" ");
        let items: Vec<&str> = joined.split(',').map(str::trim).collect();
        if let Some(x) = items.iter().find(|x| x.contains(char::is_whitespace)) {
            return Err(usage(&format!(
                "column {col:?}: {x:?} is not one category code (codes are separated \
                 by commas; repeat --where for another filter)"
            )));
        }
        if items.iter().all(|x| x.is_empty()) {
            return Err(usage(&format!(
                "column {col:?}: the list of codes is empty"
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                if x.is_empty() {
                    return Err(usage(&format!(
                        "column {col:?}: item {} of the list of codes is empty",
                        i + 1
                    )));
                }
                x.parse::<u32>()
                    .map_err(|_| usage(&format!("column {col:?}: {x:?} is not a category code")))
            })
            .collect()
    };
    match toks.as_slice() {
        [col, "in", rest @ ..] if !rest.is_empty() => Ok(Filter::is_in(col, codes(col, rest)?)),
        [col, "not", "in", rest @ ..] if !rest.is_empty() => {
            Ok(Filter::not_in(col, codes(col, rest)?))
        }
        [col, "in"] | [col, "not", "in"] => Err(usage(&format!(
            "column {col:?}: the list of codes is empty"
        ))),
        [col, "between", lo, hi] => {
            let f = |x: &str| {
                x.parse::<f64>()
                    .ok()
                    .filter(|v| !v.is_nan())
                    .ok_or_else(|| usage(&format!("{x:?} is not a number")))
            };
            let (lo, hi) = (f(lo)?, f(hi)?);
            if lo > hi {
                return Err(usage(&format!("the range {lo} to {hi} is empty (LO > HI)")));
            }
            // Exactly the stored (f32) values within LO..=HI pass.
            Ok(Filter::range_f64(col, lo, hi))
        }
        _ => Err(usage("cannot parse")),
    }
}

/// Runs `query`.
pub fn run(a: &QueryArgs, out: &mut dyn Write) -> Result<()> {
    if a.candidates.is_none() && !a.all {
        return Err(ToolError::Usage(
            "give candidates with --candidates FILE (or - for stdin), or --all for a full scan"
                .into(),
        ));
    }
    vstore::check_key(&a.embedding)
        .map_err(|e| ToolError::Usage(format!("--embedding {:?}: {e}", a.embedding)))?;
    let user = read_user(&a.user, &a.embedding)?;
    let ids = match &a.candidates {
        Some(p) => {
            let ids = read_id_list(p, &Progress::hidden())?;
            if ids.is_empty() {
                return Err(ToolError::input(
                    p,
                    "no candidate ids; give some, or score every item with --all instead of --candidates",
                ));
            }
            ids
        }
        None => Vec::new(),
    };
    let inputs = match &a.inputs {
        Some(p) => read_inputs(p)?,
        None => UserInputs::new(),
    };
    let mut filter: Option<Filter> = None;
    for f in &a.filters {
        let f = parse_filter(f)?;
        filter = Some(match filter {
            Some(g) => g.and(f),
            None => f,
        });
    }
    let prefault = match a.prefault {
        crate::cli::PrefaultArg::Off => vstore::Prefault::Off,
        crate::cli::PrefaultArg::Background => vstore::Prefault::Background,
    };
    let opts = vstore::OpenOptions::new().prefault(prefault).mlock(a.mlock);
    let store = match a.snapshot {
        Some(n) => crate::report::open_store_at_with(&a.store, n, opts)?,
        None => super::open_store_with(&a.store, opts)?,
    };
    let snap = store.snapshot();
    let mut q = if a.all {
        Query::full_scan(&a.embedding, &user, a.k as usize)
    } else {
        Query::ids(&a.embedding, &user, &ids, a.k as usize)
    };
    if let Some(f) = &filter {
        q = q.filter(f);
    }
    match (a.max_items, a.max_multiply_adds) {
        (Some(n), _) => q = q.budget(Budget::Items(n)),
        (None, Some(m)) => q = q.budget(Budget::MultiplyAdds(m)),
        (None, None) => {}
    }
    let fusion = a.fusion.as_deref().map(read_fusion).transpose()?;
    if a.three_tower {
        q = q.three_tower(&inputs);
        if a.heads {
            q = q.with_heads();
        }
        if let Some(name) = &a.model {
            q = q.model(name);
        }
        if let Some(f) = &fusion {
            q = q.fusion(f);
        }
        if a.log_features {
            q = q.log_features();
        }
        if a.exact {
            q = q.exact();
        }
        if let Some(t) = a.threads {
            q = q.threads(t as usize);
        }
    }
    let mut scratch = Scratch::default();
    let mut lat: Vec<Duration> = Vec::with_capacity(a.repeat as usize);
    let mut stages: Vec<Timings> = Vec::with_capacity(a.repeat as usize);
    let mut result = None;
    for _ in 0..a.repeat {
        let t = Instant::now();
        let r = snap.query_with(&q, &mut scratch).context(|| {
            let mut what = format!("query with the user vector from {}", a.user.display());
            if let Some(i) = &a.inputs {
                what += &format!(" and the model inputs from {}", i.display());
            }
            what
        })?;
        lat.push(t.elapsed());
        stages.push(r.timings);
        result = Some(r);
    }
    let r = result.expect("ran at least once");
    lat.sort();
    let stages = median_stages(&stages);
    let kind = if a.three_tower {
        "three-tower"
    } else {
        "two-tower"
    };
    if a.json {
        print_json(out, a, kind, &r, (&lat, &stages))
    } else {
        print_text(out, a, kind, &r, (&lat, &stages))
    }
}

/// Each stage's median over the runs, in the order queries run them.
pub(crate) fn median_stages(runs: &[Timings]) -> Vec<(&'static str, Duration)> {
    let stage = |f: fn(&Timings) -> Duration| {
        let mut v: Vec<Duration> = runs.iter().map(f).collect();
        v.sort();
        v[(v.len() - 1) / 2]
    };
    vec![
        ("prepare", stage(|t| t.prepare)),
        ("resolve", stage(|t| t.resolve)),
        ("gather", stage(|t| t.gather)),
        ("cross", stage(|t| t.cross)),
        ("upper", stage(|t| t.upper)),
        ("heads", stage(|t| t.heads)),
        ("rescore", stage(|t| t.rescore)),
        ("topk", stage(|t| t.topk)),
        ("total", stage(|t| t.total)),
    ]
}

/// Hit `i`'s feature log as JSON: each cross input by name (its values),
/// and each head's logit by name.
fn features_json(log: &vstore::FeatureLog, i: usize) -> Value {
    let x = log.cross_input(i);
    let mut o = 0;
    let mut inputs = serde_json::Map::new();
    for (name, w) in &log.inputs {
        inputs.insert(name.clone(), json!(x[o..o + w]));
        o += w;
    }
    let logits: serde_json::Map<String, Value> = (log.head_names.iter().cloned())
        .zip(log.head_logits_of(i).iter().map(|&v| json!(v)))
        .collect();
    json!({"cross_inputs": inputs, "head_logits": logits})
}

/// `--fusion`: a JSON object given inline (it starts with `{`) or the
/// path of a file holding one.
fn read_fusion(arg: &str) -> Result<vstore::Fusion> {
    let (bytes, what) = if arg.trim_start().starts_with('{') {
        (arg.as_bytes().to_vec(), "--fusion".to_string())
    } else {
        let p = std::path::Path::new(arg);
        let b = crate::inputs::read_text_file(p)?;
        (b, format!("--fusion {}", p.display()))
    };
    vstore::Fusion::from_json(&bytes).map_err(|e| ToolError::Usage(format!("{what}: {e}")))
}

/// The `lat` (sorted) percentile `p`.
fn pct(lat: &[Duration], p: usize) -> Duration {
    lat[((lat.len() - 1) * p) / 100]
}

/// The result and the latencies (sorted) as one JSON document.
fn print_json(
    out: &mut dyn Write,
    a: &QueryArgs,
    kind: &str,
    r: &vstore::QueryResult,
    (lat, stages): (&[Duration], &[(&str, Duration)]),
) -> Result<()> {
    let pct = |p| pct(lat, p);
    let hits: Vec<Value> = r
        .hits
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut o = json!({"rank": i + 1, "id": h.id, "score": h.score});
            if !r.head_names.is_empty() {
                // In the model's head order.
                let heads: serde_json::Map<String, Value> = r
                    .head_names
                    .iter()
                    .cloned()
                    .zip(r.heads_of(i).iter().map(|&x| json!(x)))
                    .collect();
                o["heads"] = Value::Object(heads);
            }
            if let Some(log) = &r.features {
                o["features"] = features_json(log, i);
            }
            o
        })
        .collect();
    report::json(
        out,
        &json!({
            "snapshot": r.snapshot,
            "kind": kind,
            "embedding": a.embedding,
            "k": a.k,
            "scored": r.scored,
            "filtered_out": r.filtered_out,
            "filtered": r.filtered,
            "not_found": r.not_found,
            "non_finite": r.non_finite,
            "over_budget": r.over_budget,
            "over_budget_ids": r.over_budget_ids,
            "multiply_adds": r.multiply_adds,
            "hits": hits,
            "latency_us": {
                "runs": lat.len(),
                "p50": pct(50).as_secs_f64() * 1e6,
                "p99": pct(99).as_secs_f64() * 1e6,
                "min": lat[0].as_secs_f64() * 1e6,
            },
            "stages_us": stages
                .iter()
                .map(|(n, d)| (n.to_string(), json!(d.as_secs_f64() * 1e6)))
                .collect::<serde_json::Map<_, _>>(),
        }),
    )
}

/// The result as a table, what was not scored, and the latencies (sorted).
fn print_text(
    out: &mut dyn Write,
    a: &QueryArgs,
    kind: &str,
    r: &vstore::QueryResult,
    (lat, stages): (&[Duration], &[(&str, Duration)]),
) -> Result<()> {
    let pct = |p| pct(lat, p);
    let mut header = vec!["rank".to_string(), "id".into(), "score".into()];
    header.extend(r.head_names.iter().cloned());
    let mut t = TextTable::new(&header);
    for (i, h) in r.hits.iter().enumerate() {
        let mut row = vec![
            (i + 1).to_string(),
            h.id.to_string(),
            format!("{:.6}", h.score),
        ];
        row.extend(r.heads_of(i).iter().map(|x| format!("{x:.6}")));
        t.row(row);
    }
    t.print(out, 0)?;
    if let Some(log) = &r.features {
        for (i, h) in r.hits.iter().enumerate() {
            let x = log.cross_input(i);
            let mut o = 0;
            let mut parts = Vec::new();
            for (name, w) in &log.inputs {
                let v: Vec<String> = x[o..o + w].iter().map(|v| format!("{v:.6}")).collect();
                parts.push(format!("{name}=[{}]", v.join(", ")));
                o += w;
            }
            let logits: Vec<String> = (log.head_names.iter())
                .zip(log.head_logits_of(i))
                .map(|(n, v)| format!("{n}={v:.6}"))
                .collect();
            say!(
                out,
                "features of rank {} (id {}): {}; logits {}",
                i + 1,
                h.id,
                parts.join(" "),
                logits.join(" ")
            );
        }
    }
    let shown_nf: Vec<String> = r.not_found.iter().take(10).map(u64::to_string).collect();
    say!(
        out,
        "{kind} query on snapshot {} ({}): {} scored, {} filtered out, {} not found{}",
        r.snapshot,
        a.embedding,
        r.scored,
        r.filtered_out,
        r.not_found.len(),
        if r.not_found.is_empty() {
            String::new()
        } else {
            format!(
                " [{}{}]",
                shown_nf.join(", "),
                if r.not_found.len() > 10 { ", ..." } else { "" }
            )
        }
    );
    if !r.non_finite.is_empty() {
        let shown: Vec<String> = r.non_finite.iter().take(10).map(u64::to_string).collect();
        crate::note!(
            "warning: {} item(s) scored infinite or NaN from finite inputs and were left out of the ranking: [{}{}]",
            r.non_finite.len(),
            shown.join(", "),
            if r.non_finite.len() > 10 { ", ..." } else { "" }
        );
    }
    if r.over_budget > 0 {
        let shown: Vec<String> = (r.over_budget_ids.iter().take(10))
            .map(u64::to_string)
            .collect();
        say!(
            out,
            "over budget: {} candidate(s) not scored{}",
            r.over_budget,
            if shown.is_empty() {
                String::new()
            } else {
                format!(
                    " [{}{}]",
                    shown.join(", "),
                    if r.over_budget > 10 { ", ..." } else { "" }
                )
            }
        );
    }
    if lat.len() == 1 {
        say!(out, "latency {}", dur(lat[0]));
    } else {
        say!(
            out,
            "latency over {} runs: p50 {}, p99 {}, min {}",
            lat.len(),
            dur(pct(50)),
            dur(pct(99)),
            dur(lat[0])
        );
        let shown: Vec<String> = (stages.iter())
            .filter(|(n, d)| *n != "total" && !d.is_zero())
            .map(|(n, d)| format!("{n} {}", dur(*d)))
            .collect();
        say!(out, "stages (medians): {}", shown.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        assert_eq!(
            parse_filter("category in 1, 2,3").unwrap(),
            Filter::is_in("category", [1, 2, 3])
        );
        assert_eq!(
            parse_filter("category not in 4").unwrap(),
            Filter::not_in("category", [4])
        );
        assert_eq!(
            parse_filter("price between 0 9.5").unwrap(),
            Filter::range("price", 0.0, 9.5)
        );
        let e = parse_filter("price > 3").unwrap_err().to_string();
        assert!(e.contains("price > 3"), "{e}");
        let e = parse_filter("category in a").unwrap_err().to_string();
        assert!(e.contains("not a category code"), "{e}");
        // Codes without a comma between them were once joined (`1 2` read
        // as 12): refused, in every place of the list.
        for bad in [
            "category in 1 2",
            "category not in 1 2",
            "category in 1 2 , 3",
            "category in 3, 1 2",
            "category in 1 or brand in 2",
        ] {
            let e = parse_filter(bad).unwrap_err().to_string();
            assert!(e.contains("is not one category code"), "{bad}: {e}");
        }
        assert_eq!(
            parse_filter("category in 1 , 2").unwrap(),
            Filter::is_in("category", [1, 2])
        );
    }
}
