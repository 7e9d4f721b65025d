//! The command line: `serve` (the default), `token` and `publish`. The `serve` flags come
//! from the one declaration of the settings (`config.rs`); each is also a `BELFRY_*`
//! environment variable and a key of the optional TOML file (`--config`), layered
//! defaults < file < environment < flags.

use crate::config::{self, Config, Flags, SETTINGS, Setting};
use crate::secrets;
use anyhow::{Context, bail};
use belfry_protocol::{ErrorResponse, PublishRequest, PublishResponse};
use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use figment::value::Dict;
use std::io::Write as _;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

/// The Belfry notification hub.
#[derive(Debug, Parser)]
#[command(
    name = "belfry-server",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// TOML configuration file (keys named like the settings, e.g. `default_ttl = "7d"`).
    #[arg(long, env = "BELFRY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The settings every command reads (the data dir and the JWT secret).
    #[command(flatten)]
    common: SettingFlags<Common>,
    #[command(flatten)]
    serve: SettingFlags<Serving>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub (the default when no command is given).
    Serve(SettingFlags<Serving>),
    /// Print a user token signed with this hub's secret.
    Token(TokenArgs),
    /// Publish a notification over HTTP (for shell scripts and cron jobs).
    Publish(PublishArgs),
    /// Print the store's epoch, or give it a new one (--renew) after restoring a backup
    /// the hub cannot notice (see DEPLOY.md). Opens the store as the hub does: it applies
    /// pending migrations and notices a restore it can see by itself. Hubs running on the
    /// store follow a renewal within seconds.
    Epoch(EpochArgs),
}

#[derive(Debug, Clone, Args)]
struct EpochArgs {
    /// Give the store a new epoch: every client starts over at its next connect.
    #[arg(long)]
    renew: bool,
    /// The store's URL, as `serve --database-url` takes it [default: SQLite in the data
    /// dir].
    #[arg(long, env = "BELFRY_DATABASE_URL")]
    database_url: Option<String>,
}

/// Which settings a set of flags holds.
pub trait Selection: std::fmt::Debug + Clone + Send + Sync + 'static {
    /// Whether the setting is in this set.
    fn holds(setting: &Setting) -> bool;
    /// Whether its flags may be given before or after a subcommand.
    const GLOBAL: bool;
}

/// The settings every command reads: given anywhere on the line.
#[derive(Debug, Clone)]
pub struct Common;
impl Selection for Common {
    fn holds(s: &Setting) -> bool {
        matches!(s.key, "data_dir" | "jwt_secret")
    }
    const GLOBAL: bool = true;
}

/// The rest: the hub's own.
#[derive(Debug, Clone)]
pub struct Serving;
impl Selection for Serving {
    fn holds(s: &Setting) -> bool {
        !Common::holds(s)
    }
    const GLOBAL: bool = false;
}

/// The values of the flags of one [`Selection`] that were given, as the command line's
/// layer of the configuration.
#[derive(Debug, Clone)]
pub struct SettingFlags<S> {
    values: Dict,
    selection: PhantomData<S>,
}

impl<S: Selection> SettingFlags<S> {
    fn settings() -> impl Iterator<Item = &'static Setting> {
        SETTINGS.iter().filter(|s| S::holds(s))
    }
}

impl<S: Selection> FromArgMatches for SettingFlags<S> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = SettingFlags {
            values: Dict::new(),
            selection: PhantomData,
        };
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for s in Self::settings() {
            if let Ok(Some(values)) = matches.try_get_many::<String>(s.key) {
                let values = values.cloned().collect();
                self.values
                    .insert(s.key.to_owned(), config::flag_value(s, values));
            }
        }
        Ok(())
    }
}

impl<S: Selection> Args for SettingFlags<S> {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for s in Self::settings() {
            let mut help = s.text();
            help.push_str(&format!(
                " [env: {}] [default: {}]",
                s.env,
                s.default.replace('`', "")
            ));
            cmd = cmd.arg(
                Arg::new(s.key)
                    .long(s.flag.trim_start_matches("--"))
                    .help(help)
                    .global(S::GLOBAL)
                    .action(if s.many {
                        ArgAction::Append
                    } else {
                        ArgAction::Set
                    }),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Debug, Clone, Args)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// An allowed topic or pattern (`team.*`); repeat for several [default: all].
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// How long the token is valid, e.g. 90d, 12h.
    #[arg(long, default_value = "90d", value_parser = config::parse_duration)]
    ttl: Duration,
}

#[derive(Debug, Clone, Args)]
struct PublishArgs {
    /// The hub's base URL.
    #[arg(long, env = "BELFRY_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The publish key [default: the data dir's generated key].
    #[arg(long, env = "BELFRY_PUBLISH_KEY", hide_env_values = true)]
    key: Option<String>,
    /// A target: user:<id>, topic:<name> or all; repeat for several.
    #[arg(long, required = true)]
    to: Vec<String>,
    /// The title.
    #[arg(long)]
    title: String,
    /// The body.
    #[arg(long)]
    body: Option<String>,
    /// min, low, default, high, urgent (or 1 to 5).
    #[arg(long)]
    priority: Option<String>,
    /// Click URL.
    #[arg(long)]
    url: Option<String>,
    /// A tag; repeat for several.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Event name.
    #[arg(long)]
    event: Option<String>,
    /// Time to live, e.g. 1h.
    #[arg(long, value_parser = config::parse_duration)]
    ttl: Option<Duration>,
    /// Idempotency key: a repeat within 24 h publishes nothing new.
    #[arg(long)]
    idempotency_key: Option<String>,
}

impl Cli {
    /// The command line's layer: the common flags and the serve flags given.
    fn flags(&self, serve: Option<&SettingFlags<Serving>>) -> Flags {
        let mut values = self.common.values.clone();
        values.extend(serve.unwrap_or(&self.serve).values.clone());
        Flags(values)
    }

