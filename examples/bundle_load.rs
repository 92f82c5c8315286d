//! Times `Model::load` (parse + validate + pack) of the three-tower benchmark
//! bundle: what pinning a snapshot with that bundle costs per bundle.
//! `cargo run --release --example bundle_load`

use std::time::Instant;

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let (json, weights) = support::tt_bundle();
    let schema = vstore::Schema::new()
        .categorical("category", 0)
        .stat("ctr_1d", 0.0)
        .stat("impressions_7d", 0.0)
        .embedding("prerank", "v1", 64, vstore::Dtype::F16);
    let mut times: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let m = vstore::Model::load(&json, &weights, &schema).unwrap();
            std::hint::black_box(m);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let med = support::median(&mut times);
    println!(
        "bundle of {} KB weights: Model::load median {:.3} ms",
        weights.len() / 1024,
        med * 1e3
    );
}
