//! Every rate limit of the hub, on governor's GCRA limiters: per publish key, per socket,
//! per user (writes, connects) and per client address (failed authentications).
//! Each answers `Err(wait)` with how long until the next attempt would be allowed, which
//! the edges turn into `429` + `Retry-After` or a `rate_limited` reply.
//!
//! A client's address is the connection's peer, or, when the peer is one of the trusted
//! proxies (`--trusted-proxy`), the nearest untrusted address of its `X-Forwarded-For`.
//! Failed authentications are counted per [`Client`]: an IPv4 address, or an IPv6 /64
//! (what one subscriber line or host is usually given).

use crate::config::Config;
use crate::error::HubError;
use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `rate` per second on average, `burst` at once (at least one).
pub fn quota(rate: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-6)).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

/// One limit (a publish key's, a socket's).
#[derive(Debug)]
pub struct Limit(DefaultDirectRateLimiter);

impl Limit {
    /// A limit with this quota.
    pub fn new(quota: Quota) -> Self {
        Self(DefaultDirectRateLimiter::direct(quota))
    }

    /// Takes one cell, or says how long until one is available.
    pub fn check(&self) -> Result<(), Duration> {
        self.0
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// One limit per key (a user's, an address's).
#[derive(Debug)]
pub struct KeyedLimit<K: Hash + Eq + Clone>(DefaultKeyedRateLimiter<K>);

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// A limit with this quota for every key.
    pub fn new(quota: Quota) -> Self {
        Self(DefaultKeyedRateLimiter::keyed(quota))
    }

    /// Takes one cell of `key`'s, or says how long until one is available.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.0
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets the keys whose limits are full again (they behave as new ones).
    pub fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Failed authentications per client address. Each failure takes a cell; an address out
/// of cells is refused *before* its next credential is checked, until its wait is over,
/// so guessing keys or tokens from one address runs at the configured rate at most.
#[derive(Debug)]
pub struct AuthThrottle {
    failures: KeyedLimit<Client>,
    /// Clients refused until then. A std mutex: a lookup or an insert, never held
    /// across an await.
    blocked: Mutex<HashMap<Client, Instant>>,
}

impl AuthThrottle {
    /// `per_minute` failures on average, `burst` at once.
    pub fn new(per_minute: f64, burst: u32) -> Self {
        Self {
            failures: KeyedLimit::new(quota(per_minute / 60.0, burst)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<Client, Instant>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `address` may try a credential now; `Err(wait)` while it is refused.
    pub fn admit(&self, client: &Client) -> Result<(), Duration> {
        let now = Instant::now();
        match self.blocked().get(client) {
            Some(until) if *until > now => Err(*until - now),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt from `client`; `Some(wait)` when it is now refused for
    /// that long.
    pub fn failed(&self, client: &Client) -> Option<Duration> {
        let wait = self.failures.check(client).err()?;
        self.blocked().insert(client.clone(), Instant::now() + wait);
        Some(wait)
    }

    /// Forgets addresses that are no longer refused and whose failures have worn off.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        self.blocked().retain(|_, until| *until > now);
        self.failures.forget_idle();
    }
}

/// Who failed authentications are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// An IPv4 address, or the /64 of an IPv6 one.
    Address(IpAddr),
    /// What a forwarded header said where an address should be (at most 64 bytes of it):
    /// a chain of proxies that passes on what clients claim.
    Claimed(Box<str>),
}

impl Client {
    /// The client at `address` (already [`normal`]): IPv6 ones by their /64.
    fn address(address: IpAddr) -> Client {
        Client::Address(match address {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
            v4 => v4,
        })
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Address(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            Client::Address(v4) => write!(f, "{v4}"),
            Client::Claimed(text) => write!(f, "{text:?} (forwarded)"),
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) as the IPv4 one.
fn normal(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// A forwarded entry that is no address, kept short.
fn claimed(entry: &[u8]) -> Box<str> {
    String::from_utf8_lossy(&entry[..entry.len().min(64)]).into()
}

/// The limits on what one user or one client address may do across the hub.
#[derive(Debug)]
pub struct Limits {
    /// Writes (mark read, subscribe, unsubscribe) per user, over HTTP and sockets.
    user_writes: KeyedLimit<String>,
    /// Socket.IO connects per user.
    connects: KeyedLimit<String>,
    /// Failed authentications per client address.
    auth: AuthThrottle,
    /// The networks whose `X-Forwarded-For` is believed.
    proxies: Vec<IpNet>,
}

impl Limits {
    /// The limits of `config` (checked: its proxies parse).
    pub fn new(config: &Config) -> Self {
        Self {
            user_writes: KeyedLimit::new(quota(config.user_write_rate, config.user_write_burst)),
            connects: KeyedLimit::new(quota(config.connect_rate, config.connect_burst)),
            auth: AuthThrottle::new(config.auth_failure_rate, config.auth_failure_burst),
            proxies: config.proxies().unwrap_or_default(),
        }
    }

    /// Takes one of `user`'s writes.
    pub fn user_write(&self, user: &str) -> Result<(), HubError> {
        self.user_writes
            .check(&user.to_owned())
            .map_err(|wait| HubError::rate_limited("writes for this user", wait))
    }

    /// Takes one of `user`'s connects.
    pub fn connect(&self, user: &str) -> Result<(), HubError> {
        self.connects
            .check(&user.to_owned())
            .map_err(|wait| HubError::rate_limited("connects for this user", wait))
    }

    /// Runs `check` (a credential check) for `client`: refused at once while the client
    /// is out of failed attempts, and a failure counted.
    pub fn authenticate<T>(
        &self,
        client: Option<Client>,
        check: impl FnOnce() -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let Some(client) = client else {
            return check();
        };
        self.auth.admit(&client).map_err(|wait| {
            HubError::rate_limited("failed authentications from this address", wait)
        })?;
        let result = check();
        if result.is_err() && self.auth.failed(&client).is_some() {
            tracing::warn!(%client, "too many failed authentications; refusing this address for a while");
        }
        result
    }

    /// Who the client is: its peer, or the nearest entry of `X-Forwarded-For` (read from
    /// the right) that is not a trusted proxy. The entries are read one by one, as bytes:
    /// an entry that is no address (the client wrote it) stops the walk and is the
    /// client itself, so no header can make the hub count a proxy's failures instead.
    pub fn client_address(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<Client> {
        let peer = normal(peer?.ip());
        if !self.trusted(peer) {
            return Some(Client::address(peer));
        }
        let mut entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
            .collect::<Vec<_>>();
        let mut nearest = Client::address(peer);
        while let Some(entry) = entries.pop() {
            match std::str::from_utf8(entry).ok().and_then(forwarded_address) {
                Some(address) if self.trusted(normal(address)) => {
                    nearest = Client::address(normal(address));
                }
                Some(address) => return Some(Client::address(normal(address))),
                None => return Some(Client::Claimed(claimed(entry))),
            }
        }
        // Only proxies (a proxy's own request): the farthest of them.
        Some(nearest)
    }

    fn trusted(&self, address: IpAddr) -> bool {
        self.proxies.iter().any(|net| net.contains(&address))
    }

    /// Forgets users and addresses whose limits are full again.
    pub fn forget_idle(&self) {
        self.user_writes.forget_idle();
        self.connects.forget_idle();
        self.auth.forget_idle();
    }
}

/// The address of one `X-Forwarded-For` entry: an address, or an address with a port
/// (`203.0.113.5:41234`, `[2001:db8::1]:443`), as some load balancers write it.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_bursts_then_refills_at_its_rate() {
        let limit = Limit::new(quota(10.0, 3));
        for _ in 0..3 {
            assert!(limit.check().is_ok());
        }
        let wait = limit.check().expect_err("empty");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(limit.check().is_ok());
        assert!(limit.check().is_err());
    }

    #[test]
    fn keyed_limits_are_apart() {
        let limit = KeyedLimit::new(quota(1.0, 2));
        assert!(limit.check(&"ann").is_ok());
        assert!(limit.check(&"ann").is_ok());
        assert!(limit.check(&"ann").is_err());
        assert!(limit.check(&"bob").is_ok());
        assert_eq!(limit.len(), 2);
    }

    #[test]
    fn an_address_out_of_failures_is_refused_before_it_tries_again() {
        let throttle = AuthThrottle::new(60.0, 2);
        let (a, b) = (
            Client::address(IpAddr::from([192, 0, 2, 1])),
            Client::address(IpAddr::from([192, 0, 2, 2])),
        );
        assert!(throttle.admit(&a).is_ok());
        assert_eq!(throttle.failed(&a), None);
        assert_eq!(throttle.failed(&a), None);
        let wait = throttle.failed(&a).expect("now refused");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(throttle.admit(&a).is_err());
        // Another address is not affected.
        assert!(throttle.admit(&b).is_ok());
    }

    fn limits_behind_proxies() -> Limits {
        Limits::new(&Config {
            trusted_proxies: vec!["127.0.0.1/8".into(), "10.0.0.0/8".into()],
            ..Config::default()
        })
    }

    fn forwarded(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = axum::http::HeaderValue::from_bytes(value).expect("header");
        headers.insert("x-forwarded-for", value);
        headers
    }

    fn peer(ip: [u8; 4]) -> Option<SocketAddr> {
        Some(SocketAddr::from((ip, 40000)))
    }

    fn v4(ip: [u8; 4]) -> Option<Client> {
        Some(Client::Address(IpAddr::from(ip)))
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_address() {
        let limits = limits_behind_proxies();
        // A direct client is who it is, whatever it claims.
        let claim = forwarded(b"198.51.100.7");
        assert_eq!(
            limits.client_address(peer([203, 0, 113, 5]), &claim),
            v4([203, 0, 113, 5])
        );
        // Behind nginx (and a balancer in 10/8): the first address neither added.
        let chain = forwarded(b"1.2.3.4, 198.51.100.7, 10.1.2.3");
        assert_eq!(
            limits.client_address(peer([127, 0, 0, 1]), &chain),
            v4([198, 51, 100, 7])
        );
        // A proxy that forwarded nothing: the proxy itself.
        assert_eq!(
            limits.client_address(peer([127, 0, 0, 1]), &HeaderMap::new()),
            v4([127, 0, 0, 1])
        );
    }

    #[test]
    fn junk_in_a_forwarded_header_never_makes_the_proxy_the_client() {
        let limits = limits_behind_proxies();
        // What nginx sends for a client that wrote a header of junk (not even text):
        // the client's own address, appended, is still read.
        let junk = forwarded(b"\x80\xff, 198.51.100.7");
        assert_eq!(
            limits.client_address(peer([127, 0, 0, 1]), &junk),
            v4([198, 51, 100, 7])
        );
        // Junk nearer than any address (a proxy that passes on what clients claim) is
        // counted as itself, never as the proxy.
        let passed_on = forwarded(b"198.51.100.7, junk, 10.1.2.3");
        assert_eq!(
            limits.client_address(peer([127, 0, 0, 1]), &passed_on),
            Some(Client::Claimed("junk".into()))
        );
        // An address with a port (as some load balancers write it) is that address,
        // whatever the port.
        for with_port in [&b"198.51.100.7:41234"[..], b"198.51.100.7:443"] {
            assert_eq!(
                limits.client_address(peer([127, 0, 0, 1]), &forwarded(with_port)),
                v4([198, 51, 100, 7])
            );
        }
        assert_eq!(
            limits.client_address(peer([127, 0, 0, 1]), &forwarded(b"[2001:db8::1]:443")),
            limits.client_address(peer([127, 0, 0, 1]), &forwarded(b"2001:db8::1")),
        );
        // Only proxies: the farthest one.
        let proxies = forwarded(b"10.9.9.9, 10.1.2.3");
        assert_eq!(
            limits.client_address(peer([127, 0, 0, 1]), &proxies),
            v4([10, 9, 9, 9])
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let limits = limits_behind_proxies();
        let at = |ip: &str| Some(SocketAddr::new(ip.parse().expect("ip"), 40000));
        assert_eq!(
            limits.client_address(at("2001:db8:1:2:aaaa::1"), &HeaderMap::new()),
            limits.client_address(at("2001:db8:1:2:bbbb::9"), &HeaderMap::new()),
        );
        assert_ne!(
            limits.client_address(at("2001:db8:1:2::1"), &HeaderMap::new()),
            limits.client_address(at("2001:db8:1:3::1"), &HeaderMap::new()),
        );
        assert_eq!(
            limits.client_address(at("::ffff:203.0.113.5"), &HeaderMap::new()),
            v4([203, 0, 113, 5])
        );
        // A mapped proxy address is a trusted proxy.
        assert_eq!(
            limits.client_address(at("::ffff:127.0.0.1"), &forwarded(b"198.51.100.7")),
            v4([198, 51, 100, 7])
        );
    }
}
