//! The hub's configuration, declared once.
//!
//! Every setting is one entry of the [`settings!`] table below: its key (the TOML key and
//! the field of [`Config`]), its flag, its environment variable, its default and what it
//! means. From that one table come the [`Config`] struct, its defaults, the `serve` flags
//! (`cli.rs`), `--help`, the README's configuration table (a test holds the two together)
//! and the loader, which layers defaults < TOML file < environment < flags with figment
//! ([`Config::load`]). Durations are read by humantime (`90d`, `12h`, `250ms`) or as plain
//! seconds.

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// One setting as the documentation and the command line see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The TOML key and the field of [`Config`].
    pub key: &'static str,
    /// The command-line flag, with its dashes.
    pub flag: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The default, as the documentation shows it.
    pub default: &'static str,
    /// What the setting means (the first line is its summary).
    pub doc: &'static str,
    /// Whether the setting takes several values (a repeated flag, a comma-separated
    /// variable, a TOML array).
    pub many: bool,
}

impl Setting {
    /// The first line of the documentation.
    pub fn summary(&self) -> &'static str {
        self.doc.lines().next().unwrap_or_default().trim()
    }

    /// The whole documentation on one line.
    pub fn text(&self) -> String {
        self.doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The setting's row in the README's configuration table.
    pub fn readme_row(&self) -> String {
        let (flag, env) = if self.many {
            (
                format!("`{}` (repeatable)", self.flag),
                format!("`{}` (comma-separated)", self.env),
            )
        } else {
            (format!("`{}`", self.flag), format!("`{}`", self.env))
        };
        format!("| {flag} | {env} | {} | {} |", self.default, self.text())
    }
}

/// Declares every setting once: the [`Config`] struct with its documentation, its
/// defaults, its reader and the [`SETTINGS`] table.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty = $default:expr;
            flag $flag:literal, env $env:literal, shown $shown:literal;
    )*) => {
        /// Everything the hub can be configured with (see the module documentation for
        /// where each value may come from).
        #[derive(Clone, PartialEq)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
        }

        /// Secrets never show: the JWT secret and the publish keys are left out, and so are
        /// the passwords of URLs.
        impl std::fmt::Debug for Config {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut d = f.debug_struct("Config");
                $( d.field(stringify!($name), &Shown(stringify!($name), &self.$name)); )*
                d.finish()
            }
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $( $name: $default, )* }
            }
        }

        /// Every setting, in the order `--help` and the README list them.
        pub const SETTINGS: &[Setting] = &[
            $( Setting {
                key: stringify!($name),
                flag: $flag,
                env: $env,
                default: $shown,
                doc: concat!($($doc, "\n"),+),
                many: <$ty as Read>::MANY,
            }, )*
        ];

        impl<'de> serde::Deserialize<'de> for Config {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> Visitor<'de> for Fields {
                    type Value = Config;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a table of settings")
                    }
                    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Config, M::Error> {
                        // Whatever no layer sets keeps its default.
                        let mut config = Config::default();
                        while let Some(key) = map.next_key::<String>()? {
                            match key.as_str() {
                                $( stringify!($name) => {
                                    config.$name = map.next_value::<Lenient<$ty>>()?.0;
                                } )*
                                other => {
                                    return Err(de::Error::custom(format!(
                                        "unknown setting `{other}` (see belfry-server serve --help)"
                                    )));
                                }
                            }
                        }
                        Ok(config)
                    }
                }
                d.deserialize_map(Fields)
            }
        }
    };
}

