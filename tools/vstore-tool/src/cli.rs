//! Command-line arguments (clap). Each subcommand's arguments are a struct
//! its module runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// What `--version` prints: the tool's version and the store format
/// versions it reads and writes.
pub static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (store format: writes version {}, reads versions {} to {})",
        env!("CARGO_PKG_VERSION"),
        vstore::FORMAT_VERSION,
        vstore::OLDEST_FORMAT_VERSION,
        vstore::FORMAT_VERSION
    )
});

/// Build, update, inspect, verify and query vstore stores.
///
/// Publishing subcommands (build, add-embedding, drop-embedding, update-stats,
/// add-model, drop-model, add-items, upsert-items, delete-items, compact)
/// each publish one new snapshot atomically, or leave the store exactly as
/// it was if anything is wrong with their input.
#[derive(Debug, Parser)]
#[command(name = "vstore-tool", version = VERSION.as_str(), about, long_about = None)]
pub struct Cli {
    /// No progress bars (they are also hidden when standard error is not a terminal).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// The subcommand.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands. Each is named by the operation's one word (the
/// library call has the same name); the former names (`add-version`,
/// `drop-version`, `refresh-stats`, `update-items`) stay as hidden aliases
/// so existing scripts keep working.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create a store from .npy ids/embeddings and Parquet/CSV tables and
    /// publish its first snapshot.
    Build(BuildArgs),
    /// Add an embedding version beside the ones the store holds (a rollout).
    #[command(alias = "add-version")]
    AddEmbedding(AddEmbeddingArgs),
    /// Drop an embedding version (and its model bundle).
    #[command(alias = "drop-version")]
    DropEmbedding(DropArgs),
    /// Overwrite statistics columns from a Parquet/CSV table.
    #[command(alias = "refresh-stats")]
    UpdateStats(UpdateStatsArgs),
    /// Add a model bundle (model.json + weights.safetensors): three-tower, or
    /// an item tower alone (`vstore.item_tower.v1`) that computes the vectors
    /// of items added without one.
    AddModel(AddModelArgs),
    /// Remove a model bundle of an embedding version (by name when there are
    /// several), or its item tower (--item-tower).
    DropModel(DropModelArgs),
    /// Add new items (ids must be new) as a new segment.
    AddItems(ItemsArgs),
    /// Add or replace items (a newer row shadows the old one).
    #[command(alias = "update-items")]
    UpsertItems(ItemsArgs),
    /// Delete items by id (tombstones).
    DeleteItems(DeleteArgs),
    /// Merge segments, dropping deleted and shadowed rows.
    Compact(CompactArgs),
    /// Show snapshots, schema, column summaries, files, or one item.
    Inspect(InspectArgs),
    /// Check every checksum of every retained snapshot (exit code 0 only if clean).
    Verify(VerifyArgs),
    /// Run a two-tower or three-tower query and print the top k.
    Query(QueryArgs),
    /// Remove snapshots the retention policy does not keep, and unreferenced files.
    Gc(GcArgs),
    /// What changed between two snapshots: versions, bundles, rows, files.
    Diff(DiffArgs),
    /// Explicit recovery steps that give data up (each needs its flag).
    Recover(RecoverArgs),
    /// Publish an old snapshot's content as the newest snapshot (a
    /// rollback that keeps the history); refused if gc collected its files.
    Restore(RestoreArgs),
    /// Build a synthetic 200k-item store with a three-tower bundle and run queries.
    Demo(DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    /// generated from these definitions, e.g.
    /// `vstore-tool completions bash > /etc/bash_completion.d/vstore-tool`.
    Completions(CompletionsArgs),
    /// Print a man page (roff) generated from these definitions, e.g.
    /// `vstore-tool man > vstore-tool.1 && man ./vstore-tool.1`,
    /// `vstore-tool man build` for one subcommand's page, or write every
    /// page with `vstore-tool man --dir DIR`.
    Man(ManArgs),
}

/// Checks an `--embedding` value's grammar at parse time (clap reports a
/// bad one as a usage error, exit 2); the command parses it again.
fn checked_embedding(s: &str) -> std::result::Result<String, String> {
    crate::inputs::parse_embedding_arg(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a `--column` value's grammar at parse time (see
/// [`checked_embedding`]).
fn checked_column(s: &str) -> std::result::Result<String, String> {
    crate::inputs::parse_column_spec(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `man`: which page, or every page into a directory.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The subcommand whose page to print (`vstore-tool-<name>(1)`);
    /// without it, the main page.
    pub subcommand: Option<String>,
    /// Write the main page and every subcommand's page
    /// (`vstore-tool.1`, `vstore-tool-build.1`, ...) into this existing
    /// directory instead of printing one.
    #[arg(long, conflicts_with = "subcommand")]
    pub dir: Option<std::path::PathBuf>,
}

/// Where item profile and statistics columns come from.
#[derive(Debug, Args, Clone, Default)]
pub struct TableArgs {
    /// Item profile table (.parquet/.pq or .csv). `build`: integer columns
    /// become categorical, float columns numeric (override with --column);
    /// other commands: every column must be one of the store's profile
    /// columns.
    #[arg(long, value_name = "TABLE")]
    pub profile: Option<PathBuf>,
    /// Item statistics table (.parquet/.pq or .csv). `build`: every column
    /// becomes a statistics column; other commands: every column must be
    /// one of the store's statistics columns.
    #[arg(long, value_name = "TABLE")]
    pub stats: Option<PathBuf>,
    /// Name of the item id column in the tables.
    #[arg(long, default_value = "id", value_name = "NAME")]
    pub id_column: String,
    /// Leave this table column out (repeatable); pandas' saved index
    /// (`__index_level_0__`) is always left out.
    #[arg(long = "skip-column", value_name = "NAME")]
    pub skip_columns: Vec<String>,
}

/// `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Print what was published (or collected) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory to create (must not hold a store yet).
    pub store: PathBuf,
    /// Item ids, .npy of uint64 or int64 (one per embedding row).
    #[arg(long, value_name = "NPY")]
    pub ids: PathBuf,
    /// An embedding version: `space@version[:dtype]=FILE.npy` (float32 or
    /// float16 rows in the order of --ids; dtype is the storage type: f32,
    /// f16, bf16 or i8; default --dtype). Repeat for several versions. A
    /// version whose item tower is given (--item-tower, or a --model that
    /// carries one) needs no file: its vectors are computed from --profile.
    #[arg(long = "embedding", value_name = "KEY[:DTYPE]=NPY", value_parser = checked_embedding)]
    pub embeddings: Vec<String>,
    /// An item-tower-only bundle directory (`vstore.item_tower.v1`) to add
    /// (repeatable, one per version).
    #[arg(long = "item-tower", value_name = "DIR")]
    pub item_towers: Vec<PathBuf>,
    /// Storage dtype of embeddings that do not name one.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16", "i8"])]
    pub dtype: String,
    /// Profile and statistics tables.
    #[command(flatten)]
    pub tables: TableArgs,
    /// Declare a column's kind and/or default for missing values:
    /// `NAME[:KIND][=DEFAULT]`, KIND one of categorical, numeric, stat.
    #[arg(long = "column", value_name = "SPEC", value_parser = checked_column)]
    pub columns: Vec<String>,
    /// A model bundle directory (model.json + weights.safetensors) to add.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Precompute the item part of the bundle's first layer, stored as f32 or f16.
    #[arg(long, value_name = "DTYPE", requires = "model", value_parser = ["f32", "f16"])]
    pub precompute: Option<String>,
    /// Snapshot metadata `KEY=VALUE` (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
}

/// `add-embedding`.
#[derive(Debug, Args)]
pub struct AddEmbeddingArgs {
    /// Print what was published (or collected) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory.
    pub store: PathBuf,
    /// Item ids of the embedding rows (every live item of the store, once;
    /// with an item tower, those left out get a computed vector).
    #[arg(long, value_name = "NPY")]
    pub ids: PathBuf,
    /// The new version: `space@version[:dtype]=FILE.npy`.
    #[arg(long, value_name = "KEY[:DTYPE]=NPY", value_parser = checked_embedding)]
    pub embedding: String,
    /// The new version's item tower (an item-tower-only bundle directory):
    /// live items left out of --ids get their vector computed by it.
    #[arg(long = "item-tower", value_name = "DIR")]
    pub item_tower: Option<PathBuf>,
    /// Storage dtype if the embedding does not name one.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16", "i8"])]
    pub dtype: String,
    /// A model bundle for the new version, published with it.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Precompute the bundle's first-layer item part (f32 or f16).
    #[arg(long, value_name = "DTYPE", requires = "model", value_parser = ["f32", "f16"])]
    pub precompute: Option<String>,
    /// Take the name of a version dropped earlier (refused otherwise): for
    /// vectors made by the same model as the dropped ones. A new model
    /// needs a new version string.
    #[arg(long)]
    pub same_model_as_dropped: bool,
}

/// `drop-embedding` and `drop-model`.
#[derive(Debug, Args)]
pub struct DropArgs {
    /// Print what was published (or collected) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory.
    pub store: PathBuf,
    /// The embedding version, `space@version`.
    pub key: String,
}

/// `update-stats`.
#[derive(Debug, Args)]
pub struct UpdateStatsArgs {
    /// Print what was published (or collected) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory.
    pub store: PathBuf,
    /// Table of new statistics (.parquet/.pq or .csv): the id column and
    /// statistics columns of the store; columns not in it keep their values.
    #[arg(long, value_name = "TABLE")]
    pub stats: PathBuf,
    /// Name of the item id column.
    #[arg(long, default_value = "id", value_name = "NAME")]
    pub id_column: String,
    /// Leave this table column out (repeatable).
    #[arg(long = "skip-column", value_name = "NAME")]
    pub skip_columns: Vec<String>,
}

/// `add-model`.
#[derive(Debug, Args)]
pub struct AddModelArgs {
    /// Print what was published (or collected) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory.
    pub store: PathBuf,
    /// Bundle directory holding model.json and weights.safetensors.
    pub bundle: PathBuf,
    /// Precompute the first-layer item part, stored as f32 or f16.
    #[arg(long, value_name = "DTYPE", value_parser = ["f32", "f16"])]
    pub precompute: Option<String>,
    /// The precision the bundle's dense layers run at: f32, bf16 or int8
    /// (the weights are converted now and stored with the bundle; products
    /// run on AMX where the CPU has it). Heads, calibration and fusion stay
    /// f32.
    #[arg(long, value_name = "PRECISION", default_value = "f32", ignore_case = true,
          value_parser = ["f32", "bf16", "int8"])]
    pub precision: String,
    /// Replace the bundle the store already holds for the same version
    /// under the same name (`name` in model.json; "default" if none), or
    /// the version's item tower.
    #[arg(long)]
    pub replace: bool,
}

/// `drop-model`.
#[derive(Debug, Args)]
pub struct DropModelArgs {
    /// Print what was published (or collected) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory.
    pub store: PathBuf,
    /// The embedding version, `space@version`.
    pub key: String,
    /// The bundle's name (needed when the version has several bundles).
    #[arg(long, value_name = "NAME", conflicts_with = "item_tower")]
    pub name: Option<String>,
    /// Drop the version's item-tower-only bundle instead.
    #[arg(long)]
    pub item_tower: bool,
}

/// `add-items` and `upsert-items`.
#[derive(Debug, Args)]
pub struct ItemsArgs {
    /// Print what was published (or collected) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory.
    pub store: PathBuf,
    /// Item ids, .npy.
    #[arg(long, value_name = "NPY")]
    pub ids: PathBuf,
    /// Vectors for a version the store holds: `space@version=FILE.npy`
    /// (repeat per version). Every version needs one, except a version
    /// with an item tower: the store computes its vectors from --profile.
    #[arg(long = "embedding", value_name = "KEY=NPY")]
    pub embeddings: Vec<String>,
    /// Profile and statistics tables (columns of the store's schema).
    #[command(flatten)]
    pub tables: TableArgs,
}

/// `delete-items`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Print what was published (or collected) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory.
    pub store: PathBuf,
    /// Ids to delete: a .npy file, a text file (ids separated by
    /// whitespace or commas), or `-` for standard input.
    #[arg(long, value_name = "FILE")]
    pub ids: PathBuf,
}

