//! How the app was launched: `--hidden` (autostart: tray only), `--server` / `--token`
//! (or `BELFRY_SERVER` / `BELFRY_TOKEN`) for headless and scripted setups, and
//! `BELFRY_DESKTOP_DATA_DIR` to keep the data somewhere else.

use belfry_client::Overrides;
use clap::Parser;
use std::ffi::OsString;
use std::path::PathBuf;

/// The tray app's command line.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "belfry-desktop",
    version,
    about = "Belfry: notifications from your hub, in the tray"
)]
pub struct Options {
    /// Start in the tray without opening the window.
    #[arg(long)]
    pub hidden: bool,
    /// The hub's URL (saved, like a change in Settings).
    #[arg(long, env = "BELFRY_SERVER")]
    pub server: Option<String>,
    /// The user token (saved, like a change in Settings).
    #[arg(long, env = "BELFRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where settings, cursor and history are kept [default: the platform's app data dir].
    #[arg(long, env = "BELFRY_DESKTOP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl Options {
    /// Parses arguments; unknown ones (as a desktop launcher may add) are ignored rather
    /// than keeping the app from starting.
    pub fn from_args<I, T>(args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Options::try_parse_from(args).unwrap_or_else(|e| {
            // Not eprintln!, which panics on a closed stderr.
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("{e}\n"));
            Options::default()
        })
    }

    /// The settings given on the command line.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            server_url: self.server.clone(),
            token: self.token.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let o = Options::from_args([
            "belfry-desktop",
            "--hidden",
            "--server",
            "http://h:1",
            "--token",
            "t",
        ]);
        assert!(o.hidden);
        assert_eq!(o.overrides().server_url.as_deref(), Some("http://h:1"));
        assert_eq!(o.overrides().token.as_deref(), Some("t"));
        let bad = Options::from_args(["belfry-desktop", "--no-such-flag"]);
        assert!(!bad.hidden);
    }
}