    /// The configuration from every layer, unchecked (enough for `token` and `publish`,
    /// which read only the data dir and the secret).
    fn config_unchecked(&self) -> anyhow::Result<Config> {
        Ok(Config::layers(self.config.as_deref(), self.flags(None))?
            .extract()
            .map_err(Box::new)
            .map_err(config::ConfigError::from)?)
    }
}

/// A resolved `serve` configuration: the settings with the secrets filled in.
#[derive(Debug)]
pub struct ServeSettings {
    /// The hub's configuration.
    pub config: Config,
    /// Secret files created by this start (first start).
    pub created: Vec<PathBuf>,
}

fn serve_settings(
    cli: &Cli,
    flags: Option<&SettingFlags<Serving>>,
) -> anyhow::Result<ServeSettings> {
    let mut config = Config::load(cli.config.as_deref(), cli.flags(flags))?;
    let secrets = secrets::resolve(
        &config.data_dir,
        config.jwt_secret.take(),
        std::mem::take(&mut config.publish_keys),
    )?;
    config.jwt_secret = Some(secrets.jwt_secret);
    config.publish_keys = secrets.publish_keys;
    Ok(ServeSettings {
        config,
        created: secrets.created,
    })
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Runs the command line.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        None => serve(&cli, None).await,
        Some(Command::Serve(flags)) => serve(&cli, Some(flags)).await,
        Some(Command::Token(args)) => token(&cli, args),
        Some(Command::Publish(args)) => publish(&cli, args).await,
        Some(Command::Epoch(args)) => epoch(&cli, args).await,
    }
}

/// Writes a line to stdout. A closed stdout (`belfry-server token | head -c 5`, a
/// supervisor that closed the pipe) is no failure of the command: the output had nowhere
/// to go, and the hub keeps serving.
pub fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr (a supervisor that closed the pipe) loses the log lines; the
        // default would report each lost line on stderr with eprintln!, which panics.
        .log_internal_errors(false)
        .try_init();
}

/// Connections the kernel may hold for the hub before it accepts them. tokio's default
/// (1,024) drops handshakes when thousands of clients reconnect at once after a restart;
/// the kernel caps this at net.core.somaxconn.
const ACCEPT_BACKLOG: u32 = 8_192;

/// A listening socket on `addr` (address reuse on, as tokio's own bind does).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

async fn serve(cli: &Cli, flags: Option<&SettingFlags<Serving>>) -> anyhow::Result<()> {
    init_logging();
    let settings = serve_settings(cli, flags)?;
    let addr = settings.config.listen;
    let listener = listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let scheme = if settings.config.tls().is_some() {
        "https"
    } else {
        "http"
    };
    let dir = settings.config.data_dir.display().to_string();
    if !settings.created.is_empty() {
        say(format_args!(
            "First start: generated secrets in {dir} (mode 0600)."
        ));
        say(format_args!(
            "  Publish key: {}",
            settings.config.publish_keys[0]
        ));
        say(format_args!(
            "  Mint a user token: belfry-server token --data-dir {dir} --user alice"
        ));
    }
    say(format_args!("belfry-server listening on {scheme}://{addr}"));
    crate::run(listener, settings.config, shutdown_signal()).await
}