settings! {
    /// Address to listen on.
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080));
        flag "--listen", env "BELFRY_LISTEN", shown "`127.0.0.1:8080`";
    /// Directory of the SQLite database and the generated secrets.
    data_dir: PathBuf = PathBuf::from("belfry-data");
        flag "--data-dir", env "BELFRY_DATA_DIR", shown "`./belfry-data`";
    /// Database URL: sqlite://PATH, or postgres://USER@HOST/DB shared by several nodes.
    database_url: Option<String> = None;
        flag "--database-url", env "BELFRY_DATABASE_URL", shown "SQLite `belfry.db` in the data dir";
    /// Redis URL linking several nodes, e.g. redis://HOST:6379/?protocol=resp3 (Redis 7 or
    /// later). Needs PostgreSQL and the same secrets on every node.
    redis_url: Option<String> = None;
        flag "--redis-url", env "BELFRY_REDIS_URL", shown "none: a single node";
    /// Prefix of the Redis channels the nodes of one deployment share; give two
    /// deployments on one Redis different prefixes.
    redis_prefix: String = "belfry".to_owned();
        flag "--redis-prefix", env "BELFRY_REDIS_PREFIX", shown "`belfry`";
    /// Secret user tokens are signed with (HS256, at least 16 bytes).
    jwt_secret: Option<String> = None;
        flag "--jwt-secret", env "BELFRY_JWT_SECRET", shown "generated into the data dir";
    /// A publish key (at least 16 characters); repeat the flag, or separate them with
    /// commas, for several.
    publish_keys: Vec<String> = Vec::new();
        flag "--publish-key", env "BELFRY_PUBLISH_KEYS", shown "generated into the data dir";
    /// An origin allowed by CORS (`*` for any); repeat for several.
    cors_origins: Vec<String> = Vec::new();
        flag "--cors-origin", env "BELFRY_CORS_ORIGINS", shown "none";
    /// PEM certificate chain: serve HTTPS and WSS.
    tls_cert: Option<PathBuf> = None;
        flag "--tls-cert", env "BELFRY_TLS_CERT", shown "plain HTTP";
    /// PEM private key of the certificate.
    tls_key: Option<PathBuf> = None;
        flag "--tls-key", env "BELFRY_TLS_KEY", shown "plain HTTP";
    /// Time to live of notifications that name none, e.g. 7d, 12h.
    default_ttl: Duration = Duration::from_secs(7 * 24 * 3600);
        flag "--default-ttl", env "BELFRY_DEFAULT_TTL", shown "`7d`";
    /// Longest time to live a publisher may ask for.
    max_ttl: Duration = Duration::from_secs(belfry_protocol::limits::MAX_TTL_SECS);
        flag "--max-ttl", env "BELFRY_MAX_TTL", shown "`366d`";
    /// Most notifications kept per user, topic or `all`; older ones are pruned.
    max_per_target: u32 = 10_000;
        flag "--max-per-target", env "BELFRY_MAX_PER_TARGET", shown "`10000`";
    /// How often expired notifications are deleted.
    prune_interval: Duration = Duration::from_secs(60);
        flag "--prune-interval", env "BELFRY_PRUNE_INTERVAL", shown "`60s`";
    /// Sustained publishes per second per publish key.
    publish_rate: f64 = 1000.0;
        flag "--publish-rate", env "BELFRY_PUBLISH_RATE", shown "`1000`/s";
    /// Publishes a key may burst above the rate.
    publish_burst: u32 = 2000;
        flag "--publish-burst", env "BELFRY_PUBLISH_BURST", shown "`2000`";
    /// Sustained client events per second per socket.
    socket_event_rate: f64 = 20.0;
        flag "--socket-event-rate", env "BELFRY_SOCKET_EVENT_RATE", shown "`20`/s";
    /// Client events a socket may burst above the rate.
    socket_event_burst: u32 = 60;
        flag "--socket-event-burst", env "BELFRY_SOCKET_EVENT_BURST", shown "`60`";
    /// Sustained writes per second per user (mark read, subscribe, unsubscribe), over
    /// HTTP and Socket.IO together.
    user_write_rate: f64 = 10.0;
        flag "--user-write-rate", env "BELFRY_USER_WRITE_RATE", shown "`10`/s";
    /// Writes a user may burst above the rate.
    user_write_burst: u32 = 30;
        flag "--user-write-burst", env "BELFRY_USER_WRITE_BURST", shown "`30`";
    /// Sustained Socket.IO connects per second per user.
    connect_rate: f64 = 5.0;
        flag "--connect-rate", env "BELFRY_CONNECT_RATE", shown "`5`/s";
    /// Connects a user may burst above the rate (a restart brings every device back at
    /// once).
    connect_burst: u32 = 50;
        flag "--connect-burst", env "BELFRY_CONNECT_BURST", shown "`50`";
    /// Most devices (Socket.IO connections) one user may have connected to one node.
    max_devices: u32 = 50;
        flag "--max-devices", env "BELFRY_MAX_DEVICES", shown "`50`";
    /// Sustained failed authentications per minute per client address (an IPv6 one by
    /// its /64) before it is slowed down.
    auth_failure_rate: f64 = 30.0;
        flag "--auth-failure-rate", env "BELFRY_AUTH_FAILURE_RATE", shown "`30`/min";
    /// Failed authentications a client address may burst above the rate.
    auth_failure_burst: u32 = 20;
        flag "--auth-failure-burst", env "BELFRY_AUTH_FAILURE_BURST", shown "`20`";
    /// An address or network (CIDR) of a proxy in front of the hub, whose
    /// X-Forwarded-For the hub believes when it limits per client address; repeat for
    /// several.
    trusted_proxies: Vec<String> = vec!["127.0.0.1/8".to_owned(), "::1/128".to_owned()];
        flag "--trusted-proxy", env "BELFRY_TRUSTED_PROXIES", shown "`127.0.0.1/8`, `::1/128`";
    /// Most topics one user may subscribe to.
    max_subscriptions: u32 = 100;
        flag "--max-subscriptions", env "BELFRY_MAX_SUBSCRIPTIONS", shown "`100`";
    /// Notifications per catch-up batch (1 to 500).
    catch_up_batch: u32 = 200;
        flag "--catch-up-batch", env "BELFRY_CATCH_UP_BATCH", shown "`200`";
    /// Time between heartbeat pings.
    ping_interval: Duration = Duration::from_secs(25);
        flag "--ping-interval", env "BELFRY_PING_INTERVAL", shown "`25s`";
    /// How long to wait for a pong before dropping a client.
    ping_timeout: Duration = Duration::from_secs(20);
        flag "--ping-timeout", env "BELFRY_PING_TIMEOUT", shown "`20s`";
    /// How long a connection may wait for a request's headers: a client that connects and
    /// says nothing, sends its headers slowly, or leaves a keep-alive connection idle, is
    /// closed after it.
    header_read_timeout: Duration = Duration::from_secs(30);
        flag "--header-read-timeout", env "BELFRY_HEADER_READ_TIMEOUT", shown "`30s`";
    /// How long a connection may move no byte either way before it is closed (longer
    /// than the heartbeat; WebSocket connections are watched by the heartbeat instead).
    idle_timeout: Duration = Duration::from_secs(60);
        flag "--idle-timeout", env "BELFRY_IDLE_TIMEOUT", shown "`60s`";
}

