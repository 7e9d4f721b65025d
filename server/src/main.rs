//! `belfry-server`: the hub's command line. Everything lives in the library (`cli.rs`).

/// jemalloc, with background purging: fan-out bursts fill thousands of socket buffers at
/// once, and glibc's per-thread arenas kept that high-water mark resident long after the
/// buffers drained (the 10,000-connection soak in docs/RELIABILITY.md).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    belfry_server::cli::main().await
}
