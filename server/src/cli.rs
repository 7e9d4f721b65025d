//! The command line: `serve` (the default), `token` and `publish`. Every flag is also an
//! environment variable `BELFRY_*` and a key of the optional TOML file (`--config`);
//! precedence is flag or variable, then file, then default.

use crate::config::{Config, Heartbeat, Limits, Retention, TlsFiles};
use crate::secrets;
use anyhow::{Context, bail};
use belfry_protocol::{ErrorResponse, PublishRequest, PublishResponse};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub (the default when no command is given).
    Serve(ServeArgs),
    /// Print a user token signed with this hub's secret.
    Token(TokenArgs),
    /// Publish a notification over HTTP (for shell scripts and cron jobs).
    Publish(PublishArgs),
}

#[derive(Debug, Clone, Args)]
struct CommonArgs {
    /// TOML configuration file (keys named like the long flags, with underscores).
    #[arg(long, env = "BELFRY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory of the SQLite database and the generated secrets [default: ./belfry-data].
    #[arg(long, env = "BELFRY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Secret user tokens are signed with (HS256) [default: generated into the data dir].
    #[arg(long, env = "BELFRY_JWT_SECRET", global = true, hide_env_values = true)]
    jwt_secret: Option<String>,
}

#[derive(Debug, Clone, Default, Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "BELFRY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [default: SQLite file
    /// belfry.db in the data dir]. Several nodes share one PostgreSQL database.
    #[arg(long, env = "BELFRY_DATABASE_URL")]
    database_url: Option<String>,
    /// Redis URL linking several nodes, e.g. redis://127.0.0.1:6379/?protocol=resp3
    /// (Redis 7 or later) [default: none, a single node].
    #[arg(long, env = "BELFRY_REDIS_URL")]
    redis_url: Option<String>,
    /// A publish key; repeat for several [default: generated into the data dir].
    #[arg(
        long = "publish-key",
        env = "BELFRY_PUBLISH_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    publish_keys: Vec<String>,
    /// An origin allowed by CORS (`*` for any); repeat for several.
    #[arg(
        long = "cors-origin",
        env = "BELFRY_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// PEM certificate chain: serve HTTPS and WSS.
    #[arg(long, env = "BELFRY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "BELFRY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Time to live of notifications that name none, e.g. 7d, 12h [default: 7d].
    #[arg(long, env = "BELFRY_DEFAULT_TTL", value_parser = parse_duration)]
    default_ttl: Option<Duration>,
    /// Longest time to live a publisher may ask for [default: 366d].
    #[arg(long, env = "BELFRY_MAX_TTL", value_parser = parse_duration)]
    max_ttl: Option<Duration>,
    /// Most notifications kept per user, topic or `all` [default: 10000].
    #[arg(long, env = "BELFRY_MAX_PER_TARGET")]
    max_per_target: Option<u32>,
    /// How often expired notifications are deleted [default: 60s].
    #[arg(long, env = "BELFRY_PRUNE_INTERVAL", value_parser = parse_duration)]
    prune_interval: Option<Duration>,
    /// Sustained publishes per second per publish key [default: 1000].
    #[arg(long, env = "BELFRY_PUBLISH_RATE")]
    publish_rate: Option<f64>,
    /// Publishes a key may burst [default: 2000].
    #[arg(long, env = "BELFRY_PUBLISH_BURST")]
    publish_burst: Option<u32>,
    /// Sustained client events per second per socket [default: 20].
    #[arg(long, env = "BELFRY_SOCKET_EVENT_RATE")]
    socket_event_rate: Option<f64>,
    /// Client events a socket may burst [default: 60].
    #[arg(long, env = "BELFRY_SOCKET_EVENT_BURST")]
    socket_event_burst: Option<u32>,
    /// Most topics one user may subscribe to [default: 100].
    #[arg(long, env = "BELFRY_MAX_SUBSCRIPTIONS")]
    max_subscriptions: Option<u32>,
    /// Time between heartbeat pings [default: 25s].
    #[arg(long, env = "BELFRY_PING_INTERVAL", value_parser = parse_duration)]
    ping_interval: Option<Duration>,
    /// How long to wait for a pong before dropping a client [default: 20s].
    #[arg(long, env = "BELFRY_PING_TIMEOUT", value_parser = parse_duration)]
    ping_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Args)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// An allowed topic or prefix pattern (`team.*`); repeat for several [default: all].
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// How long the token is valid, e.g. 90d, 12h.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
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
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// Idempotency key: a repeat within 24 h publishes nothing new.
    #[arg(long)]
    idempotency_key: Option<String>,
}

/// The TOML file: every key optional, named like the long flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    redis_url: Option<String>,
    jwt_secret: Option<String>,
    publish_keys: Option<Vec<String>>,
    cors_origins: Option<Vec<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    default_ttl: Option<String>,
    max_ttl: Option<String>,
    max_per_target: Option<u32>,
    prune_interval: Option<String>,
    publish_rate: Option<f64>,
    publish_burst: Option<u32>,
    socket_event_rate: Option<f64>,
    socket_event_burst: Option<u32>,
    max_subscriptions: Option<u32>,
    ping_interval: Option<String>,
    ping_timeout: Option<String>,
}

