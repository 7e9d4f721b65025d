//! Getting notifications to sockets: live delivery in id order, catch-up from the store,
//! and recovery of sockets that fell behind.
//!
//! The guarantee: a client that follows the cursor rule in `docs/PROTOCOL.md` never misses
//! a notification. Three mechanisms give it:
//! - A socket joins its rooms *before* its catch-up reads the store, so whatever commits
//!   after the read is delivered live, and whatever committed before is in the catch-up.
//! - Live notifications are emitted one socket at a time. When a socket's buffer is full
//!   (a slow client), the socket is marked lagging from that id: nothing more is emitted to
//!   it live, and a recovery catch-up from that id runs once it has room again.
//! - Only one catch-up runs per socket at a time, and every catch-up ends with `synced`.

use crate::state::SharedState;
use crate::store::Committed;
use belfry_protocol::events::{self, SyncBatch, Synced};
use belfry_protocol::{Notification, Target, TopicPatterns};
use serde::Serialize;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Room names. A room is named like the target it serves (`user:<id>`, `topic:<name>`,
/// `all`), so a notification's targets are its rooms.
pub mod rooms {
    /// The room of one user's devices.
    pub fn user(id: &str) -> String {
        format!("user:{id}")
    }
    /// The room of a topic's subscribers.
    pub fn topic(name: &str) -> String {
        format!("topic:{name}")
    }
    /// The room of every subscriber socket.
    pub const ALL: &str = "all";
}

/// How long a catch-up waits for a full socket buffer to drain before giving up on the
/// socket (the heartbeat then closes it).
const STALLED_AFTER: Duration = Duration::from_secs(30);

/// What the hub keeps per subscriber socket (in the socket's extensions).
#[derive(Debug)]
pub struct Session {
    /// The user.
    pub user: String,
    /// The topics the socket's token allows.
    pub allowed: TopicPatterns,
    /// The token's claims, for operations made over this socket.
    pub claims: crate::auth::UserClaims,
    /// The per-socket event rate limit. Held for a few instructions only.
    pub events: Mutex<crate::rate_limit::TokenBucket>,
    /// The first id a live emit could not hand over, while the socket is lagging. A std
    /// mutex: live delivery checks and emits under it (no await), so a recovery that
    /// clears it can never interleave with a half-done emit.
    lag: Mutex<Option<u64>>,
    /// Held for the whole of a catch-up, so catch-ups never interleave on one socket.
    catching_up: tokio::sync::Mutex<()>,
    /// A client `sync` waiting to run: the cursor it asked for.
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
    pub fn new(claims: crate::auth::UserClaims, limits: &crate::config::Limits) -> Self {
        Self {
            user: claims.sub.clone(),
            allowed: claims.allowed_topics(),
            events: Mutex::new(crate::rate_limit::TokenBucket::new(
                limits.socket_event_rate,
                limits.socket_event_burst,
            )),
            claims,
            lag: Mutex::new(None),
            catching_up: tokio::sync::Mutex::new(()),
            pending_sync: Mutex::new(None),
            acked: AtomicU64::new(0),
            counted: AtomicBool::new(false),
            ended: tokio::sync::Notify::new(),
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

    fn lag(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.lag.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The session of a socket, if it authenticated.
pub fn session<A: Adapter>(socket: &SocketRef<A>) -> Option<Arc<Session>> {
    socket.extensions.get::<Arc<Session>>()
}

/// The delivery task: emits what the writer committed, in id order.
pub async fn run<A: Adapter>(state: SharedState<A>, mut committed: mpsc::Receiver<Vec<Committed>>) {
    while let Some(batch) = committed.recv().await {
        for c in batch {
            deliver(&state, &c);
        }
    }
    tracing::debug!("delivery stopped");
}

fn deliver<A: Adapter>(state: &SharedState<A>, c: &Committed) {
    state.note_head(c.notification.id);
    let rooms: Vec<String> = c.targets.iter().map(Target::to_string).collect();
    let sockets = state.sockets_in(rooms);
    if !sockets.is_empty() {
        // Serialize once; each socket's emit then copies the raw text.
        let raw = match serde_json::value::to_raw_value(&c.notification) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::error!(error = %e, id = c.notification.id, "cannot serialize");
                return;
            }
        };
        let mut delivered = 0u64;
        for socket in sockets {
            let Some(session) = session(&socket) else {
                continue;
            };
            if emit_live(state, &socket, &session, c.notification.id, &raw) {
                delivered += 1;
            }
        }
        state.metrics.deliveries_total.fetch_add(delivered, Relaxed);
    }
    state.metrics.observe_publish_to_emit(c.received.elapsed());
}

/// Emits one live notification to one socket; on a full buffer, marks the socket lagging
/// and starts its recovery. Returns whether the socket took it.
fn emit_live<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Arc<Session>,
    id: u64,
    raw: &serde_json::value::RawValue,
) -> bool {
    let mut lag = session.lag();
    if lag.is_some() {
        // Falling behind: its recovery catch-up will include this one.
        return false;
    }
    match socket.emit(events::NOTIFICATION, raw) {
        Ok(()) => true,
        Err(SendError::Socket(SocketError::InternalChannelFull)) => {
            *lag = Some(id);
            drop(lag);
            state.metrics.lagged_total.fetch_add(1, Relaxed);
            tracing::debug!(sid = %socket.id, id, "socket fell behind; recovering by catch-up");
            spawn_recovery(state, socket, Duration::ZERO);
            false
        }
        Err(_) => false,
    }
}

/// Holds live delivery to a socket back from `id` (inclusive), as when it fell behind:
/// nothing is emitted to it live until [`recover`] has sent everything from there again.
/// For a socket that may have missed something live (it joins a room late, or its node
/// could not hear the others). Call it *before* joining the socket to a room, so that no
/// live notification slips in between.
pub fn hold_live_from(session: &Session, id: u64) {
    let mut lag = session.lag();
    *lag = Some(lag.map_or(id, |from| from.min(id)));
}

/// Starts the catch-up of a socket held back with [`hold_live_from`].
pub fn recover<A: Adapter>(state: &SharedState<A>, socket: &SocketRef<A>) {
    spawn_recovery(state, socket, Duration::ZERO);
}

/// Starts a lag recovery (a catch-up from the first missed id) after `delay`.
fn spawn_recovery<A: Adapter>(state: &SharedState<A>, socket: &SocketRef<A>, delay: Duration) {
    let (state, socket) = (state.clone(), socket.clone());
    // Boxed: a recovery can schedule another, and the recursive future type needs a
    // name to be `Send`.
    let recovery: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if let Some(session) = session(&socket) {
                catch_up(&state, &socket, &session, CatchUpFrom::Lag).await;
            }
        });
    tokio::spawn(recovery);
}

