//! What the hub keeps per subscriber socket, in the socket's extensions: who it is, what
//! its token allows, its rate limit, where its delivery stands (lagging, catching up,
//! acknowledged) and whether its token still holds.

use crate::auth::UserClaims;
use crate::config::Config;
use crate::rate_limit::{Limit, quota};
use belfry_protocol::{ErrorBody, ErrorCode, TopicPatterns};
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

/// A subscriber socket's session.
#[derive(Debug)]
pub struct Session {
    /// The user.
    pub user: String,
    /// The topics the socket's token allows.
    pub allowed: TopicPatterns,
    /// The token's claims, for operations made over this socket.
    pub claims: UserClaims,
    /// The cursor the client sent in its handshake.
    pub cursor: Option<u64>,
    /// The per-socket event rate limit.
    pub events: Limit,
    /// The first id a live emit could not hand over, while the socket is lagging. A std
    /// mutex: live delivery checks and emits under it (no await), so a recovery that
    /// clears it can never interleave with a half-done emit.
    lag: Mutex<Option<u64>>,
    /// Held for the whole of a catch-up, so catch-ups never interleave on one socket.
    catching_up: tokio::sync::Mutex<()>,
    /// A client `sync` waiting to run: the cursor it asked for. A std mutex, held for an
    /// assignment.
    pending_sync: Mutex<Option<Option<u64>>>,
    /// The highest id this socket acknowledged (acks at or below it are no-ops).
    acked: AtomicU64,
    /// Whether this socket is counted in the connections gauge.
    counted: AtomicBool,
    /// Signalled when the socket disconnects (ends the token-expiry watch).
    ended: tokio::sync::Notify,
}

impl Session {
    /// A session for a verified token.
    pub fn new(claims: UserClaims, cursor: Option<u64>, config: &Config) -> Self {
        Self {
            user: claims.sub.clone(),
            allowed: claims.allowed_topics(),
            events: Limit::new(quota(config.socket_event_rate, config.socket_event_burst)),
            claims,
            cursor,
            lag: Mutex::new(None),
            catching_up: tokio::sync::Mutex::new(()),
            pending_sync: Mutex::new(None),
            acked: AtomicU64::new(0),
            counted: AtomicBool::new(false),
            ended: tokio::sync::Notify::new(),
        }
    }

    /// `Ok` while the socket's token holds; afterwards nothing more is served on it.
    pub fn authorized(&self) -> Result<(), ErrorBody> {
        if self.claims.is_valid_now() {
            Ok(())
        } else {
            Err(ErrorBody::new(
                ErrorCode::TokenExpired,
                "the token of this connection has expired; reconnect with a new one",
            ))
        }
    }

    /// Records that the socket disconnected.
    pub fn end(&self) {
        // notify_one keeps a permit if nobody waits yet, so the signal is never lost.
        self.ended.notify_one();
    }

    /// Resolves once the socket has disconnected.
    pub async fn ended(&self) {
        self.ended.notified().await;
    }

    /// The lock held for the whole of a catch-up.
    pub fn catching_up(&self) -> &tokio::sync::Mutex<()> {
        &self.catching_up
    }

    /// Whether an ack up to `up_to` could acknowledge anything new on this socket.
    pub fn acks_something(&self, up_to: u64) -> bool {
        self.acked.load(Relaxed) < up_to
    }

    /// Records the highest id this socket acknowledged.
    pub fn acked(&self, watermark: u64) {
        self.acked.fetch_max(watermark, Relaxed);
    }

    /// Marks the socket as counted in the connections gauge.
    pub fn count(&self) {
        self.counted.store(true, Relaxed);
    }

    /// Un-counts the socket; `true` the first time only.
    pub fn uncount(&self) -> bool {
        self.counted.swap(false, Relaxed)
    }

    /// Queues a client's catch-up request; `true` when no request was waiting (the caller
    /// then starts one), `false` when it merged into the waiting one.
    pub fn request_sync(&self, cursor: Option<u64>) -> bool {
        let mut pending = self.pending_sync.lock().unwrap_or_else(|p| p.into_inner());
        let was_waiting = pending.is_some();
        *pending = Some(cursor);
        !was_waiting
    }

    /// The catch-up request waiting, if any (the latest cursor asked for).
    pub fn take_sync(&self) -> Option<Option<u64>> {
        self.pending_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Where live delivery to the socket is held back from, while it lags.
    pub fn lag(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.lag.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds live delivery to the socket back from `id` (inclusive), as when it fell
    /// behind: nothing is emitted to it live until a recovery catch-up has sent
    /// everything from there again. For a socket that may have missed something live (it
    /// joins a room late, or its node could not hear the others). Call it *before*
    /// joining the socket to a room, so that no live notification slips in between.
    pub fn hold_live_from(&self, id: u64) {
        let mut lag = self.lag();
        *lag = Some(lag.map_or(id, |from| from.min(id)));
    }
}

/// The session of a socket, if it authenticated.
pub fn of<A: Adapter>(socket: &SocketRef<A>) -> Option<Arc<Session>> {
    socket.extensions.get::<Arc<Session>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> UserClaims {
        UserClaims {
            sub: "eve".into(),
            exp,
            iat: None,
            topics: None,
        }
    }

    #[test]
    fn nothing_is_served_once_the_token_has_expired() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let config = Config::default();
        // Within the 30 s of clock skew allowed past `exp`: still served.
        assert!(
            Session::new(claims(now - 20), None, &config)
                .authorized()
                .is_ok()
        );
        let expired = Session::new(claims(now - 31), None, &config);
        let refused = expired.authorized().expect_err("refused");
        assert_eq!(refused.code, ErrorCode::TokenExpired);
    }

    #[test]
    fn a_held_back_socket_keeps_the_lowest_id() {
        let s = Session::new(claims(i64::MAX / 2), None, &Config::default());
        s.hold_live_from(9);
        s.hold_live_from(4);
        s.hold_live_from(7);
        assert_eq!(*s.lag(), Some(4));
    }
}
