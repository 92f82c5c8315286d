//! Shared helpers for the CLI tests: input files written with real writers
//! (npyz for `.npy`, the parquet crate for Parquet, plain text for CSV),
//! a standard small catalogue, and a fingerprint of a store directory to
//! prove a refused command left it exactly as it was.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use assert_cmd::Command;
use npyz::WriterBuilder;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, FloatType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// The binary under test.
pub fn tool() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vstore-tool"));
    c.env("NO_COLOR", "1");
    c
}

/// Runs the tool, expecting success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = tool().args(args).output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vstore-tool {args:?} failed\nstdout:\n{so}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

/// Runs the tool, expecting failure with exit code 1 (refused or failed);
/// returns stderr.
pub fn fails(args: &[&str]) -> String {
    fails_with(1, args)
}

/// Runs the tool, expecting exit code 2 (a malformed command line);
/// returns stderr.
pub fn usage_fails(args: &[&str]) -> String {
    fails_with(2, args)
}

/// Runs the tool, expecting failure with exit code `code`; returns stderr.
pub fn fails_with(code: i32, args: &[&str]) -> String {
    let out = tool().args(args).output().unwrap();
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "vstore-tool {args:?} should fail with {code}\nstdout:\n{}\nstderr:\n{se}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(se.starts_with("error: "), "{se}");
    se
}

/// Every file of a directory with its bytes (recursively one level is
/// enough: stores are flat).
pub fn fingerprint(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    if !dir.exists() {
        return m;
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let data = if e.path().is_file() {
            std::fs::read(e.path()).unwrap()
        } else {
            b"<dir>".to_vec()
        };
        m.insert(name, data);
    }
    m
}

/// Asserts `dir` holds exactly `before`.
pub fn assert_unchanged(dir: &Path, before: &BTreeMap<String, Vec<u8>>) {
    let now = fingerprint(dir);
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&now),
        names(before),
        "files of {} changed",
        dir.display()
    );
    for (k, v) in before {
        assert!(now[k] == *v, "{k} changed");
    }
}

