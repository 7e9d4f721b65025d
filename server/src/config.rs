//! The hub's runtime configuration, as [`crate::run`] takes it (secrets already resolved;
//! see `cli.rs` for flags, environment variables and the TOML file).

use std::path::PathBuf;
use std::time::Duration;

/// Everything the running hub needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database (by default) and generated secrets live.
    pub data_dir: PathBuf,
    /// The database URL; `None` means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// The Redis URL that links several hub nodes (`redis://host:6379/?protocol=resp3`);
    /// `None` on a single node.
    pub redis_url: Option<String>,
    /// The HS256 secret user tokens are signed with.
    pub jwt_secret: String,
    /// The accepted publish keys.
    pub publish_keys: Vec<String>,
    /// Origins allowed by CORS (browser publishers and web clients); empty: none.
    pub cors_origins: Vec<String>,
    /// Certificate and key (PEM) for HTTPS and WSS.
    pub tls: Option<TlsFiles>,
    /// How long notifications are kept.
    pub retention: Retention,
    /// Rate limits and size limits.
    pub limits: Limits,
    /// Socket.IO heartbeat.
    pub heartbeat: Heartbeat,
}

/// Paths of a PEM certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Retention rules.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Time to live of a notification that names none.
    pub default_ttl: Duration,
    /// Longest time to live a publisher may ask for.
    pub max_ttl: Duration,
    /// Most notifications kept per target (user, topic, `all`); older ones are pruned.
    pub max_per_target: u32,
    /// How often the pruner runs.
    pub prune_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(7 * 24 * 3600),
            max_ttl: Duration::from_secs(belfry_protocol::limits::MAX_TTL_SECS),
            max_per_target: 10_000,
            prune_interval: Duration::from_secs(60),
        }
    }
}

/// Limits against abuse and accidents.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sustained publishes per second per publish key.
    pub publish_rate: f64,
    /// Publishes a key may burst above the rate.
    pub publish_burst: u32,
    /// Sustained client events per second per socket.
    pub socket_event_rate: f64,
    /// Events a socket may burst above the rate.
    pub socket_event_burst: u32,
    /// Most topics one user may subscribe to.
    pub max_subscriptions: u32,
    /// Notifications per catch-up batch.
    pub catch_up_batch: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            publish_rate: 1000.0,
            publish_burst: 2000,
            socket_event_rate: 20.0,
            socket_event_burst: 60,
            max_subscriptions: 100,
            catch_up_batch: 200,
        }
    }
}

/// Socket.IO heartbeat settings: a client that answers no ping within
/// `interval + timeout` is dropped (this is how half-open connections are found).
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// Time between pings.
    pub interval: Duration,
    /// How long to wait for the pong.
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(25),
            timeout: Duration::from_secs(20),
        }
    }
}

impl Config {
    /// A configuration with defaults for everything but the data dir and secrets.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        jwt_secret: String,
        publish_keys: Vec<String>,
    ) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            redis_url: None,
            jwt_secret,
            publish_keys,
            cors_origins: Vec::new(),
            tls: None,
            retention: Retention::default(),
            limits: Limits::default(),
            heartbeat: Heartbeat::default(),
        }
    }
}