/// Where a catch-up starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpFrom {
    /// After this cursor; `None`: the newest unread (a first connection).
    Cursor(Option<u64>),
    /// From the first id a lagging socket missed.
    Lag,
}

/// Why a catch-up stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// The socket closed, or stayed full for too long.
    #[error("socket gone or stalled")]
    SocketGone,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] belfry_protocol::ErrorBody),
}

impl From<crate::store::StoreError> for CatchUpError {
    fn from(e: crate::store::StoreError) -> Self {
        CatchUpError::Store(e.into())
    }
}

/// Emits an event, waiting while the socket's buffer is full (catch-up traffic is paced
/// by the client's reading speed instead of being dropped).
async fn emit_paced<A: Adapter, T: Serialize + ?Sized>(
    socket: &SocketRef<A>,
    event: &str,
    data: &T,
) -> Result<(), CatchUpError> {
    let give_up = Instant::now() + STALLED_AFTER;
    let mut pause = Duration::from_millis(2);
    loop {
        match socket.emit(event, data) {
            Ok(()) => return Ok(()),
            Err(SendError::Socket(SocketError::InternalChannelFull))
                if Instant::now() < give_up =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(SendError::Serialize(e)) => {
                tracing::error!(error = %e, "cannot serialize a catch-up batch");
                return Err(CatchUpError::SocketGone);
            }
            Err(_) => {
                // Still full after STALLED_AFTER: the client reads nothing. A disconnect
                // packet would not fit either; Engine.IO's heartbeat, whose ping cannot
                // be queued now, closes the connection.
                tracing::info!(sid = %socket.id, "socket stalled during catch-up");
                return Err(CatchUpError::SocketGone);
            }
        }
    }
}

async fn emit_batch<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    notifications: Vec<Notification>,
    more: bool,
) -> Result<(), CatchUpError> {
    let n = notifications.len() as u64;
    emit_paced(
        socket,
        events::SYNC,
        &SyncBatch {
            notifications,
            more,
        },
    )
    .await?;
    state.metrics.catch_up_batches_total.fetch_add(1, Relaxed);
    state
        .metrics
        .catch_up_notifications_total
        .fetch_add(n, Relaxed);
    Ok(())
}

