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
    /// `w` ready for the matrix product.
    pub pack: gemm::Weights,
    /// The safetensors tensor `w` was read from (empty for a layer the
    /// compiler assembled, such as the stacked heads or gates).
    pub tensor: String,
}

impl Dense {
    /// A layer of weights `w` (`[out, inp]`) and bias `b` (`[out]`), packed.
    pub(crate) fn new(w: Vec<f32>, b: Vec<f32>, inp: usize, out: usize, act: Activation) -> Dense {
        Dense {
            pack: gemm::Weights::new(&w, inp, inp, out),
            inp,
            out,
            w,
            b,
            act,
            tensor: String::new(),
        }
    }

    /// The layer, recorded as read from tensor `name`.
    pub(crate) fn named(mut self, name: &str) -> Dense {
        self.tensor = name.to_string();
        self
    }
}

/// An embedding table `[rows, dim]`.
#[derive(Debug, Clone, PartialEq)]
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

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Transform {
    Identity,
    Log1p,
    Bucketize { bounds: Vec<f32>, table: Table },
}

/// One cross-tower input, resolved against weights and schema.
#[derive(Debug, Clone, PartialEq)]
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
    /// The store column an item input reads, or the name of a user input.
    pub(crate) fn column(&self) -> &str {
        match self {
            Input::ItemNumeric {
                column: ColumnRef::Profile(c) | ColumnRef::Stat(c),
                ..
            }
            | Input::ItemCategorical { column: c, .. } => c,
            Input::UserDense { name, .. } | Input::UserByItem { name, .. } => name,
        }
    }

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

/// How head values are fused into one score (contract v2, "FusionPlan
/// kinds"), with heads by index and columns resolved.
#[derive(Debug, Clone)]
pub(crate) enum FusionPlan {
    /// `sum w_h p_h`; `w` has one weight per head (0 for heads not named).
    WeightedSum(Vec<f64>),
    /// `prod p_h^w_h` over heads with a nonzero weight, times
    /// `prod x_C^a_C` over `columns`.
    Product {
        w: Vec<f64>,
        columns: Vec<(ColumnRef, f64)>,
    },
    /// `p_base * (1 + sum w_h p_h)`.
    ClickWeighted { base: usize, w: Vec<f64> },
    /// `prod (1 + w_h p_h)^a_h`; per head `(w, a)`, `(0, 0)` if not named.
    OffsetProduct(Vec<(f64, f64)>),
    /// `sum w_h / (rank_h + alpha)^beta`.
    Rank { w: Vec<f64>, alpha: f64, beta: f64 },
    /// `sum w_h / (rank_h^alpha_h + beta_h)`; per head `(w, alpha, beta)`,
    /// weight 0 if not named.
    RankPerHead(Vec<(f64, f64, f64)>),
}

impl FusionPlan {
    /// Whether the fusion reads head `h`.
    pub(crate) fn reads_head(&self, h: usize) -> bool {
        match self {
            FusionPlan::WeightedSum(w)
            | FusionPlan::Product { w, .. }
            | FusionPlan::Rank { w, .. } => w.get(h).is_some_and(|&w| w != 0.0),
            FusionPlan::ClickWeighted { base, w } => {
                *base == h || w.get(h).is_some_and(|&w| w != 0.0)
            }
            FusionPlan::OffsetProduct(t) => t.get(h).is_some_and(|&(w, a)| w != 0.0 && a != 0.0),
            FusionPlan::RankPerHead(t) => t.get(h).is_some_and(|&(w, ..)| w != 0.0),
        }
    }

    /// The fusion kind's name in `model.json`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            FusionPlan::WeightedSum(_) => "weighted_sum",
            FusionPlan::Product { .. } => "product",
            FusionPlan::ClickWeighted { .. } => "click_weighted",
            FusionPlan::OffsetProduct(_) => "offset_product",
            FusionPlan::Rank { .. } => "rank",
            FusionPlan::RankPerHead(_) => "rank_per_head",
        }
    }

    /// The item columns the fusion reads.
    pub(crate) fn columns(&self) -> &[(ColumnRef, f64)] {
        match self {
            FusionPlan::Product { columns, .. } => columns,
            _ => &[],
        }
    }
}

/// `heads[i].normalize`: the head's value divided by `values[bucket]`,
/// the bucket of the item's value of `column`.
#[derive(Debug, Clone)]
pub(crate) struct Normalize {
    pub column: ColumnRef,
    pub bounds: Vec<f32>,
    pub values: Vec<f32>,
}

/// A head: its tower, its own one-output layer, activation, calibration
/// and normalization.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub name: String,
    pub act: Activation,
    pub neg_sampling_rate: Option<f64>,
    /// `heads[i].tower.layers` (empty: none).
    pub tower: Vec<Dense>,
    /// The head's `[1, in]` layer (activation applied separately).
    pub out: Dense,
    pub normalize: Option<Normalize>,
}

/// `upper.mmoe`: experts over the shared upper output, and every head's
/// gate stacked into one layer `[heads x experts, width]`.
#[derive(Debug, Clone)]
pub(crate) struct Mmoe {
    pub experts: Vec<Vec<Dense>>,
    pub gates: Dense,
    /// Every expert's output width.
    pub dim: usize,
}

/// How the first upper layer's columns split by part (contract v2,
/// `upper.inputs`): each `[out, part width]`, row-major, empty when the
/// part is not an input.
#[derive(Debug, Clone, Default)]
pub(crate) struct FirstLayer {
    /// The layer's output width.
    pub out: usize,
    /// Columns of the user vector: applied once per query.
    pub user: Vec<f32>,
    /// Columns of the item vector.
    pub item: Vec<f32>,
    /// Columns of the cross tower's output.
    pub cross: Vec<f32>,
    /// The column of `<user, item>` (`[out]`).
    pub dot: Vec<f32>,
    /// Columns of `user * item`.
    pub hadamard: Vec<f32>,
}

impl FirstLayer {
    /// Whether the item columns depend on the user (`dot`, `hadamard`):
    /// then the packed `[item | cross]` weights are built per query.
    pub(crate) fn per_query(&self) -> bool {
        !self.dot.is_empty() || !self.hadamard.is_empty()
    }
}
