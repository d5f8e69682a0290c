//! The `peermirror` command line: parses arguments, sets up logging, and
//! calls the library. Human output (progress bars, tables) lives here.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    limit_malloc_arenas();
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

/// Caps glibc's malloc arenas at the number of cores (its default is eight
/// per core). Each thread that allocates gets an arena of its own, and
/// memory freed in one is not reused by another: a mirror syncing a million
/// small files peaked at 1.2 GiB resident with the default against 0.46 GiB
/// with one arena, for the same 0.4 GiB of live heap.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = i32::try_from(cores.max(2)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