/// `compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Print what was published (or collected) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory.
    pub store: PathBuf,
    /// Compact only if the policy asks for it (more segments than
    /// --max-segments or more dead rows than --max-dead).
    #[arg(long)]
    pub if_needed: bool,
    /// Policy: most segments before compacting.
    #[arg(long, default_value_t = 8)]
    pub max_segments: usize,
    /// Policy: largest fraction of deleted rows before compacting.
    #[arg(long, default_value_t = 0.2)]
    pub max_dead: f64,
}

/// `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Store directory.
    pub store: PathBuf,
    /// Inspect this retained snapshot instead of the newest.
    #[arg(long)]
    pub snapshot: Option<u64>,
    /// Show one item: its row, every column and every embedding.
    #[arg(long)]
    pub id: Option<u64>,
    /// JSON for scripts instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Store directory.
    pub store: PathBuf,
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Store directory.
    pub store: PathBuf,
    /// The user vector's embedding version, `space@version`.
    #[arg(long, value_name = "KEY")]
    pub embedding: String,
    /// The user vector: a .npy (1-D float) or a .json file holding an
    /// array of numbers, or an object `{"vector": [...], "embedding":
    /// "space@version"}` (the tag, if given, must be --embedding).
    #[arg(long, value_name = "FILE")]
    pub user: PathBuf,
    /// Candidate ids: a .npy file, a text file (ids separated by
    /// whitespace or commas), or `-` for standard input.
    #[arg(long, value_name = "FILE", conflicts_with = "all")]
    pub candidates: Option<PathBuf>,
    /// Score every item (full scan) instead of candidates.
    #[arg(long)]
    pub all: bool,
    /// How many results (at most 10 million).
    #[arg(long, short, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub k: u32,
    /// Three-tower scoring with the snapshot's bundle for the version.
    #[arg(long)]
    pub three_tower: bool,
    /// User-side model inputs: a JSON object given inline (it starts with
    /// `{`) or the path of a file holding one: `{"dense": {"name": [..]},
    /// "by_item": {"name": {"3": [..]}}}`.
    #[arg(long, value_name = "JSON-or-FILE", requires = "three_tower")]
    pub inputs: Option<PathBuf>,
    /// Also print each head's value (calibrated and normalized: what the
    /// fusion reads).
    #[arg(long, requires = "three_tower")]
    pub heads: bool,
    /// The bundle to score with, by name (needed when the version has
    /// several bundles).
    #[arg(long = "model", value_name = "NAME", requires = "three_tower")]
    pub model: Option<String>,
    /// A fusion to use instead of the bundle's, for this query: a JSON
    /// object (`{"kind": "weighted_sum", "weights": {...}}`) or a file
    /// holding one.
    #[arg(long, value_name = "JSON|FILE", requires = "three_tower")]
    pub fusion: Option<String>,
    /// Query this retained snapshot instead of the newest (what it answered
    /// then: its items, vectors and bundles).
    #[arg(long, value_name = "N")]
    pub snapshot: Option<u64>,
    /// A filter on profile columns, ANDed when repeated: `COL in 1,2`,
    /// `COL not in 3`, `COL between LO HI`.
    #[arg(long = "where", value_name = "EXPR")]
    pub filters: Vec<String>,
    /// Score at most this many candidates (the first ones, in the file's
    /// order, that are found and pass the filter); the rest are reported.
    #[arg(long, value_name = "N", conflicts_with = "max_multiply_adds")]
    pub max_items: Option<usize>,
    /// Spend at most this many multiply-adds (as many candidates as they
    /// pay for, in the file's order); the rest are reported.
    #[arg(long, value_name = "N")]
    pub max_multiply_adds: Option<u64>,
    /// Also print, per hit, what the model saw: its cross-tower inputs
    /// after transforms and defaults, and each head's logit (three-tower).
    #[arg(long, requires = "three_tower")]
    pub log_features: bool,
    /// For a bundle added at bf16 or int8: return the top k, scores and
    /// heads exactly as the bundle at f32 would (the candidates near the
    /// k-th are scored again in f32; see docs/DESIGN.md, "Precision").
    #[arg(long, requires = "three_tower")]
    pub exact: bool,
    /// Score the three-tower model on up to this many threads (the result
    /// is the one-thread result, bit for bit; worth it from a few thousand
    /// candidates).
    #[arg(long, value_name = "N", requires = "three_tower",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Run the query this many times and report latency percentiles and
    /// the median time of each stage (resolve, gather, cross, upper,
    /// heads, top-k).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub repeat: u32,
    /// Fault the store's pages in on a background thread after opening
    /// (`background`, the library's default for serving) or read them as
    /// the query touches them (`off`, the default for this one-shot
    /// command).
    #[arg(long, value_enum, default_value_t = PrefaultArg::Off)]
    pub prefault: PrefaultArg,
    /// Lock the store's mapped files in memory (mlock); refused naming
    /// RLIMIT_MEMLOCK when the store does not fit under it.
    #[arg(long)]
    pub mlock: bool,
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `--prefault` values (`vstore::Prefault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrefaultArg {
    /// Pages are read when a query touches them.
    Off,
    /// A background thread faults them in after the open.
    Background,
}

/// `gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Print what was published (or collected) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory.
    pub store: PathBuf,
    /// Keep the newest N snapshots.
    #[arg(long, default_value_t = 2)]
    pub keep_last: usize,
    /// Also keep snapshots replaced less than this many seconds ago.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
}

