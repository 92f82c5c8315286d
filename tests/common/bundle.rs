//! A small three-tower bundle built in memory, for tests that need a valid
//! bundle (and mutate it into invalid ones).

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `model.json` as a JSON value and the tensors of `weights.safetensors`.
#[derive(Clone)]
pub struct Bundle {
    pub json: Value,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// Deterministic small weights.
fn weights(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + salt * 13) % 17) as f32 - 8.0) / 32.0)
        .collect()
}

impl Bundle {
    /// A bundle for `prerank@{version}` over the columns of the tests'
    /// common schema (`category`, `price`, `ctr_1d`): every input kind, two
    /// cross layers, two upper layers, a calibrated sigmoid head and an exp
    /// head, weighted-sum fusion. The user vector has 4 components.
    pub fn tiny(version: &str, item_dim: usize) -> Bundle {
        let json = json!({
            "format": "vstore.three_tower.v1",
            "space": "prerank", "version": version,
            "user_dim": 4, "item_dim": item_dim,
            "cross": {
                "inputs": [
                    {"kind": "item_numeric", "column": "ctr_1d", "transform": "log1p"},
                    {"kind": "item_numeric", "column": "price",
                     "transform": {"bucketize": [0.0, 10.0]}, "embedding": "emb.price"},
                    {"kind": "item_categorical", "column": "category", "embedding": "emb.category"},
                    {"kind": "user_dense", "name": "user_stats", "dim": 2},
                    {"kind": "user_by_item", "name": "user_category_ctr", "column": "category",
                     "dim": 1, "default": [0.0]}
                ],
                "layers": [
                    {"weight": "cross.0.weight", "bias": "cross.0.bias", "activation": "relu"},
                    {"weight": "cross.2.weight", "bias": "cross.2.bias", "activation": "sigmoid"}
                ]
            },
            "upper": {"layers": [
                {"weight": "upper.0.weight", "bias": "upper.0.bias", "activation": "relu"},
                {"weight": "upper.2.weight", "bias": "upper.2.bias", "activation": "identity"}
            ]},
            "heads": [
                {"name": "click", "weight": "heads.click.weight", "bias": "heads.click.bias",
                 "activation": "sigmoid", "neg_sampling_rate": 0.2},
                {"name": "value", "weight": "heads.value.weight", "bias": "heads.value.bias",
                 "activation": "exp"}
            ],
            "fusion": {"kind": "weighted_sum", "weights": {"click": 1.0, "value": 0.1}}
        });
        let cross_in = 1 + 2 + 3 + 2 + 1;
        let shapes: Vec<(&str, Vec<usize>)> = vec![
            ("emb.price", vec![3, 2]),
            ("emb.category", vec![5, 3]),
            ("cross.0.weight", vec![6, cross_in]),
            ("cross.0.bias", vec![6]),
            ("cross.2.weight", vec![3, 6]),
            ("cross.2.bias", vec![3]),
            ("upper.0.weight", vec![8, 4 + item_dim + 3]),
            ("upper.0.bias", vec![8]),
            ("upper.2.weight", vec![5, 8]),
            ("upper.2.bias", vec![5]),
            ("heads.click.weight", vec![1, 5]),
            ("heads.click.bias", vec![1]),
            ("heads.value.weight", vec![1, 5]),
            ("heads.value.bias", vec![1]),
        ];
        let tensors = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (n, s))| {
                let len = s.iter().product();
                (n.to_string(), (s, weights(len, i)))
            })
            .collect();
        Bundle { json, tensors }
    }

    /// `model.json` and `weights.safetensors` bytes.
    pub fn bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, (s, v))| {
                (
                    n.clone(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views = raw.iter().map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        });
        let st = safetensors::serialize(views, None).unwrap();
        (serde_json::to_vec_pretty(&self.json).unwrap(), st)
    }

    /// Writes `model.json` and `weights.safetensors` into `dir`.
    pub fn write(&self, dir: &std::path::Path) {
        std::fs::create_dir_all(dir).unwrap();
        let (j, w) = self.bytes();
        std::fs::write(dir.join("model.json"), j).unwrap();
        std::fs::write(dir.join("weights.safetensors"), w).unwrap();
    }
}
