//! The `peermirror` command line: parses arguments, sets up logging, and
//! calls the library. Human output (progress bars, tables) lives here.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // RUST_LOG wins; then the log settings, moved by -v and -q.
    cli::log::init(
        &cli::log_settings(&args),
        i32::from(args.verbose) - i32::from(args.quiet),
    );
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