/// Sends a socket everything visible to its user after `from`, in `sync` batches, then
/// `synced`, once no other catch-up runs on it. The socket must already be in its rooms.
pub async fn catch_up<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    from: CatchUpFrom,
) {
    let guard = session.catching_up.lock().await;
    catch_up_locked(state, socket, session, from, guard).await;
}

/// Runs the catch-up a client asked for with `sync` (the latest, if several piled up).
pub async fn requested_catch_up<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
) {
    let guard = session.catching_up.lock().await;
    let cursor = session
        .pending_sync
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(cursor) = cursor {
        catch_up_locked(state, socket, session, CatchUpFrom::Cursor(cursor), guard).await;
    }
}

/// [`catch_up`] for a caller that already holds the session's catch-up lock. A store
/// failure disconnects the socket: left as it is, it could wait forever for a `synced`
/// (or, lagging, for live notifications), while reconnecting resumes from its cursor.
pub async fn catch_up_locked<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    from: CatchUpFrom,
    _guard: tokio::sync::MutexGuard<'_, ()>,
) {
    match run_catch_up(state, socket, session, from).await {
        Ok(()) => {}
        Err(CatchUpError::SocketGone) => {
            tracing::debug!(sid = %socket.id, "catch-up ended: socket gone or stalled");
        }
        Err(CatchUpError::Store(e)) => {
            tracing::warn!(sid = %socket.id, error = %e, "catch-up failed; disconnecting so the client resumes");
            if socket.clone().disconnect().is_err() && socket.connected() {
                // The buffer is full, so not even the disconnect fits. Try the recovery
                // again shortly (a lagging socket gets nothing live until then).
                spawn_recovery(state, socket, Duration::from_secs(1));
            }
        }
    }
}

async fn run_catch_up<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    from: CatchUpFrom,
) -> Result<(), CatchUpError> {
    if !socket.connected() {
        return Err(CatchUpError::SocketGone);
    }
    // A device that is up to date needs nothing from the store: every id above the head
    // is emitted after this read (delivery raises the head before it emits), and the
    // socket is already in its rooms, so it arrives live. Most reconnects are like this
    // (a network blip, a restarted hub); each one used to cost a read transaction.
    let head = state.head();
    if let CatchUpFrom::Cursor(Some(cursor)) = from
        && cursor >= head
    {
        state
            .metrics
            .catch_ups_up_to_date_total
            .fetch_add(1, Relaxed);
        emit_batch(state, socket, Vec::new(), false).await?;
        return emit_paced(socket, events::SYNCED, &Synced { head }).await;
    }
    let viewer = state.viewer(&session.user, &session.allowed).await?;
    let batch = state.config.limits.catch_up_batch;
    let mut cursor = match from {
        CatchUpFrom::Cursor(Some(cursor)) => cursor,
        CatchUpFrom::Cursor(None) => {
            // Head first: the query after it covers every id up to it (see below).
            let head = state.store.head().await?;
            let unread = state
                .store
                .unread(&viewer, crate::store::UNREAD_ON_FIRST_CONNECT)
                .await?;
            emit_batch(state, socket, unread, false).await?;
            return emit_paced(socket, events::SYNCED, &Synced { head }).await;
        }
        CatchUpFrom::Lag => {
            if session.lag().is_none() {
                return Ok(());
            }
            // An empty batch first: it tells the client a catch-up is running, so it stops
            // advancing its cursor on live notifications until `synced`. Only then may
            // live delivery resume. (Only a recovery clears the lag, and recoveries run
            // one at a time, so it is still set.)
            emit_batch(state, socket, Vec::new(), true).await?;
            session.lag().take().unwrap_or(1).saturating_sub(1)
        }
    };
    loop {
        // `head` is read before the page: everything committed up to it is then in this
        // page or an earlier one. Read after, it could name an id committed meanwhile
        // whose live emit has not reached the socket yet; a client that moved its cursor
        // to it and dropped off would skip that id.
        let head = state.store.head().await?;
        let page = state.store.page(&viewer, cursor, batch).await?;
        let more = page.more;
        emit_batch(state, socket, page.notifications, more).await?;
        match page.last_id {
            Some(last) if more => cursor = last,
            _ => return emit_paced(socket, events::SYNCED, &Synced { head }).await,
        }
    }
}
