//! Support for benchmarks: not part of the supported API.

use super::*;

/// The name of the kernel level this process runs (`portable`, `avx2`,
/// `avx512`; see `VSTORE_KERNEL_LEVEL` in the README), for benchmarks and
/// tests to state which path they measured or checked.
pub fn kernel_level() -> &'static str {
    crate::kernel_level()
}

/// One reference into every cache line a query for `ids` must touch in
/// memory: each id's home slot in the id index and every line of its
/// embedding row. Ids not in the snapshot
/// are skipped. Built untimed; [`touch`] then measures the gather floor.
pub fn floor_lines<'a>(snap: &'a Snapshot, key: &str, ids: &[u64]) -> Result<Vec<&'a u8>> {
    let def = snap.embedding_def(key)?;
    let rb = def.dtype.row_bytes(def.dim);
    let mut out = Vec::with_capacity(ids.len() * (2 + rb.div_ceil(64)));
    for &id in ids {
        let Some(at) = snap.lookup(id) else { continue };
        let seg = &snap.segments()[at.segment];
        let v = seg.index_view();
        let slot = v.home_slot(id);
        out.push(&bytemuck::cast_slice::<[u64; 2], u8>(&v.table[slot..slot + 1])[0]);
        let col = snap.embedding(at.segment, key)?;
        let row = &col.row_bytes(at.row)[..rb];
        let first = row.as_ptr() as usize;
        let mut off = 0;
        while off < rb {
            out.push(&row[off]);
            // Next cache-line boundary.
            off = ((first + off) / 64 + 1) * 64 - first;
        }
    }
    Ok(out)
}

/// Scores rows `0..out.len()` of a block of rows (`stride` bytes apart)
/// with the kernel this CPU runs: the in-cache kernel benchmark.
pub fn score_block(
    dtype: crate::schema::Dtype,
    user: &[f32],
    bytes: &[u8],
    stride: usize,
    out: &mut [f32],
) {
    kernels::score_range(
        Level::detect(),
        dtype,
        user,
        Block { bytes, stride },
        0,
        out,
    );
}

/// One model layer on data in cache (`[m, k]` activations times a
/// packed `[k, n]` weight, plus bias, through ReLU), the kernel
/// three-tower scoring runs per block: its rate against the core's FMA
/// peak.
pub struct LayerProduct {
    m: usize,
    w: crate::kernels::gemm::Weights,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl LayerProduct {
    /// Random-ish activations and weights of the given shape.
    pub fn new(m: usize, k: usize, n: usize) -> Self {
        let a = (0..m * k)
            .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
            .collect();
        LayerProduct {
            m,
            w: crate::kernels::gemm::Weights::new(&w, k, k, n),
            a,
            b: (0..n).map(|j| (j % 7) as f32 * 0.1 - 0.3).collect(),
            c: vec![0.0; m * n],
        }
    }

    /// Runs the product once; returns one output value (keep it).
    pub fn run(&mut self) -> f32 {
        let (k, n) = (self.w.k, self.w.n);
        use crate::kernels::gemm::{matmul, Start};
        matmul(
            self.m,
            &self.a,
            k,
            &self.w,
            &mut self.c,
            n,
            Start::Bias(&self.b),
            true,
        );
        self.c[self.c.len() / 2]
    }

    /// FLOPs of one run (2 per multiply-add).
    pub fn flops(&self) -> u64 {
        2 * (self.m * self.w.k * self.w.n) as u64
    }

    /// The same product with the weights at `precision` (bf16 runs on AMX
    /// where the CPU has it).
    pub fn at(mut self, precision: crate::kernels::Precision) -> Self {
        self.w = self.w.at(precision);
        self
    }
}

/// Runs `iters` rounds of four AMX bf16 tile products on tiles held in
/// registers (no memory traffic): the AMX bf16 peak this core reaches.
/// Returns the FLOPs done, or `None` where AMX is not usable.
pub fn amx_bf16_peak(iters: usize) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    return crate::kernels::amx::peak_probe(iters);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = iters;
        None
    }
}

