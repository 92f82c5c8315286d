//! `vstore-tool`: a thin `main` over [`vstore_tool::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vstore_tool::Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match vstore_tool::run(cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            drop(out);
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
