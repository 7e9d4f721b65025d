//! Every rate limit of the hub, on governor's GCRA limiters: per publish key, per socket,
//! per user (HTTP writes, connects) and per client address (failed authentications).
//! Each answers `Err(wait)` with how long until the next attempt would be allowed, which
//! the edges turn into `429` + `Retry-After` or a `rate_limited` reply.
//!
//! A client's address is the connection's peer, or, when the peer is one of the trusted
//! proxies (`--trusted-proxy`), the nearest untrusted address of its `X-Forwarded-For`.

use crate::config::Config;
use crate::error::HubError;
use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
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
    failures: KeyedLimit<IpAddr>,
    /// Addresses refused until then. A std mutex: a lookup or an insert, never held
    /// across an await.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthThrottle {
    /// `per_minute` failures on average, `burst` at once.
    pub fn new(per_minute: f64, burst: u32) -> Self {
        Self {
            failures: KeyedLimit::new(quota(per_minute / 60.0, burst)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `address` may try a credential now; `Err(wait)` while it is refused.
    pub fn admit(&self, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        match self.blocked().get(&address) {
            Some(until) if *until > now => Err(*until - now),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt from `address`; `Some(wait)` when it is now refused for
    /// that long.
    pub fn failed(&self, address: IpAddr) -> Option<Duration> {
        let wait = self.failures.check(&address).err()?;
        self.blocked().insert(address, Instant::now() + wait);
        Some(wait)
    }

    /// Forgets addresses that are no longer refused and whose failures have worn off.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        self.blocked().retain(|_, until| *until > now);
        self.failures.forget_idle();
    }
}

/// The limits on what one user or one client address may do across the hub.
#[derive(Debug)]
pub struct Limits {
    /// HTTP writes (mark read, subscribe, unsubscribe) per user.
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

    /// Takes one of `user`'s HTTP writes.
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

    /// Runs `check` (a credential check) for a client at `address`: refused at once while
    /// the address is out of failed attempts, and a failure counted.
    pub fn authenticate<T>(
        &self,
        address: Option<IpAddr>,
        check: impl FnOnce() -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let Some(address) = address else {
            return check();
        };
        self.auth.admit(address).map_err(|wait| {
            HubError::rate_limited("failed authentications from this address", wait)
        })?;
        let result = check();
        if result.is_err() && self.auth.failed(address).is_some() {
            tracing::warn!(%address, "too many failed authentications; refusing this address for a while");
        }
        result
    }

    /// The client's address: the peer, or the nearest untrusted address its trusted
    /// proxies saw (`X-Forwarded-For`, read from the right).
    pub fn client_address(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.ip();
        if !self.trusted(peer) {
            return Some(peer);
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        Some(
            forwarded
                .into_iter()
                .rev()
                .find(|a| !self.trusted(*a))
                .unwrap_or(peer),
        )
    }

    fn trusted(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        self.proxies.iter().any(|net| net.contains(&address))
    }

    /// Forgets users and addresses whose limits are full again.
    pub fn forget_idle(&self) {
        self.user_writes.forget_idle();
        self.connects.forget_idle();
        self.auth.forget_idle();
    }
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
        let (a, b): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap_or(IpAddr::from([0; 4])),
            IpAddr::from([192, 0, 2, 2]),
        );
        assert!(throttle.admit(a).is_ok());
        assert_eq!(throttle.failed(a), None);
        assert_eq!(throttle.failed(a), None);
        let wait = throttle.failed(a).expect("now refused");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(throttle.admit(a).is_err());
        // Another address is not affected.
        assert!(throttle.admit(b).is_ok());
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_address() {
        let limits = Limits::new(&Config {
            trusted_proxies: vec!["127.0.0.1/8".into(), "10.0.0.0/8".into()],
            ..Config::default()
        });
        let mut headers = HeaderMap::new();
        let peer = |ip: [u8; 4]| Some(SocketAddr::from((ip, 40000)));
        // A direct client is who it is, whatever it claims.
        headers.insert("x-forwarded-for", "198.51.100.7".parse().expect("header"));
        assert_eq!(
            limits.client_address(peer([203, 0, 113, 5]), &headers),
            Some(IpAddr::from([203, 0, 113, 5]))
        );
        // Behind nginx (and a balancer in 10/8): the first address neither added.
        headers.insert(
            "x-forwarded-for",
            "1.2.3.4, 198.51.100.7, 10.1.2.3".parse().expect("header"),
        );
        assert_eq!(
            limits.client_address(peer([127, 0, 0, 1]), &headers),
            Some(IpAddr::from([198, 51, 100, 7]))
        );
        // A proxy that forwarded nothing: the proxy itself.
        assert_eq!(
            limits.client_address(peer([127, 0, 0, 1]), &HeaderMap::new()),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
    }
}