/// The arguments `args` as string slices, for [`ok`] and [`fails`].
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `p` as a string (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `values` as a `.npy` of `shape` with npyz (numpy's format).
fn npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], values: &[T]) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(f)
        .begin_nd()
        .unwrap();
    w.extend(values.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// `.npy` of u64 ids.
pub fn npy_u64(path: &Path, v: &[u64]) {
    npy(path, &[v.len() as u64], v);
}

/// `.npy` of i64 ids.
pub fn npy_i64(path: &Path, v: &[i64]) {
    npy(path, &[v.len() as u64], v);
}

/// `.npy` of f32 rows.
pub fn npy_f32(path: &Path, v: &[f32], dim: usize) {
    npy(path, &[(v.len() / dim) as u64, dim as u64], v);
}

/// `.npy` of f16 rows.
pub fn npy_f16(path: &Path, v: &[f32], dim: usize) {
    let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    npy(path, &[(v.len() / dim) as u64, dim as u64], &h);
}

/// `.npy` of 1-D f32 (a user vector).
pub fn npy_vec(path: &Path, v: &[f32]) {
    npy(path, &[v.len() as u64], v);
}

/// A Parquet column for [`parquet_file`].
pub enum PqCol {
    I64(&'static str, Vec<Option<i64>>),
    I32(&'static str, Vec<Option<i32>>),
    F64(&'static str, Vec<Option<f64>>),
    F32(&'static str, Vec<Option<f32>>),
    Str(&'static str, Vec<Option<&'static str>>),
}

fn defs<T: Clone>(v: &[Option<T>]) -> (Vec<i16>, Vec<T>) {
    (
        v.iter().map(|x| i16::from(x.is_some())).collect(),
        v.iter().flatten().cloned().collect(),
    )
}

/// Writes a flat Parquet file (OPTIONAL columns, `row_group` rows per group,
/// Snappy).
pub fn parquet_file(path: &Path, cols: &[PqCol], row_group: usize) {
    let fields: Vec<String> = cols
        .iter()
        .map(|c| match c {
            PqCol::I64(n, _) => format!("OPTIONAL INT64 {n};"),
            PqCol::I32(n, _) => format!("OPTIONAL INT32 {n};"),
            PqCol::F64(n, _) => format!("OPTIONAL DOUBLE {n};"),
            PqCol::F32(n, _) => format!("OPTIONAL FLOAT {n};"),
            PqCol::Str(n, _) => format!("OPTIONAL BYTE_ARRAY {n} (UTF8);"),
        })
        .collect();
    let schema =
        Arc::new(parse_message_type(&format!("message t {{ {} }}", fields.join(" "))).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let rows = match &cols[0] {
        PqCol::I64(_, v) => v.len(),
        PqCol::I32(_, v) => v.len(),
        PqCol::F64(_, v) => v.len(),
        PqCol::F32(_, v) => v.len(),
        PqCol::Str(_, v) => v.len(),
    };
    let f = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(f, schema, props).unwrap();
    for start in (0..rows.max(1)).step_by(row_group) {
        let end = (start + row_group).min(rows);
        let mut rg = w.next_row_group().unwrap();
        let mut i = 0;
        while let Some(mut cw) = rg.next_column().unwrap() {
            match &cols[i] {
                PqCol::I64(_, v) => {
                    let (d, x) = defs(&v[start..end]);
                    cw.typed::<Int64Type>()
                        .write_batch(&x, Some(&d), None)
                        .unwrap();
                }
                PqCol::I32(_, v) => {
                    let (d, x) = defs(&v[start..end]);
                    cw.typed::<Int32Type>()
                        .write_batch(&x, Some(&d), None)
                        .unwrap();
                }
                PqCol::F64(_, v) => {
                    let (d, x) = defs(&v[start..end]);
                    cw.typed::<DoubleType>()
                        .write_batch(&x, Some(&d), None)
                        .unwrap();
                }
                PqCol::F32(_, v) => {
                    let (d, x) = defs(&v[start..end]);
                    cw.typed::<FloatType>()
                        .write_batch(&x, Some(&d), None)
                        .unwrap();
                }
                PqCol::Str(_, v) => {
                    let (d, x) = defs(&v[start..end]);
                    let x: Vec<ByteArray> = x.iter().map(|s| ByteArray::from(*s)).collect();
                    cw.typed::<ByteArrayType>()
                        .write_batch(&x, Some(&d), None)
                        .unwrap();
                }
            }
            cw.close().unwrap();
            i += 1;
        }
        rg.close().unwrap();
    }
    w.close().unwrap();
}

/// The standard small catalogue of the tests.
pub struct Data {
    pub dir: tempfile::TempDir,
    pub ids: Vec<u64>,
    pub vectors: Vec<f32>,
    pub category: Vec<Option<i32>>,
    pub price: Vec<Option<f64>>,
    pub ctr: Vec<Option<f64>>,
    pub imp: Vec<Option<i64>>,
}

pub const DIM: usize = 64;
pub const ROWS: usize = 300;

/// A vector of item `id` (exact in f16).
pub fn vector(id: u64, salt: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|j| (((id * 31 + j * 7 + salt * 13) % 64) as f32 - 32.0) / 64.0)
        .collect()
}

impl Data {
    /// 300 items with ids 1000, 1003, ..., d = 64 vectors, a profile
    /// table (category, price) and a statistics table (ctr_1d,
    /// impressions_7d) with some missing values, written as files:
    /// ids.npy (u64), emb.npy (f32), emb16.npy (f16), items.parquet,
    /// items.csv, stats.csv, stats.parquet, model/ (the demo bundle).
    pub fn new() -> Data {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u64> = (0..ROWS as u64).map(|i| 1000 + 3 * i).collect();
        let vectors: Vec<f32> = ids.iter().flat_map(|&id| vector(id, 0)).collect();
        let category: Vec<Option<i32>> = ids
            .iter()
            .map(|&id| (id % 11 != 0).then_some((id % 7) as i32))
            .collect();
        let price: Vec<Option<f64>> = ids
            .iter()
            .map(|&id| (id % 5 != 0).then_some(id as f64 * 0.25))
            .collect();
        let ctr: Vec<Option<f64>> = ids
            .iter()
            .map(|&id| (id % 13 != 0).then_some((id % 100) as f64 / 1000.0))
            .collect();
        let imp: Vec<Option<i64>> = ids
            .iter()
            .map(|&id| (id % 13 != 0).then_some((id * 37 % 20_000) as i64))
            .collect();
        let d = Data {
            dir,
            ids,
            vectors,
            category,
            price,
            ctr,
            imp,
        };
        npy_u64(&d.path("ids.npy"), &d.ids);
        npy_f32(&d.path("emb.npy"), &d.vectors, DIM);
        npy_f16(&d.path("emb16.npy"), &d.vectors, DIM);
        let id_col: Vec<Option<i64>> = d.ids.iter().map(|&x| Some(x as i64)).collect();
        parquet_file(
            &d.path("items.parquet"),
            &[
                PqCol::I64("id", id_col.clone()),
                PqCol::I32("category", d.category.clone()),
                PqCol::F64("price", d.price.clone()),
            ],
            128,
        );
        parquet_file(
            &d.path("stats.parquet"),
            &[
                PqCol::I64("id", id_col),
                PqCol::F64("ctr_1d", d.ctr.clone()),
                PqCol::I64("impressions_7d", d.imp.clone()),
            ],
            100,
        );
        let opt = |x: Option<String>| x.unwrap_or_default();
        let mut csv = String::from("id,category,price\n");
        for i in 0..ROWS {
            csv += &format!(
                "{},{},{}\n",
                d.ids[i],
                opt(d.category[i].map(|x| x.to_string())),
                opt(d.price[i].map(|x| x.to_string()))
            );
        }
        std::fs::write(d.path("items.csv"), csv).unwrap();
        let mut csv = String::from("id,ctr_1d,impressions_7d\n");
        for i in 0..ROWS {
            csv += &format!(
                "{},{},{}\n",
                d.ids[i],
                opt(d.ctr[i].map(|x| x.to_string())),
                opt(d.imp[i].map(|x| x.to_string()))
            );
        }
        std::fs::write(d.path("stats.csv"), csv).unwrap();
        let (json, weights) = vstore_tool::synth::bundle("prerank", "v1");
        std::fs::create_dir_all(d.path("model")).unwrap();
        std::fs::write(d.path("model/model.json"), json).unwrap();
        std::fs::write(d.path("model/weights.safetensors"), weights).unwrap();
        d
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn p(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// The command line of a `build` of `store`: ids from the file `ids`,
    /// `prerank@v1` (stored f32) from the file `emb`, then `extra`.
    pub fn build_args(&self, store: &str, ids: &str, emb: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "build".into(),
            self.p(store),
            "--ids".into(),
            self.p(ids),
            "--embedding".into(),
            format!("prerank@v1={}", self.p(emb)),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Builds `store` from `ids.npy` and `emb.npy` (`prerank@v1`, stored
    /// f32) with the `extra` arguments, expecting success; returns stdout.
    pub fn build_f32(&self, store: &str, extra: &[&str]) -> String {
        ok(&strs(&self.build_args(store, "ids.npy", "emb.npy", extra)))
    }

    /// Builds the standard store at `store` (profile from Parquet, stats
    /// from CSV, f16 embeddings, the bundle).
    pub fn build(&self, store: &str) -> String {
        ok(&[
            "build",
            &self.p(store),
            "--ids",
            &self.p("ids.npy"),
            "--embedding",
            &format!("prerank@v1:f16={}", self.p("emb.npy")),
            "--profile",
            &self.p("items.parquet"),
            "--stats",
            &self.p("stats.csv"),
            "--model",
            &self.p("model"),
        ])
    }
}
