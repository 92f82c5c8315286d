//! A synthetic catalogue for `demo` (and `demo --export`, which writes it
//! as the files a pipeline would hand us: `.npy`, Parquet, CSV and a model
//! bundle).
//!
//! Realistic shapes: categories and brands Zipf-skewed, prices log-normal,
//! click-through rates that depend on the category with a long tail,
//! impressions spread over five decades, 5% of new items with no
//! statistics yet; item vectors clustered around their category's centroid,
//! so that a user who likes a category gets its items on top.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use npyz::WriterBuilder;
use parquet::basic::Compression;
use parquet::data_type::{DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::error::{Result, ToolError};

/// Number of categories (the bundle's category table has this many rows).
pub const CATEGORIES: u32 = 200;
/// Number of brands.
pub const BRANDS: u32 = 5000;
/// The embedding version of the demo.
pub const SPACE: &str = "prerank";
/// The embedding version of the demo.
pub const VERSION: &str = "v1";
/// Embedding dimension.
pub const DIM: usize = vstore::ExampleBundle::DIM;

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Zipf-like over `0..n` (log-uniform rank: small codes are common).
    pub fn zipf(&mut self, n: u32) -> u32 {
        (((n as f64 + 1.0).powf(self.uniform()) - 1.0) as u32).min(n - 1)
    }
}

/// The catalogue: one entry per item in every vector.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// Item ids (distinct, not contiguous).
    pub ids: Vec<u64>,
    /// Category code per item.
    pub category: Vec<u32>,
    /// Brand code per item (some missing).
    pub brand: Vec<Option<u32>>,
    /// Price (some missing).
    pub price: Vec<Option<f32>>,
    /// Click-through rate over a day (missing for new items).
    pub ctr_1d: Vec<Option<f32>>,
    /// Impressions over a week (missing for new items).
    pub impressions_7d: Vec<Option<f32>>,
    /// `rows x DIM` item vectors, row-major.
    pub vectors: Vec<f32>,
}

/// The centroid of category `c`'s item vectors.
pub fn centroid(c: u32) -> Vec<f32> {
    let mut r = Rng(0xC0FF_EE00 ^ u64::from(c).wrapping_mul(0x2545_F491_4F6C_DD1D));
    (0..DIM).map(|_| (r.normal() * 0.35) as f32).collect()
}

impl Catalogue {
    /// `rows` items from `seed`.
    pub fn generate(rows: usize, seed: u64) -> Catalogue {
        let mut r = Rng(seed);
        let cents: Vec<Vec<f32>> = (0..CATEGORIES).map(centroid).collect();
        // Per-category quality: some categories click much better.
        let quality: Vec<f64> = (0..CATEGORIES).map(|_| 0.5 + 1.5 * r.uniform()).collect();
        let mut c = Catalogue {
            ids: Vec::with_capacity(rows),
            category: Vec::with_capacity(rows),
            brand: Vec::with_capacity(rows),
            price: Vec::with_capacity(rows),
            ctr_1d: Vec::with_capacity(rows),
            impressions_7d: Vec::with_capacity(rows),
            vectors: Vec::with_capacity(rows * DIM),
        };
        for i in 0..rows as u64 {
            c.ids.push(10_000_000 + i * 13 + (i % 7));
            let cat = r.zipf(CATEGORIES);
            c.category.push(cat);
            c.brand.push((r.uniform() >= 0.03).then(|| r.zipf(BRANDS)));
            let price = (3.0 + r.normal()).exp().min(1e5);
            c.price.push((r.uniform() >= 0.02).then_some(price as f32));
            let new_item = r.uniform() < 0.05;
            let ctr = (0.02 * quality[cat as usize] * (0.6 * r.normal()).exp()).min(0.9);
            c.ctr_1d.push((!new_item).then_some(ctr as f32));
            let imp = 10f64.powf(1.0 + 4.0 * r.uniform()).round();
            c.impressions_7d.push((!new_item).then_some(imp as f32));
            c.vectors.extend(
                cents[cat as usize]
                    .iter()
                    .map(|&x| x + (r.normal() * 0.25) as f32),
            );
        }
        c
    }