/// Parses `90d`, `12h`, `30m`, `45s`, `2w`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90d, 12h, 30m or 45s"))?;
    let secs = match unit {
        "" | "s" => 1,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use s, m, h, d or w)"
            ));
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

fn file_duration(v: &Option<String>, key: &str) -> anyhow::Result<Option<Duration>> {
    v.as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{key}: {e}"))
}

fn load_file(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))
}

/// A fully resolved `serve` configuration.
#[derive(Debug)]
pub struct ServeSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The hub's configuration.
    pub config: Config,
    /// Secret files created by this start (first start).
    pub created: Vec<PathBuf>,
}

fn data_dir(common: &CommonArgs, file: &FileConfig) -> PathBuf {
    common
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("belfry-data"))
}

fn serve_settings(common: &CommonArgs, args: ServeArgs) -> anyhow::Result<ServeSettings> {
    let file = load_file(common.config.as_deref())?;
    let dir = data_dir(common, &file);
    let keys = if args.publish_keys.is_empty() {
        file.publish_keys.clone().unwrap_or_default()
    } else {
        args.publish_keys
    };
    let jwt_secret = common.jwt_secret.clone().or(file.jwt_secret.clone());
    if args.redis_url.is_some() || file.redis_url.is_some() {
        // Secrets generated into each node's data dir would differ from node to node: a
        // token or key from one would be refused by the others.
        if jwt_secret.is_none() || keys.is_empty() {
            bail!(
                "several nodes must share their secrets: give every node the same \
                 --jwt-secret and --publish-key (or BELFRY_JWT_SECRET and BELFRY_PUBLISH_KEYS)"
            );
        }
    }
    let secrets = secrets::resolve(&dir, jwt_secret, keys)?;
    let rd = Retention::default();
    let ld = Limits::default();
    let hd = Heartbeat::default();
    let pick = |flag: Option<Duration>, key: &str, v: &Option<String>, d: Duration| {
        Ok::<_, anyhow::Error>(flag.or(file_duration(v, key)?).unwrap_or(d))
    };
    let tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let database_url = args.database_url.or(file.database_url);
    let redis_url = args.redis_url.or(file.redis_url);
    if let Some(url) = &redis_url {
        crate::cluster::resp3_url(url).map_err(anyhow::Error::msg)?;
    }
    if redis_url.is_some()
        && !database_url
            .as_deref()
            .is_some_and(crate::store::is_postgres)
    {
        bail!(
            "--redis-url links several nodes, and they must share one store: \
             give --database-url postgres://..."
        );
    }
    let config = Config {
        data_dir: dir,
        database_url,
        redis_url,
        jwt_secret: secrets.jwt_secret,
        publish_keys: secrets.publish_keys,
        cors_origins: if args.cors_origins.is_empty() {
            file.cors_origins.unwrap_or_default()
        } else {
            args.cors_origins
        },
        tls,
        retention: Retention {
            default_ttl: pick(
                args.default_ttl,
                "default_ttl",
                &file.default_ttl,
                rd.default_ttl,
            )?,
            max_ttl: pick(args.max_ttl, "max_ttl", &file.max_ttl, rd.max_ttl)?,
            max_per_target: args
                .max_per_target
                .or(file.max_per_target)
                .unwrap_or(rd.max_per_target)
                .max(1),
            prune_interval: pick(
                args.prune_interval,
                "prune_interval",
                &file.prune_interval,
                rd.prune_interval,
            )?
            .max(Duration::from_millis(100)),
        },
        limits: Limits {
            publish_rate: args
                .publish_rate
                .or(file.publish_rate)
                .unwrap_or(ld.publish_rate),
            publish_burst: args
                .publish_burst
                .or(file.publish_burst)
                .unwrap_or(ld.publish_burst),
            socket_event_rate: args
                .socket_event_rate
                .or(file.socket_event_rate)
                .unwrap_or(ld.socket_event_rate),
            socket_event_burst: args
                .socket_event_burst
                .or(file.socket_event_burst)
                .unwrap_or(ld.socket_event_burst),
            max_subscriptions: args
                .max_subscriptions
                .or(file.max_subscriptions)
                .unwrap_or(ld.max_subscriptions),
            catch_up_batch: ld.catch_up_batch,
        },
        heartbeat: Heartbeat {
            interval: pick(
                args.ping_interval,
                "ping_interval",
                &file.ping_interval,
                hd.interval,
            )?,
            timeout: pick(
                args.ping_timeout,
                "ping_timeout",
                &file.ping_timeout,
                hd.timeout,
            )?,
        },
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    Ok(ServeSettings {
        listen,
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

/// Runs the command line; returns the process's exit status.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => serve(&cli.common, cli.serve).await,
        Some(Command::Serve(args)) => serve(&cli.common, args).await,
        Some(Command::Token(args)) => token(&cli.common, args),
        Some(Command::Publish(args)) => publish(&cli.common, args).await,
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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

async fn serve(common: &CommonArgs, args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let settings = serve_settings(common, args)?;
    let listener =
        listen(settings.listen).with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if settings.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let dir = settings.config.data_dir.display().to_string();
    if !settings.created.is_empty() {
        println!("First start: generated secrets in {dir} (mode 0600).");
        println!("  Publish key: {}", settings.config.publish_keys[0]);
        println!("  Mint a user token: belfry-server token --data-dir {dir} --user alice");
    }
    println!("belfry-server listening on {scheme}://{addr}");
    crate::run(listener, settings.config, shutdown_signal()).await
}

fn token(common: &CommonArgs, args: TokenArgs) -> anyhow::Result<()> {
    let file = load_file(common.config.as_deref())?;
    let dir = data_dir(common, &file);
    let mut created = Vec::new();
    let secret = secrets::jwt_secret(
        &dir,
        common.jwt_secret.clone().or(file.jwt_secret),
        &mut created,
    )?;
    belfry_protocol::validate_user_id(&args.user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    let topics = (!args.topics.is_empty()).then_some(args.topics);
    if let Some(t) = &topics {
        belfry_protocol::TopicPatterns::new(t.clone())
            .validate()
            .map_err(|e| anyhow::anyhow!("--topic: {e}"))?;
    }
    let signer = crate::auth::TokenSigner::new(secret.into_bytes());
    println!("{}", signer.mint(&args.user, topics, args.ttl.as_secs()));
    Ok(())
}

async fn publish(common: &CommonArgs, args: PublishArgs) -> anyhow::Result<()> {
    let key = match args.key {
        Some(k) => k,
        None => {
            let file = load_file(common.config.as_deref())?;
            let path = data_dir(common, &file).join(secrets::PUBLISH_KEY_FILE);
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
        println!("{}", r.id);
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

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("belfry.toml");
        std::fs::write(
            &file,
            format!(
                "data_dir = {:?}\nlisten = \"127.0.0.1:9999\"\ndefault_ttl = \"1d\"\nmax_per_target = 50\npublish_keys = [\"file-key\"]\njwt_secret = \"file-secret-long-enough\"\n",
                dir.path().join("data")
            ),
        )
        .expect("write");
        let cli = Cli::try_parse_from([
            "belfry-server",
            "--config",
            file.to_str().expect("utf-8"),
            "--max-per-target",
            "7",
        ])
        .expect("parse");
        let s = serve_settings(&cli.common, cli.serve).expect("settings");
        assert_eq!(s.listen.port(), 9999);
        assert_eq!(s.config.retention.max_per_target, 7);
        assert_eq!(s.config.retention.default_ttl, Duration::from_secs(86_400));
        assert_eq!(s.config.publish_keys, vec!["file-key"]);
        assert_eq!(s.config.limits.max_subscriptions, 100);

        std::fs::write(&file, "no_such_key = 1\n").expect("write");
        let cli = Cli::try_parse_from(["belfry-server", "--config", file.to_str().expect("utf-8")])
            .expect("parse");
        assert!(serve_settings(&cli.common, cli.serve).is_err());
    }

    #[test]
    fn several_nodes_need_a_shared_postgres_store_and_shared_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().to_str().expect("utf-8");
        let settings = |extra: &[&str]| {
            let mut argv = vec!["belfry-server", "--data-dir", data];
            argv.extend_from_slice(extra);
            argv.extend_from_slice(&["--redis-url", "redis://127.0.0.1:6379/?protocol=resp3"]);
            let cli = Cli::try_parse_from(argv).expect("parse");
            serve_settings(&cli.common, cli.serve).map_err(|e| e.to_string())
        };
        let secrets = [
            "--jwt-secret",
            "shared-secret-long-enough",
            "--publish-key",
            "k1",
        ];
        let sqlite = settings(&secrets).expect_err("refused");
        assert!(sqlite.contains("postgres://"), "{sqlite}");
        let pg = ["--database-url", "postgres://belfry@db/belfry"];
        let generated = settings(&pg).expect_err("refused");
        assert!(generated.contains("same --jwt-secret"), "{generated}");
        let ok = settings(&[&pg[..], &secrets[..]].concat()).expect("accepted");
        assert_eq!(
            ok.config.redis_url.as_deref(),
            Some("redis://127.0.0.1:6379/?protocol=resp3")
        );
        assert_eq!(ok.config.publish_keys, vec!["k1"]);
    }

    #[test]
    fn subcommands_parse() {
        let cli =
            Cli::try_parse_from(["belfry-server", "token", "--user", "alice", "--topic", "a"])
                .expect("parse");
        assert!(matches!(cli.command, Some(Command::Token(_))));
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
