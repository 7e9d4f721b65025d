//! `belfry-follow`: a headless Belfry client for scripts and servers. It stays connected,
//! catches up after every disconnect (and at start, from its data dir), and prints each
//! new notification once, as one JSON line on stdout; connection changes go to stderr.

use belfry_client::{ClientEvent, ConnectionConfig, Device, Overrides};
use clap::Parser;
use std::io::Write as _;
use std::path::PathBuf;

/// Follow a Belfry hub from the command line.
#[derive(Debug, Parser)]
#[command(name = "belfry-follow", version, about)]
struct Args {
    /// The hub's base URL.
    #[arg(long, env = "BELFRY_SERVER")]
    server: Option<String>,
    /// The user token.
    #[arg(long, env = "BELFRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the cursor and history are kept.
    #[arg(
        long,
        env = "BELFRY_DESKTOP_DATA_DIR",
        default_value = "belfry-follow-data"
    )]
    data_dir: PathBuf,
    /// Also show native desktop notifications.
    #[arg(long)]
    popups: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match follow(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A closed stdout ends the follower, as it ends any filter (`| head -1`).
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            note(format_args!("belfry-follow: {e}"));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn follow(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // A closed stderr (a supervisor that closed the pipe) loses the log lines; the
        // default would report each lost line on stderr with eprintln!, which panics.
        .log_internal_errors(false)
        .try_init();
    let overrides = Overrides {
        server_url: args.server,
        token: args.token,
    };
    let mut config = ConnectionConfig::default();
    if let Ok(ms) = std::env::var("BELFRY_BACKOFF_MIN_MS").map(|v| v.parse::<u64>()) {
        config.backoff_min = std::time::Duration::from_millis(ms?);
    }
    let (device, mut events) = Device::start(&args.data_dir, overrides, config).await?;
    if !args.popups {
        device.disable_popups();
    }
    let mut stdout = std::io::stdout();
    while let Some(event) = events.recv().await {
        match event {
            ClientEvent::Stored { notifications, .. } => {
                for n in notifications {
                    writeln!(stdout, "{}", serde_json::to_string(&n)?)?;
                }
                stdout.flush()?;
            }
            // Not eprintln!, which panics on a closed stderr.
            ClientEvent::Status(s) => note(format_args!("[{:?}] {}", s.state, s.detail)),
            ClientEvent::CaughtUp { received } => note(format_args!("caught up: {received} new")),
            ClientEvent::NotifierUnavailable { reason } => note(reason),
            _ => {}
        }
    }
    Ok(())
}

/// A line on stderr for the person watching; lost if nobody is.
fn note(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
