//! The parts a compiled [`Model`](super::Model) is made of: dense layers,
//! embedding tables, resolved cross-tower inputs, heads and the fusion.
//! [`compile`](super::compile) builds them from a bundle; [`score`](super::score)
//! runs them.

use super::spec::Activation;
use crate::kernels::gemm;

/// A dense layer in PyTorch `nn.Linear` layout: `y = act(x @ W.T + b)`.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub inp: usize,
    pub out: usize,
    /// `[out, inp]`, row-major.
    pub w: Vec<f32>,
    /// `[out]` (zeros when the layer has no bias).
    pub b: Vec<f32>,
    pub act: Activation,
    /// `w` ready for the matrix product (for the first upper layer: only
    /// the columns after the user vector's, which is applied per query).
    pub pack: gemm::Weights,
}

/// An embedding table `[rows, dim]`.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Table {
    #[inline]
    pub(crate) fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }
}

/// Where an item-side input reads its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ColumnRef {
    Profile(String),
    Stat(String),
}

#[derive(Debug, Clone)]
pub(crate) enum Transform {
    Identity,
    Log1p,
    Bucketize { bounds: Vec<f32>, table: Table },
}

/// One cross-tower input, resolved against weights and schema.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    ItemNumeric {
        column: ColumnRef,
        transform: Transform,
    },
    ItemCategorical {
        column: String,
        table: Table,
    },
    UserDense {
        name: String,
        dim: usize,
    },
    UserByItem {
        name: String,
        column: String,
        dim: usize,
        default: Vec<f32>,
    },
}

impl Input {
    pub(crate) fn dim(&self) -> usize {
        match self {
            Input::ItemNumeric {
                transform: Transform::Bucketize { table, .. },
                ..
            } => table.dim,
            Input::ItemNumeric { .. } => 1,
            Input::ItemCategorical { table, .. } => table.dim,
            Input::UserDense { dim, .. } | Input::UserByItem { dim, .. } => *dim,
        }
    }
}

/// How head values are fused into one score.
#[derive(Debug, Clone)]
pub(crate) enum Fusion {
    /// `sum w_i p_i`; `w` has one weight per head (0 for heads not named).
    WeightedSum(Vec<f64>),
    /// `prod p_i^w_i` over heads with a nonzero weight.
    Product(Vec<f64>),
    /// `sum w_i / (rank_i + alpha)^beta`.
    Rank { w: Vec<f64>, alpha: f64, beta: f64 },
}

/// A head: one output of the last upper layer, activated and calibrated.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub name: String,
    pub act: Activation,
    pub neg_sampling_rate: Option<f64>,
}