/// The format's id hash (`examples/prefetch_overlap.rs` uses it as a
/// unit of CPU work, the query's per-id hashing).
#[inline]
pub fn id_hash(id: u64) -> u64 {
    idindex::hash(id)
}

/// Prefetch hint for `p`.
pub fn prefetch(p: *const u8) {
    kernels::prefetch_line(p)
}

/// Reads one byte of every line in `lines`, prefetching 32 lines ahead
/// into L1: the memory floor of a query (nothing is computed), on CPUs
/// where this is faster than [`touch_l2`].
pub fn touch(lines: &[&u8]) -> u64 {
    touch_ahead(lines, 32, kernels::prefetch_line)
}

/// The two ways of touching a query's lines, [`touch`] and [`touch_l2`],
/// by name: the memory floor is the faster of the two on the machine.
pub const TOUCHES: [(&str, Touch); 2] = [("l1", touch), ("l2", touch_l2)];

/// A way of touching a query's lines ([`touch`], [`touch_l2`]).
pub type Touch = fn(&[&u8]) -> u64;

/// [`touch`], prefetching 64 lines ahead into L2 only: the faster of the
/// two on Zen 4 (of 16, 32 and 64 lines ahead, into L1 or L2), where the
/// L1's misses in flight run out first.
pub fn touch_l2(lines: &[&u8]) -> u64 {
    touch_ahead(lines, 64, kernels::prefetch_line_l2)
}

/// Reads one byte of every line in `lines`, prefetching with `prefetch`
/// `ahead` lines ahead.
#[inline(always)]
fn touch_ahead(lines: &[&u8], ahead: usize, prefetch: fn(*const u8)) -> u64 {
    let mut sum = 0u64;
    for (i, l) in lines.iter().enumerate() {
        if let Some(a) = lines.get(i + ahead) {
            prefetch(*a as *const u8);
        }
        sum = sum.wrapping_add(std::hint::black_box(**l) as u64);
    }
    sum
}

/// Runs the item tower of `snap`'s embedding `key` over every row of
/// segment `segment` (as the writer does for items added without a
/// vector) into `out` (`rows × item_dim`), and returns the FLOPs per item:
/// the tower's compute alone, without encoding or writing.
pub fn item_tower_compute(
    snap: &Snapshot,
    key: &str,
    segment: usize,
    out: &mut Vec<f32>,
) -> Result<usize> {
    let tower = snap
        .item_tower(key)
        .ok_or_else(|| Error::InvalidInput(format!("{key} has no item tower")))?;
    let seg = &snap.segments()[segment];
    let cols = crate::model::TowerColumns::new(
        tower,
        |n| Ok(seg.numeric(n)?.values()),
        |n| Ok(seg.categorical(n)?.values()),
    )?;
    out.resize(seg.rows() * tower.item_dim, 0.0);
    if let Some((row, column)) = tower.compute(&cols, 0, out) {
        return Err(Error::InvalidInput(format!(
            "row {row}: the item tower's input from {column:?} is not finite"
        )));
    }
    Ok(tower.flops_per_item())
}

/// Drops the page-cache copies of every regular file in store directory
/// `dir` (`posix_fadvise(POSIX_FADV_DONTNEED)` on each; Linux only), so
/// that the next open starts cold without root. Pages a live mapping (a
/// `Store` not yet dropped, in any process) holds stay cached. Returns the
/// number of files advised.
pub fn evict_store_files(dir: &std::path::Path) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
        let e = e.map_err(|e| Error::io("list", dir, e))?;
        let path = e.path();
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let f = std::fs::File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        crate::io::mmap::evict_cached(&f).map_err(|e| Error::io("posix_fadvise", &path, e))?;
        n += 1;
    }
    Ok(n)
}

/// Pages of `snap`'s mapped files resident in the page cache (`mincore`),
/// and how many pages they have, manifest and bundles included.
pub fn resident_pages(snap: &Snapshot) -> Result<(usize, usize)> {
    let (mut resident, mut total) = (0, 0);
    for c in snap.containers() {
        let (r, t) = crate::io::mmap::resident_pages(&c.map)
            .map_err(|e| Error::io("mincore", &c.path, e))?;
        resident += r;
        total += t;
    }
    Ok((resident, total))
}
