//! `vstore-tool`: build, update, inspect, verify and query vstore stores
//! from the command line.
//!
//! The binary is a thin `main` over [`run`], which writes everything it
//! reports to an injected writer (standard output in the binary, a buffer
//! in tests); progress bars go to standard error and only to a terminal.
//! One module per subcommand under [`cmd`].
//!
//! ```no_run
//! use clap::Parser;
//! let cli = vstore_tool::Cli::parse_from(["vstore-tool", "verify", "items.vstore"]);
//! let mut out = Vec::new();
//! vstore_tool::run(cli, &mut out)?;
//! # Ok::<(), vstore_tool::ToolError>(())
//! ```

pub mod cli;
pub mod cmd;
pub mod error;
pub mod inputs;
pub mod npy;
pub mod progress;
pub mod report;
pub mod synth;
pub mod table;

pub use cli::{Cli, Cmd};
pub use error::{Result, ToolError};

use std::io::Write;

use progress::Progress;

/// Runs one parsed command line, writing its report to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let p = Progress::new(cli.quiet);
    if publishes_json(&cli.cmd) {
        // `--json` on a publishing command: its report lines go to
        // standard error, and standard output holds one JSON object (even
        // if standard error cannot be written: the lines are notes then).
        let mut notes = LossyStderr;
        dispatch(cli.cmd, &p, &mut notes)?;
        if let Some(v) = report::take_published() {
            report::json(out, &v)?;
        }
        return Ok(());
    }
    dispatch(cli.cmd, &p, out)
}

/// Standard error as a writer that drops what it cannot write.
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Whether `cmd` publishes a snapshot and was asked for `--json`.
fn publishes_json(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Build(a) => a.json,
        Cmd::AddEmbedding(a) => a.json,
        Cmd::DropEmbedding(a) => a.json,
        Cmd::UpdateStats(a) => a.json,
        Cmd::AddModel(a) => a.json,
        Cmd::DropModel(a) => a.json,
        Cmd::AddItems(a) | Cmd::UpsertItems(a) => a.json,
        Cmd::DeleteItems(a) => a.json,
        Cmd::Compact(a) => a.json,
        _ => false,
    }
}

/// Runs one subcommand, writing its report to `out`.
fn dispatch(cmd: Cmd, p: &Progress, out: &mut dyn Write) -> Result<()> {
    let p = *p;
    match cmd {
        Cmd::Build(a) => cmd::build::run(&a, &p, out),
        Cmd::AddEmbedding(a) => cmd::embeddings::add(&a, &p, out),
        Cmd::DropEmbedding(a) => cmd::embeddings::drop_embedding(&a, out),
        Cmd::UpdateStats(a) => cmd::stats::run(&a, &p, out),
        Cmd::AddModel(a) => cmd::model::add(&a, out),
        Cmd::DropModel(a) => cmd::model::drop_model(&a, out),
        Cmd::AddItems(a) => cmd::items::add(&a, false, &p, out),
        Cmd::UpsertItems(a) => cmd::items::add(&a, true, &p, out),
        Cmd::DeleteItems(a) => cmd::items::delete_items(&a, out),
        Cmd::Compact(a) => cmd::items::compact(&a, out),
        Cmd::Inspect(a) => cmd::inspect::run(&a, out),
        Cmd::Verify(a) => cmd::verify::run(&a, &p, out),
        Cmd::Query(a) => cmd::query::run(&a, out),
        Cmd::Gc(a) => cmd::gc::run(&a, out),
        Cmd::Diff(a) => cmd::diff::run(&a, out),
        Cmd::Recover(a) => cmd::recover::run(&a, out),
        Cmd::Restore(a) => cmd::restore::run(&a, out),
        Cmd::Demo(a) => cmd::demo::run(&a, &p, out),
        Cmd::Completions(a) => {
            use clap::CommandFactory;
            let mut c = Cli::command();
            // Into a buffer first: `generate` panics when its writer fails
            // (a closed pipe, a full disk); a failed write here is an error.
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut c, "vstore-tool", &mut script);
            out.write_all(&script).map_err(write_error)
        }
        Cmd::Man(a) => man(&a, out),
    }
}

/// A failed write to the command's output, as an error.
fn write_error(e: std::io::Error) -> error::ToolError {
    error::ToolError::io("write", std::path::Path::new("<output>"), e)
}

/// `man`: the main page, one subcommand's page (named as in its
/// `SEE ALSO` references, `vstore-tool-<name>`), or every page into a
/// directory.
fn man(a: &cli::ManArgs, out: &mut dyn Write) -> Result<()> {
    use clap::CommandFactory;
    let mut c = Cli::command().disable_help_subcommand(true);
    c.build();
    if let Some(dir) = &a.dir {
        clap_mangen::generate_to(c, dir)
            .map_err(|e| error::ToolError::io("write man pages into", dir, e))?;
        say!(out, "wrote the man pages into {}", dir.display());
        return Ok(());
    }
    let page = match &a.subcommand {
        None => c,
        Some(name) => {
            let Some(sub) = c.find_subcommand(name).cloned() else {
                let names: Vec<&str> = c.get_subcommands().map(|s| s.get_name()).collect();
                return Err(error::ToolError::Usage(format!(
                    "no subcommand {name:?}; the subcommands are {}",
                    names.join(", ")
                )));
            };
            sub
        }
    };
    clap_mangen::Man::new(page).render(out).map_err(write_error)
}

/// Writes one line to standard error, ignoring a failure to write it (a
/// warning or note must not turn into a panic, as `eprintln!` does when
/// standard error is closed or full, nor hide the command's own outcome).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Writes to `out`, mapping a failed write (e.g. a closed pipe) to an error.
#[macro_export]
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(|e| $crate::error::ToolError::io("write", std::path::Path::new("<output>"), e))?
    };
}