fn token(cli: &Cli, args: &TokenArgs) -> anyhow::Result<()> {
    let config = cli.config_unchecked()?;
    let mut created = Vec::new();
    let secret = secrets::jwt_secret(&config.data_dir, config.jwt_secret, &mut created)?;
    belfry_protocol::validate_user_id(&args.user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    let topics = (!args.topics.is_empty()).then(|| args.topics.clone());
    if let Some(t) = &topics {
        belfry_protocol::TopicPatterns::new(t.clone())
            .validate()
            .map_err(|e| anyhow::anyhow!("--topic: {e}"))?;
    }
    let signer = crate::auth::TokenSigner::new(secret.into_bytes());
    say(signer.mint(&args.user, topics, args.ttl.as_secs()));
    Ok(())
}

async fn epoch(cli: &Cli, args: &EpochArgs) -> anyhow::Result<()> {
    let config = cli.config_unchecked()?;
    let url = args.database_url.clone().or(config.database_url);
    let (store, _feed) = crate::store::Store::open(&config.data_dir, url.as_deref()).await?;
    let result = if args.renew {
        let old = store.epoch();
        store
            .renew_epoch()
            .await
            .map(|new| say(format_args!("{old} -> {new}")))
    } else {
        say(store.epoch());
        Ok(())
    };
    store.close().await;
    Ok(result?)
}

async fn publish(cli: &Cli, args: &PublishArgs) -> anyhow::Result<()> {
    let args = args.clone();
    let key = match args.key {
        Some(k) => k,
        None => {
            let path = cli
                .config_unchecked()?
                .data_dir
                .join(secrets::PUBLISH_KEY_FILE);
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
                .filter(|k| !k.is_empty())
                .with_context(|| format!("no --key given and no key in {}", path.display()))?
        }
    };
    let priority = args
        .priority
        .as_deref()
        .map(|p| {
            belfry_protocol::Priority::parse(p)
                .with_context(|| format!("--priority {p:?}: use min, low, default, high or urgent"))
        })
        .transpose()?;
    let request = PublishRequest {
        to: Some(args.to),
        title: Some(args.title),
        event: args.event,
        body: args.body,
        priority,
        tags: (!args.tags.is_empty()).then_some(args.tags),
        url: args.url,
        ttl: args.ttl.map(|d| d.as_secs().max(1)),
        idempotency_key: args.idempotency_key,
        ..Default::default()
    };
    // Check locally first: the same rules as the hub, with the same messages.
    if let Err(e) = request.clone().validate() {
        bail!("{}: {}", e.code, e.message);
    }
    let url = format!("{}/api/v1/notifications", args.server.trim_end_matches('/'));
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?
        .post(&url)
        .bearer_auth(key)
        .json(&request)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status.is_success() {
        let r: PublishResponse = serde_json::from_str(&text)
            .with_context(|| format!("unexpected answer from the hub: {text}"))?;
        say(r.id);
        Ok(())
    } else {
        match serde_json::from_str::<ErrorResponse>(&text) {
            Ok(e) => bail!(
                "{} ({}): {}",
                e.error.code,
                status.as_u16(),
                e.error.message
            ),
            Err(_) => bail!("the hub answered {status}: {text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(argv: &[&str]) -> anyhow::Result<ServeSettings> {
        let cli = Cli::try_parse_from(argv)?;
        let flags = match &cli.command {
            Some(Command::Serve(flags)) => Some(flags.clone()),
            _ => None,
        };
        serve_settings(&cli, flags.as_ref())
    }

    #[test]
    fn serve_flags_come_from_the_settings_and_win_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("belfry.toml");
        std::fs::write(
            &file,
            format!(
                "data_dir = {:?}\nlisten = \"127.0.0.1:9999\"\ndefault_ttl = \"1d\"\nmax_per_target = 50\n\
                 publish_keys = [\"bfk_file_key_of_enough_length\"]\njwt_secret = \"file-secret-long-enough\"\n",
                dir.path().join("data")
            ),
        )
        .expect("write");
        let path = file.to_str().expect("utf-8");
        let s = settings(&["belfry-server", "--config", path, "--max-per-target", "7"])
            .expect("settings");
        assert_eq!(s.config.listen.port(), 9999);
        assert_eq!(s.config.max_per_target, 7);
        assert_eq!(s.config.default_ttl, Duration::from_secs(86_400));
        assert_eq!(s.config.publish_keys, vec!["bfk_file_key_of_enough_length"]);
        assert_eq!(s.config.max_subscriptions, 100);
        // The same under `serve`, with repeated flags.
        let s = settings(&[
            "belfry-server",
            "serve",
            "--config",
            path,
            "--publish-key",
            "bfk_first_key_of_enough_length",
            "--publish-key",
            "bfk_second_key_of_enough_length",
            "--ping-interval",
            "30s",
        ])
        .expect("settings");
        assert_eq!(s.config.publish_keys.len(), 2);
        assert_eq!(s.config.ping_interval, Duration::from_secs(30));
        let e = settings(&[
            "belfry-server",
            "--config",
            path,
            "--max-per-target",
            "many",
        ])
        .expect_err("refused");
        assert!(e.to_string().contains("max_per_target"), "{e}");
    }

    #[test]
    fn subcommands_parse() {
        let cli =
            Cli::try_parse_from(["belfry-server", "token", "--user", "alice", "--topic", "a"])
                .expect("parse");
        assert!(matches!(cli.command, Some(Command::Token(_))));
        // The common settings go before or after the subcommand.
        let cli = Cli::try_parse_from(["belfry-server", "token", "--data-dir", "x", "--user", "a"])
            .expect("parse");
        assert_eq!(
            cli.config_unchecked().expect("config").data_dir,
            PathBuf::from("x")
        );
        let cli = Cli::try_parse_from([
            "belfry-server",
            "publish",
            "--to",
            "user:a",
            "--title",
            "t",
            "--priority",
            "high",
        ])
        .expect("parse");
        assert!(matches!(cli.command, Some(Command::Publish(_))));
    }
}