    /// `rows` fresh items (ids from 90,000,000 up, so none collides with a
    /// catalogue's): profiles drawn like the catalogue's, no statistics
    /// yet, and no vectors (the item tower computes them).
    pub fn fresh(rows: usize, seed: u64) -> Catalogue {
        let mut c = Catalogue::generate(rows, seed);
        for (i, id) in c.ids.iter_mut().enumerate() {
            *id = 90_000_000 + i as u64;
        }
        c.ctr_1d.iter_mut().for_each(|x| *x = None);
        c.impressions_7d.iter_mut().for_each(|x| *x = None);
        c.vectors.clear();
        c
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The user vector of query `q`: near the centroid of a favourite category.
pub fn user_vector(q: u64) -> (u32, Vec<f32>) {
    let mut r = Rng(0x5EED_0000 + q);
    let fav = r.zipf(CATEGORIES / 4);
    let c = centroid(fav);
    (
        fav,
        c.iter().map(|&x| x + (r.normal() * 0.1) as f32).collect(),
    )
}

/// The user-side model inputs of query `q`: `user_stats` (8 values) and
/// `user_category_ctr` for the 30 categories the user saw most.
pub fn user_inputs(q: u64) -> (Vec<f32>, Vec<(u32, f32)>) {
    let mut r = Rng(0xA11CE + q);
    let dense = (0..8).map(|_| r.normal() as f32 * 0.5).collect();
    let by_cat = (0..30)
        .map(|_| (r.zipf(CATEGORIES), (r.uniform() * 0.2) as f32))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    (dense, by_cat)
}

/// The demo's three-tower bundle for `space@version`:
/// [`vstore::ExampleBundle`] with a [`CATEGORIES`]-row category table and
/// impression buckets at 100, 1,000 and 10,000 (the catalogue's
/// impressions span five decades). Returns (model.json, weights).
pub fn bundle(space: &str, version: &str) -> (Vec<u8>, Vec<u8>) {
    vstore::ExampleBundle {
        space: space.to_string(),
        version: version.to_string(),
        categories: CATEGORIES,
        impression_buckets: [100.0, 1000.0, 10000.0],
    }
    .files()
}

/// The example item-tower-only bundle for `space@version` (over the
/// catalogue's profile columns `category`, `brand` and `price`).
pub fn item_tower_bundle(space: &str, version: &str) -> (Vec<u8>, Vec<u8>) {
    vstore::ExampleBundle {
        space: space.to_string(),
        version: version.to_string(),
        categories: CATEGORIES,
        impression_buckets: [100.0, 1000.0, 10000.0],
    }
    .item_tower_files()
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> ToolError + 'a {
    move |e| ToolError::io(op, path, e)
}

fn pq(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> ToolError + '_ {
    move |e| ToolError::input(path, format!("writing Parquet: {e}"))
}

/// Writes `values` as a `.npy` of `shape` (what `np.save` writes).
fn write_npy<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    values: &[T],
) -> Result<()> {
    let f = BufWriter::new(File::create(path).map_err(io("create", path))?);
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(f)
        .begin_nd()
        .map_err(io("write", path))?;
    w.extend(values.iter().copied())
        .map_err(io("write", path))?;
    w.finish().map_err(io("write", path))
}

/// Writes a 1-D uint64 `.npy` (numpy's `np.save(path, ids)`).
pub fn write_ids_npy(path: &Path, ids: &[u64]) -> Result<()> {
    write_npy(path, &[ids.len() as u64], ids)
}

/// Writes a 2-D float32 `.npy` of `values.len() / dim` rows.
pub fn write_matrix_npy(path: &Path, values: &[f32], dim: usize) -> Result<()> {
    write_npy(path, &[(values.len() / dim) as u64, dim as u64], values)
}

/// Writes the profile table (`id`, `category`, `brand`, `price`) as Parquet
/// with nulls for missing values, Snappy-compressed (pandas' default).
pub fn write_profile_parquet(path: &Path, c: &Catalogue) -> Result<()> {
    let schema = Arc::new(
        parse_message_type(
            "message items { REQUIRED INT64 id; REQUIRED INT32 category; \
             OPTIONAL INT32 brand; OPTIONAL DOUBLE price; }",
        )
        .map_err(pq(path))?,
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let f = File::create(path).map_err(io("create", path))?;
    let mut w = SerializedFileWriter::new(f, schema, props).map_err(pq(path))?;
    const GROUP: usize = 100_000;
    for start in (0..c.len()).step_by(GROUP) {
        let end = (start + GROUP).min(c.len());
        let mut rg = w.next_row_group().map_err(pq(path))?;
        let mut col = 0;
        while let Some(mut cw) = rg.next_column().map_err(pq(path))? {
            match col {
                0 => {
                    let v: Vec<i64> = c.ids[start..end].iter().map(|&x| x as i64).collect();
                    cw.typed::<Int64Type>().write_batch(&v, None, None)
                }
                1 => {
                    let v: Vec<i32> = c.category[start..end].iter().map(|&x| x as i32).collect();
                    cw.typed::<Int32Type>().write_batch(&v, None, None)
                }
                2 => {
                    let defs: Vec<i16> = c.brand[start..end]
                        .iter()
                        .map(|x| i16::from(x.is_some()))
                        .collect();
                    let v: Vec<i32> = c.brand[start..end]
                        .iter()
                        .flatten()
                        .map(|&x| x as i32)
                        .collect();
                    cw.typed::<Int32Type>().write_batch(&v, Some(&defs), None)
                }
                _ => {
                    let defs: Vec<i16> = c.price[start..end]
                        .iter()
                        .map(|x| i16::from(x.is_some()))
                        .collect();
                    let v: Vec<f64> = c.price[start..end]
                        .iter()
                        .flatten()
                        .map(|&x| f64::from(x))
                        .collect();
                    cw.typed::<DoubleType>().write_batch(&v, Some(&defs), None)
                }
            }
            .map_err(pq(path))?;
            cw.close().map_err(pq(path))?;
            col += 1;
        }
        rg.close().map_err(pq(path))?;
    }
    w.close().map_err(pq(path))?;
    Ok(())
}

/// Writes the statistics table (`id`, `ctr_1d`, `impressions_7d`) as CSV,
/// missing values as empty fields.
pub fn write_stats_csv(path: &Path, c: &Catalogue) -> Result<()> {
    use std::io::Write;
    let mut f = BufWriter::new(File::create(path).map_err(io("create", path))?);
    let opt = |x: Option<f32>| x.map(|v| v.to_string()).unwrap_or_default();
    writeln!(f, "id,ctr_1d,impressions_7d").map_err(io("write", path))?;
    for i in 0..c.len() {
        writeln!(
            f,
            "{},{},{}",
            c.ids[i],
            opt(c.ctr_1d[i]),
            opt(c.impressions_7d[i])
        )
        .map_err(io("write", path))?;
    }
    f.flush().map_err(io("write", path))
}
