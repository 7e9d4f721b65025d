//! What the hub keeps per subscriber socket, in the socket's extensions: who it is, what
//! its token allows, its rate limit, where its delivery stands (lagging, catching up,
//! acknowledged) and whether its token still holds.

use crate::auth::UserClaims;
use crate::config::Config;
use crate::devices::DeviceSlot;
use crate::rate_limit::{Limit, quota};
use crate::serve::ConnectionHandle;
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
    /// The store's epoch when the socket was let in (see `epoch_change.rs`).
    pub epoch: Arc<str>,
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
    /// Set when the socket disconnects (ends the tasks that watch it).
    ended: tokio::sync::watch::Sender<bool>,
    /// The device's place among its user's, given back when the socket ends.
    slot: Mutex<Option<DeviceSlot>>,
    /// Whether the socket was sent away for an older epoch (once is enough).
    sent_away: AtomicBool,
}

impl Session {
    /// A session for a verified token.
    pub fn new(claims: UserClaims, cursor: Option<u64>, epoch: Arc<str>, config: &Config) -> Self {
        Self {
            user: claims.sub.clone(),
            allowed: claims.allowed_topics(),
            events: Limit::new(quota(config.socket_event_rate, config.socket_event_burst)),
            claims,
            cursor,
            epoch,
            lag: Mutex::new(None),
            catching_up: tokio::sync::Mutex::new(()),
            pending_sync: Mutex::new(None),
            acked: AtomicU64::new(0),
            counted: AtomicBool::new(false),
            ended: tokio::sync::watch::Sender::new(false),
            slot: Mutex::new(None),
            sent_away: AtomicBool::new(false),
        }
    }

    /// Marks the socket as sent away for an older epoch; `true` the first time only.
    pub fn send_away(&self) -> bool {
        !self
            .sent_away
            .swap(true, std::sync::atomic::Ordering::Relaxed)
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

    /// Keeps the device's slot until the socket ends.
    pub fn hold(&self, slot: DeviceSlot) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(slot);
    }

    /// Records that the socket disconnected, and gives its device slot back.
    pub fn end(&self) {
        self.ended.send_replace(true);
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Resolves once the socket has disconnected (at once if it has already).
    pub async fn ended(&self) {
        // The sender lives in `self`: the wait cannot fail while it is borrowed.
        let _ = self.ended.subscribe().wait_for(|ended| *ended).await;
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

/// Disconnects a subscriber socket whatever its send buffer holds. It leaves its rooms
/// first, so nothing live takes the room a disconnect packet needs; while the packet does
/// not fit, the connection that carries the socket (when the hub knows it) is closed at
/// once, and the disconnect tried again every 100 ms until the socket is gone. (A socket
/// whose client reads nothing at all is closed by Engine.IO's heartbeat, whose ping
/// cannot be queued either.)
pub fn disconnect<A: Adapter>(socket: &SocketRef<A>) {
    let socket = socket.clone();
    socket.leave_all();
    tokio::spawn(async move {
        let session = of(&socket);
        loop {
            if socket.clone().disconnect().is_ok() || !socket.connected() {
                return;
            }
            if let Some(connection) = ConnectionHandle::carrying(socket.req_parts()) {
                connection.close();
            }
            let pause = tokio::time::sleep(std::time::Duration::from_millis(100));
            match &session {
                Some(session) => tokio::select! {
                    () = pause => {}
                    () = session.ended() => return,
                },
                None => pause.await,
            }
        }
    });
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
            Session::new(claims(now - 20), None, "e".into(), &config)
                .authorized()
                .is_ok()
        );
        let expired = Session::new(claims(now - 31), None, "e".into(), &config);
        let refused = expired.authorized().expect_err("refused");
        assert_eq!(refused.code, ErrorCode::TokenExpired);
    }

    #[test]
    fn a_held_back_socket_keeps_the_lowest_id() {
        let s = Session::new(claims(i64::MAX / 2), None, "e".into(), &Config::default());
        s.hold_live_from(9);
        s.hold_live_from(4);
        s.hold_live_from(7);
        assert_eq!(*s.lag(), Some(4));
    }
}
