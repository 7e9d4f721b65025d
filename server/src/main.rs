//! `belfry-server`: the hub's command line. Everything lives in the library (`cli.rs`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    belfry_server::cli::main().await
}
