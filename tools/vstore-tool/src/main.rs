//! `vstore-tool`: a thin `main` over [`vstore_tool::run`].
//!
//! Exit codes: 0 success; 1 the command was refused or failed (bad data,
//! bad store, I/O); 2 the command line itself is malformed (clap's usage
//! errors, and [`vstore_tool::ToolError::Usage`]); 3 the command published
//! a snapshot and then failed (the change landed: do not run it again).
//! A reader that closed the pipe early is not a failure (exit 0).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vstore_tool::Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match vstore_tool::run(cli, &mut out) {
        Ok(()) => ExitCode::from(vstore_tool::error::EXIT_OK),
        // A reader that stopped early (`vstore-tool inspect S | head`) is
        // not an error.
        Err(vstore_tool::ToolError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            drop(out);
            vstore_tool::note!("error: {e}");
            if let Some(hint) = e.recovery_hint() {
                vstore_tool::note!("hint: {hint}");
            }
            match vstore_tool::report::landed() {
                Some((dir, n)) => {
                    vstore_tool::note!(
                        "note: snapshot {n} was published in {} before this error: the change \
                         landed; running the command again would apply it twice",
                        dir.display()
                    );
                    ExitCode::from(vstore_tool::error::EXIT_PUBLISHED_THEN_FAILED)
                }
                None => ExitCode::from(e.exit_code()),
            }
        }
    }
}