/// A setting's value as logs and debug output show it.
struct Shown<'a, T>(&'static str, &'a T);

impl<T: std::fmt::Debug> std::fmt::Debug for Shown<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            "jwt_secret" | "publish_keys" => f.write_str("<redacted>"),
            key if key.ends_with("_url") => f.write_str(&redact_url(&format!("{:?}", self.1))),
            _ => self.1.fmt(f),
        }
    }
}

/// A URL with its password (if any) replaced by `***`, for logs and error messages:
/// `redis://:hunter2@r:6379/` becomes `redis://:***@r:6379/`.
pub fn redact_url(url: &str) -> String {
    let url = &redact_query_password(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first `/`, `?` or `#`; the userinfo at its last `@`.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if path.contains('@') {
        // An `@` after the authority: most likely a password holding an unencoded `/`,
        // `?` or `#` (a malformed URL, the one most likely printed in an error). All of
        // it up to the last `@` goes (in a well-formed URL with an `@` in its query, more
        // than needed: never less).
        let after = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
        return format!("{scheme}://***@{after}");
    }
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

/// The Redis URL with RESP3 asked for, which the link needs (Redis 7 or later): added
/// when the URL names no protocol, lower-cased when it says `RESP3` (redis-rs knows only
/// `resp3` and `3`). A URL that asks for RESP2 is refused.
pub fn resp3_url(url: &str) -> Result<String, String> {
    // A fragment (`#insecure`: TLS without checking the certificate) stays last.
    let (url, fragment) = match url.split_once('#') {
        Some((url, fragment)) => (url, format!("#{fragment}")),
        None => (url, String::new()),
    };
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| format!("cannot read the query of the Redis URL: {e}"))?;
    match pairs.iter_mut().find(|(k, _)| k == "protocol") {
        Some((_, v)) if v == "3" || v.eq_ignore_ascii_case("resp3") => *v = "resp3".into(),
        Some((_, v)) => {
            return Err(format!(
                "the Redis URL asks for protocol {v}: Belfry needs RESP3 (protocol=resp3, Redis 7 or later)"
            ));
        }
        None => pairs.push(("protocol".into(), "resp3".into())),
    }
    let query = serde_urlencoded::to_string(&pairs).map_err(|e| e.to_string())?;
    Ok(format!("{base}?{query}{fragment}"))
}

/// `password=...` in a URL's query (libpq's form) as `password=***`.
fn redact_query_password(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or holds a bad value (the message names the key and
    /// where it came from).
    #[error("{0}")]
    Layer(#[from] Box<figment::Error>),
    /// The configuration file named does not exist or cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The values do not go together.
    #[error("{0}")]
    Invalid(String),
}

/// The command line's layer: the values of the flags that were given, as strings (the
/// same readers as the environment's turn them into settings).
#[derive(Debug, Clone, Default)]
pub struct Flags(pub Dict);

impl Provider for Flags {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flags")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

impl Config {
    /// A configuration with defaults for everything but the data dir and the secrets (for
    /// tests and embedders).
    pub fn new(
        data_dir: impl Into<PathBuf>,
        jwt_secret: String,
        publish_keys: Vec<String>,
    ) -> Self {
        Self {
            data_dir: data_dir.into(),
            jwt_secret: Some(jwt_secret),
            publish_keys,
            ..Self::default()
        }
    }

    /// The layers in order: defaults < the TOML `file` < `BELFRY_*` variables < `flags`.
    pub fn layers(file: Option<&Path>, flags: Flags) -> Result<Figment, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            // Read here so a missing file is an error (figment treats it as empty).
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                path: path.to_owned(),
                source,
            })?;
            let toml = figment::providers::Data::<figment::providers::Toml>::string(&text);
            figment = figment.merge(NamedFile(toml, path.to_owned()));
        }
        Ok(figment.merge(Environment).merge(flags))
    }

    /// Loads and checks the configuration from its layers.
    pub fn load(file: Option<&Path>, flags: Flags) -> Result<Config, ConfigError> {
        let config: Config = Self::layers(file, flags)?.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that must go together, and evens out ones that are merely odd.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::Invalid(why));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("--tls-cert and --tls-key go together".into());
        }
        if self.idle_timeout <= self.ping_interval + self.ping_timeout {
            return bad(format!(
                "--idle-timeout ({}) must be longer than --ping-interval plus --ping-timeout ({}): \
                 a polling client would be cut off between two pings",
                humantime::format_duration(self.idle_timeout),
                humantime::format_duration(self.ping_interval + self.ping_timeout)
            ));
        }
        if self.header_read_timeout.is_zero() {
            return bad("--header-read-timeout must be longer than zero".into());
        }
        if !(1..=crate::store::MAX_PAGE).contains(&self.catch_up_batch) {
            return bad(format!(
                "--catch-up-batch must be 1 to {}",
                crate::store::MAX_PAGE
            ));
        }
        for (name, rate) in [
            ("publish-rate", self.publish_rate),
            ("socket-event-rate", self.socket_event_rate),
            ("user-write-rate", self.user_write_rate),
            ("connect-rate", self.connect_rate),
            ("auth-failure-rate", self.auth_failure_rate),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                return bad(format!("--{name} must be a positive number"));
            }
        }
        self.proxies()?;
        if self.redis_prefix.is_empty()
            || !self
                .redis_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return bad(format!(
                "--redis-prefix {:?}: use letters, digits and - _ . : only",
                self.redis_prefix
            ));
        }
        if self.max_devices == 0 {
            return bad("--max-devices must be at least 1".into());
        }
        if let Some(url) = &self.redis_url {
            resp3_url(url).map_err(ConfigError::Invalid)?;
            if !self
                .database_url
                .as_deref()
                .is_some_and(crate::store::is_postgres)
            {
                return bad(
                    "--redis-url links several nodes, and they must share one store: \
                     give --database-url postgres://..."
                        .into(),
                );
            }
            // Secrets generated into each node's data dir would differ from node to node:
            // a token or key from one would be refused by the others.
            if self.jwt_secret.is_none() || self.publish_keys.is_empty() {
                return bad(
                    "several nodes must share their secrets: give every node the same \
                     --jwt-secret and --publish-key (or BELFRY_JWT_SECRET and BELFRY_PUBLISH_KEYS)"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The networks of the trusted proxies.
    pub fn proxies(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        ConfigError::Invalid(format!(
                            "--trusted-proxy {p:?} is not an address or a network like 10.0.0.0/8"
                        ))
                    })
            })
            .collect()
    }

    /// How often the pruner runs (never more often than every 100 ms).
    pub fn prune_every(&self) -> Duration {
        self.prune_interval.max(Duration::from_millis(100))
    }

    /// The most notifications kept per target (at least one).
    pub fn keep_per_target(&self) -> u32 {
        self.max_per_target.max(1)
    }

    /// The certificate and key, when the hub serves TLS.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }
}