/// `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Store directory.
    pub store: PathBuf,
    /// The snapshot whose content to publish again.
    #[arg(long)]
    pub snapshot: u64,
    /// Print the result as JSON (`{"snapshot", "restored_from", "items"}`).
    #[arg(long)]
    pub json: bool,
}

/// `recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Store directory.
    pub store: PathBuf,
    /// Verify every snapshot and rename the manifests of those newer than
    /// the newest intact one (a damaged manifest, or a data file missing,
    /// truncated or failing its checksum) to `MANIFEST-….damaged`, giving
    /// their snapshots up, so that readers and writers work again on the
    /// newest intact snapshot.
    #[arg(long, required = true)]
    pub set_aside_damaged: bool,
}

/// `diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Store directory.
    pub store: PathBuf,
    /// The older snapshot.
    pub from: u64,
    /// The newer snapshot (default: the newest).
    pub to: Option<u64>,
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to build the store (default: a temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of items (at most 50 million).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..=50_000_000))]
    pub rows: u32,
    /// Queries per kind for the latency percentiles.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub queries: u32,
    /// Instead of building a store, write the synthetic catalogue as the
    /// files a pipeline hands over (ids.npy, emb_v1.npy, items.parquet,
    /// stats.csv, model/, item_tower/, fresh_ids.npy, fresh_items.parquet,
    /// user.json, user_inputs.json, candidates.txt), for trying `build`,
    /// `add-items` and `query` by hand.
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
    /// Print a JSON summary (snapshot, items, query latency percentiles in
    /// microseconds) on standard output; the step-by-step report goes to
    /// standard error.
    #[arg(long, conflicts_with = "export")]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn former_subcommand_names_run_the_renamed_subcommands() {
        let cli = Cli::command();
        for (former, now) in [
            ("add-version", "add-embedding"),
            ("drop-version", "drop-embedding"),
            ("refresh-stats", "update-stats"),
            ("update-items", "upsert-items"),
        ] {
            let sub = cli.find_subcommand(former).expect(former);
            assert_eq!(sub.get_name(), now, "{former}");
        }
        // The aliases are hidden: help lists each operation once.
        let help = Cli::command().render_help().to_string();
        for former in [
            "add-version",
            "drop-version",
            "refresh-stats",
            "update-items",
        ] {
            assert!(!help.contains(former), "{former} in help:\n{help}");
        }
    }
}
