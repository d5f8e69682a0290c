//! The `peermirror` command line: parses arguments, sets up logging, and
//! calls the library. Human output (progress bars, tables) lives here.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tune_malloc();
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

/// Gives glibc's malloc one arena (its default is eight per core). Each
/// thread that allocates gets an arena of its own, and memory freed in one
/// is not reused by another: a mirror syncing a million small files peaked
/// at 1.2 GiB resident with the default, 176-198 MiB with two arenas and
/// 172-174 MiB with one (threads still allocate small blocks from their
/// own caches without the arena's lock; that sync took about 20% longer).
///
/// Also fixes the size above which blocks are mmapped at 1 MiB. By default
/// glibc raises it to the largest block freed so far (up to 32 MiB), so
/// after a download's tables are freed the next ones land in the heap and
/// fragment it; the same mirror peaked 8 MiB lower with it fixed.
///
/// Fixing it also fixes the trim threshold, at glibc's 128 KiB: every free
/// at the top of the heap then gave memory back, and the next frame buffer
/// faulted it in again, zeroed. A transfer's buffers come and go all the
/// time, so up to 16 MiB of free heap top is kept (TCP sync of 1 GiB on
/// loopback: about 10% faster; docs/benchmarks.md).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        }
    }
}