/// The environment's layer: the `BELFRY_*` variable of each setting, as text (figment's
/// own `Env` would read a secret of digits as a number).
struct Environment;

impl Provider for Environment {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variables")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for s in SETTINGS {
            if let Some(value) = std::env::var_os(s.env) {
                let value = value
                    .into_string()
                    .map_err(|_| figment::Error::from(format!("{} is not valid UTF-8", s.env)))?;
                dict.insert(s.key.to_owned(), Value::from(value));
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// A TOML file's layer, named by its path in error messages.
struct NamedFile(figment::providers::Data<figment::providers::Toml>, PathBuf);

impl Provider for NamedFile {
    fn metadata(&self) -> Metadata {
        Metadata::from(format!("TOML file {}", self.1.display()), self.1.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.0.data()
    }
}

/// Reads a duration: humantime (`90d`, `12h`, `1h 30m`, `250ms`), or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse()
            .map(Duration::from_secs)
            .map_err(|e| format!("{text:?}: {e}"))?
    } else {
        humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration like 90d, 12h, 30m or 45s: {e}"))?
    };
    if duration > MAX_DURATION {
        return Err(format!(
            "{text:?} is longer than any setting may be (ten years)"
        ));
    }
    Ok(duration)
}

/// The longest duration any setting takes: far above any sensible one, and far below
/// what overflows when the hub adds two of them or one to the clock.
/// Ten of humantime's years (365.25 days each), so that `10y` itself is taken.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 31_557_600);

/// How a setting's type is read from any layer: a TOML value, or the text of an
/// environment variable or a flag.
trait Read: Sized {
    /// Whether the setting takes several values.
    const MANY: bool = false;
    /// The setting from a scalar's text.
    fn from_text(text: &str) -> Result<Self, String>;
    /// The setting from a list (only for settings that take several values).
    fn from_list(_items: Vec<String>) -> Result<Self, String> {
        Err("expected one value, not a list".into())
    }
    /// The setting when a layer says nothing (`""`), if it may be empty.
    fn empty() -> Option<Self> {
        None
    }
}

macro_rules! read_by_from_str {
    ($($ty:ty),*) => {$(
        impl Read for $ty {
            fn from_text(text: &str) -> Result<Self, String> {
                <$ty>::from_str(text.trim()).map_err(|e| format!("{text:?}: {e}"))
            }
        }
    )*};
}
read_by_from_str!(u32, f64, SocketAddr, PathBuf);

impl Read for String {
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

impl Read for Duration {
    fn from_text(text: &str) -> Result<Self, String> {
        parse_duration(text)
    }
}

impl<T: Read> Read for Option<T> {
    fn from_text(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        T::from_text(text).map(Some)
    }
    fn empty() -> Option<Self> {
        Some(None)
    }
}

impl Read for Vec<String> {
    const MANY: bool = true;
    /// A comma-separated list (as environment variables carry them).
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect())
    }
    /// A list (a TOML array, or a repeated flag's values, split already): each item as
    /// it is.
    fn from_list(items: Vec<String>) -> Result<Self, String> {
        Ok(items
            .into_iter()
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect())
    }
    fn empty() -> Option<Self> {
        Some(Vec::new())
    }
}

