//! `belfry-server`: the hub's command line. Everything lives in the library (`cli.rs`).

use std::io::Write as _;
use std::process::ExitCode;

/// jemalloc, with background purging: fan-out bursts fill thousands of socket buffers at
/// once, and glibc's per-thread arenas kept that high-water mark resident long after the
/// buffers drained (the 10,000-connection soak in docs/RELIABILITY.md).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match belfry_server::cli::main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = writeln!(std::io::stderr(), "Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
