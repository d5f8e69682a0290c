//! The `peermirror` command line: parses arguments, sets up logging, and
//! calls the library. Human output (progress bars, tables) lives here.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use peermirror::config::Layer;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // RUST_LOG wins; then the log.level setting. A settings file that does
    // not load is reported by the command that needs it, not here.
    let data = cli::data_dir(&args);
    let level = cli::settings(
        args.config.as_deref(),
        &data,
        Layer::new("default"),
        Layer::new("command line"),
    )
    .map(|s| s.config.log.level)
    .unwrap_or_else(|_| peermirror::config::LogSettings::default().level);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