/// A value of type `T` read with [`Read`] from whatever shape the layer gave it.
struct Lenient<T>(T);

impl<'de, T: Read> serde::Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any<T>(std::marker::PhantomData<T>);
        impl<'de, T: Read> Visitor<'de> for Any<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(if T::MANY {
                    "a list, or values separated by commas"
                } else {
                    "a value"
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
                T::from_text(v).map_err(E::custom)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_char<E: de::Error>(self, v: char) -> Result<T, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_unit<E: de::Error>(self) -> Result<T, E> {
                T::empty().ok_or_else(|| E::custom("a value is needed"))
            }
            fn visit_none<E: de::Error>(self) -> Result<T, E> {
                self.visit_unit()
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<S: de::SeqAccess<'de>>(self, mut seq: S) -> Result<T, S::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Lenient<String>>()? {
                    items.push(item.0);
                }
                T::from_list(items).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(Any(std::marker::PhantomData))
            .map(Lenient)
    }
}

/// Puts a flag's values into the command line's layer: every setting read from its text,
/// as the environment's are.
pub fn flag_value(setting: &Setting, values: Vec<String>) -> Value {
    if setting.many {
        // A repeated flag may itself hold commas, as the environment's value does.
        let split = values
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        Value::from(split)
    } else {
        Value::from(values.into_iter().next_back().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(pairs: &[(&str, &str)]) -> Flags {
        let mut dict = Dict::new();
        for (key, value) in pairs {
            let setting = SETTINGS.iter().find(|s| s.key == *key).expect("a setting");
            dict.insert(
                (*key).to_owned(),
                flag_value(setting, vec![(*value).to_owned()]),
            );
        }
        Flags(dict)
    }

    #[test]
    fn list_items_keep_their_commas_but_text_and_flags_split() {
        let key = "a-key,with-a-comma".to_owned();
        assert_eq!(Vec::<String>::from_list(vec![key.clone()]), Ok(vec![key]));
        assert_eq!(
            Vec::<String>::from_text("k1, k2"),
            Ok(vec!["k1".to_owned(), "k2".to_owned()])
        );
        let keys = SETTINGS
            .iter()
            .find(|s| s.key == "publish_keys")
            .expect("a setting");
        assert_eq!(
            flag_value(keys, vec!["k1,k2".into(), "k3".into()]),
            Value::from(vec!["k1", "k2", "k3"])
        );
    }

    #[test]
    fn durations_are_humantime_or_plain_seconds() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5q").is_err());
        // Absurd ones are refused, not left to overflow later.
        assert!(parse_duration("18446744073709551615").is_err());
        assert!(parse_duration("11y").is_err());
        assert_eq!(parse_duration("10y"), Ok(MAX_DURATION));
        assert!(parse_duration("3652d").is_ok());
        assert!(parse_duration("3653d").is_err());
    }

    /// The layers, each over the one below: defaults < file < environment < flags. Every
    /// environment variable of the table is read (figment::Jail keeps them to this test).
    #[test]
    // figment's Jail takes a closure returning its own (large) error type.
    #[allow(clippy::result_large_err)]
    fn flags_beat_environment_beat_file_beat_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "belfry.toml",
                "listen = \"127.0.0.1:9999\"\ndefault_ttl = \"1d\"\nmax_per_target = 50\n\
                 publish_keys = [\"file-key-of-enough-length\"]\nping_interval = 30\n\
                 publish_rate = 5\nsocket_event_burst = 9\n",
            )?;
            jail.set_env("BELFRY_MAX_PER_TARGET", "60");
            jail.set_env("BELFRY_PUBLISH_RATE", "2.5");
            jail.set_env("BELFRY_SOCKET_EVENT_BURST", "10");
            jail.set_env(
                "BELFRY_CORS_ORIGINS",
                "https://a.example, https://b.example",
            );
            jail.set_env("BELFRY_JWT_SECRET", "1234567890123456789");
            let file = Path::new("belfry.toml");
            let c = Config::load(Some(file), flags(&[("max_per_target", "7")])).expect("loads");
            assert_eq!(c.listen.port(), 9999);
            assert_eq!(c.max_per_target, 7);
            assert_eq!(c.default_ttl, Duration::from_secs(86_400));
            assert_eq!(c.ping_interval, Duration::from_secs(30));
            assert_eq!(c.publish_rate, 2.5);
            assert_eq!(c.socket_event_burst, 10);
            assert_eq!(c.publish_keys, vec!["file-key-of-enough-length"]);
            assert_eq!(
                c.cors_origins,
                vec!["https://a.example", "https://b.example"]
            );
            // A secret of digits stays text, whatever figment made of it.
            assert_eq!(c.jwt_secret.as_deref(), Some("1234567890123456789"));
            assert_eq!(c.max_subscriptions, 100);

            jail.create_file("bad.toml", "no_such_key = 1\n")?;
            let e =
                Config::load(Some(Path::new("bad.toml")), Flags::default()).expect_err("refused");
            assert!(e.to_string().contains("no_such_key"), "{e}");
            jail.create_file("bad.toml", "default_ttl = \"soon\"\n")?;
            let e =
                Config::load(Some(Path::new("bad.toml")), Flags::default()).expect_err("refused");
            assert!(e.to_string().contains("default_ttl"), "{e}");
            assert!(e.to_string().contains("bad.toml"), "{e}");
            let e = Config::load(Some(Path::new("missing.toml")), Flags::default())
                .expect_err("refused");
            assert!(e.to_string().contains("missing.toml"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn the_redis_url_always_asks_for_resp3() {
        let ok = |url| resp3_url(url).expect("accepted");
        assert_eq!(ok("redis://r:6379"), "redis://r:6379?protocol=resp3");
        assert_eq!(ok("redis://r:6379/"), "redis://r:6379/?protocol=resp3");
        assert_eq!(ok("redis://r/?protocol=RESP3"), "redis://r/?protocol=resp3");
        assert_eq!(ok("redis://r/0?protocol=3"), "redis://r/0?protocol=resp3");
        assert_eq!(
            ok("rediss://u:p@r/?insecure=1&protocol=resp3"),
            "rediss://u:p@r/?insecure=1&protocol=resp3"
        );
        assert_eq!(
            ok("rediss://r:6380/#insecure"),
            "rediss://r:6380/?protocol=resp3#insecure"
        );
        let refused = resp3_url("redis://r/?protocol=resp2").expect_err("refused");
        assert!(refused.contains("RESP3"), "{refused}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Config {
            redis_url: Some("rediss://default:hunter2@redis.example:6380/?protocol=resp3".into()),
            database_url: Some("postgres://belfry:pg-secret@db/belfry".into()),
            ..Config::new(
                "d",
                "the-jwt-secret-itself".into(),
                vec!["bfk_the_key_itself".into()],
            )
        };
        let shown = format!("{c:?}");
        for secret in [
            "hunter2",
            "pg-secret",
            "the-jwt-secret-itself",
            "bfk_the_key_itself",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("rediss://default:***@redis.example:6380/?protocol=resp3"),
            "{shown}"
        );
        assert_eq!(redact_url("redis://r:6379/"), "redis://r:6379/");
        assert_eq!(redact_url("redis://:pw@r/"), "redis://:***@r/");
        // Passwords with the characters that end an authority, unencoded.
        assert_eq!(
            redact_url("redis://:pa/ss@r:6379/0"),
            "redis://***@r:6379/0"
        );
        assert_eq!(redact_url("postgres://u:p?w#d@h/db"), "postgres://***@h/db");
        assert_eq!(redact_url("postgres://u:p@s?w@h/db"), "postgres://***@h/db");
        assert_eq!(redact_url("postgres://u:p@s/w@h/db"), "postgres://***@h/db");
        assert_eq!(
            redact_url("postgres://u@h/db?password=x&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
    }

    #[test]
    fn settings_that_must_go_together_are_checked() {
        let mut c = Config::new("d", "a-secret-of-enough-length".into(), vec![]);
        c.tls_cert = Some("cert.pem".into());
        assert!(c.validate().is_err());
        c.tls_key = Some("key.pem".into());
        assert!(c.validate().is_ok());
        c.catch_up_batch = 0;
        assert!(c.validate().is_err());
        c.catch_up_batch = 200;
        c.publish_rate = 0.0;
        assert!(c.validate().is_err());
        c.publish_rate = 1.0;
        c.redis_prefix = "a b".into();
        assert!(c.validate().is_err());
        c.redis_prefix = "belfry".into();
        c.trusted_proxies = vec!["10.0.0.0/33".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn several_nodes_need_a_shared_postgres_store_and_shared_secrets() {
        let mut c = Config {
            redis_url: Some("redis://127.0.0.1:6379/?protocol=resp3".into()),
            jwt_secret: Some("shared-secret-long-enough".into()),
            publish_keys: vec!["bfk_shared_key_of_enough_length".into()],
            ..Config::default()
        };
        let sqlite = c.validate().expect_err("refused").to_string();
        assert!(sqlite.contains("postgres://"), "{sqlite}");
        c.database_url = Some("postgres://belfry@db/belfry".into());
        assert!(c.validate().is_ok());
        c.jwt_secret = None;
        let generated = c.validate().expect_err("refused").to_string();
        assert!(generated.contains("same --jwt-secret"), "{generated}");
        c.jwt_secret = Some("shared-secret-long-enough".into());
        c.redis_url = Some("redis://r/?protocol=resp2".into());
        assert!(c.validate().is_err());
    }

    /// The README's table is the settings' table: a setting added, renamed or given
    /// another default fails here until the README says so too (the message holds the
    /// table to paste).
    #[test]
    fn the_readme_lists_every_setting_as_declared() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let header = "| flag | variable | default | what |";
        let expected: Vec<String> = std::iter::once(header.to_owned())
            .chain(std::iter::once("|---|---|---|---|".to_owned()))
            .chain(SETTINGS.iter().map(Setting::readme_row))
            .collect();
        let found: Vec<String> = readme
            .lines()
            .skip_while(|l| *l != header)
            .take_while(|l| l.starts_with('|'))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            found,
            expected,
            "the README's configuration table differs from the settings; it should read:\n{}",
            expected.join("\n")
        );
    }

    #[test]
    fn every_setting_has_a_flag_a_variable_and_a_summary() {
        for s in SETTINGS {
            let kebab = s.key.replace('_', "-");
            let singular = match kebab.strip_suffix("ies") {
                Some(stem) => format!("{stem}y"),
                None => kebab.strip_suffix('s').unwrap_or(&kebab).to_owned(),
            };
            assert!(
                s.flag == format!("--{kebab}") || (s.many && s.flag == format!("--{singular}")),
                "{s:?}"
            );
            assert_eq!(s.env, format!("BELFRY_{}", s.key.to_uppercase()), "{s:?}");
            assert!(!s.summary().is_empty(), "{s:?}");
        }
    }
}
