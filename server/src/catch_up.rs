//! Catch-ups: a socket is sent everything visible to its user after a point, in `sync`
//! batches, then `synced`. A catch-up runs when a socket connects (from the cursor it
//! holds), when its client asks (`sync`), and when live delivery had to hold the socket
//! back (it fell behind, or it joined a room late: from the first id it did not get).
//!
//! Only one catch-up runs per socket at a time, every catch-up ends with `synced`, and a
//! catch-up is paced by the client's reading speed instead of dropping what it sends:
//! the next page is read only once at most [`IN_FLIGHT`] of what it sent waits in the
//! hub for the connection (a client that stops reading holds that much of the hub's
//! memory, and a page, not the whole backlog). A socket the hub cannot follow to its
//! connection (one that began with long-polling) is paced by its send buffer of
//! [`SOCKET_BUFFER`] packets instead, and sent batches of [`UNPACED_BATCH_BYTES`] so that
//! a full buffer holds about as much (more only when single notifications are larger).
//!
//! A catch-up stops when the socket's token expires, before its next batch.

use crate::serve::ConnectionHandle;
use crate::session::{self, Session};
use crate::state::SharedState;
use backon::{ExponentialBuilder, Retryable};
use belfry_protocol::Notification;
use belfry_protocol::events::{self, Synced};
use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use std::time::Duration;

/// How long a catch-up waits for a full socket buffer to drain before giving up on the
/// socket (the heartbeat then closes it).
const STALLED_AFTER: Duration = Duration::from_secs(30);
/// How a catch-up waits for a full socket buffer: short pauses first (a client that
/// reads is back within milliseconds), then up to 100 ms, for [`STALLED_AFTER`] in all.
const WHILE_FULL: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(2))
    .with_max_delay(Duration::from_millis(100))
    .with_total_delay(Some(STALLED_AFTER))
    .without_max_times();

/// The most bytes of one catch-up that may wait in the hub for the socket's connection
/// before the next batch goes out (besides the batch being sent).
pub const IN_FLIGHT: u64 = 1024 * 1024;
/// The most bytes of one `sync` batch (a batch holds one notification at least).
pub const BATCH_BYTES: u64 = 256 * 1024;
/// How many packets a socket's send buffer holds (Engine.IO's buffer, set in `lib.rs`).
pub const SOCKET_BUFFER: usize = 128;
/// The most bytes of one `sync` batch to a socket paced by its buffer alone.
pub const UNPACED_BATCH_BYTES: u64 = IN_FLIGHT / SOCKET_BUFFER as u64;
/// About how many bytes of notifications one page reads from the store: after a page of
/// large ones, the next reads fewer.
pub const PAGE_BYTES: u64 = 1024 * 1024;

/// How a catch-up knows how much of what it sent its connection has written: the
/// connection of a socket that connected straight over WebSocket. (A socket that began
/// with long-polling and upgraded keeps the handshake of its first connection, which is
/// not the one that carries it now: its catch-up is paced by the socket's buffer alone.)
struct Pace {
    connection: Option<ConnectionHandle>,
    /// The connection's bytes written when the catch-up began.
    start: u64,
    /// Bytes the catch-up handed to the socket.
    sent: u64,
}

impl Pace {
    fn of<A: Adapter>(socket: &SocketRef<A>) -> Pace {
        let connection = ConnectionHandle::carrying(socket.req_parts());
        Pace {
            start: connection.as_ref().map_or(0, ConnectionHandle::written),
            connection,
            sent: 0,
        }
    }

    /// The most bytes of one batch.
    fn batch_bytes(&self) -> u64 {
        if self.connection.is_some() {
            BATCH_BYTES
        } else {
            UNPACED_BATCH_BYTES
        }
    }

    /// Bytes sent and not written yet.
    fn waiting(&self) -> u64 {
        let written = self
            .connection
            .as_ref()
            .map_or(u64::MAX, |c| c.written().saturating_sub(self.start));
        self.sent.saturating_sub(written)
    }

    /// Waits until at most [`IN_FLIGHT`] bytes wait; gives up with the socket if its
    /// client reads nothing for [`STALLED_AFTER`].
    async fn drained<A: Adapter>(&self, socket: &SocketRef<A>) -> Result<(), CatchUpError> {
        if self.connection.is_none() {
            return Ok(());
        }
        let mut pauses = backon::BackoffBuilder::build(WHILE_FULL);
        while self.waiting() > IN_FLIGHT {
            if !socket.connected() {
                return Err(CatchUpError::SocketGone);
            }
            match pauses.next() {
                Some(pause) => tokio::time::sleep(pause).await,
                None => {
                    tracing::info!(sid = %socket.id, "socket stalled during catch-up");
                    return Err(CatchUpError::SocketGone);
                }
            }
        }
        Ok(())
    }
}

/// The end of a catch-up at `head`, with the store's epoch.
fn synced<A: Adapter>(state: &SharedState<A>, head: u64) -> Synced {
    Synced {
        head,
        epoch: Some(state.store.epoch().to_string()),
    }
}

/// Starts the catch-up of a socket held back (`Session::hold_live_from`), or fallen
/// behind, after `delay`.
pub fn recover<A: Adapter>(state: &SharedState<A>, socket: &SocketRef<A>, delay: Duration) {
    let (state, socket) = (state.clone(), socket.clone());
    // Boxed: a recovery can schedule another, and the recursive future type needs a
    // name to be `Send`.
    let recovery: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if let Some(session) = session::of(&socket) {
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
        CatchUpError::Store(crate::error::HubError::from(e).body())
    }
}

/// Emits an event, waiting while the socket's buffer is full (catch-up traffic is paced
/// by the client's reading speed instead of being dropped).
async fn emit_paced<A: Adapter, T: Serialize + ?Sized>(
    socket: &SocketRef<A>,
    event: &str,
    data: &T,
) -> Result<(), CatchUpError> {
    let full = |e: &SendError| matches!(e, SendError::Socket(SocketError::InternalChannelFull));
    let sent = (|| async { socket.emit(event, data) })
        .retry(WHILE_FULL)
        .when(full)
        .await;
    match sent {
        Ok(()) => Ok(()),
        Err(SendError::Serialize(e)) => {
            tracing::error!(error = %e, "cannot serialize a catch-up batch");
            Err(CatchUpError::SocketGone)
        }
        Err(e) => {
            if full(&e) {
                // Still full after STALLED_AFTER: the client reads nothing. A disconnect
                // packet would not fit either; Engine.IO's heartbeat, whose ping cannot
                // be queued now, closes the connection.
                tracing::info!(sid = %socket.id, "socket stalled during catch-up");
            }
            Err(CatchUpError::SocketGone)
        }
    }
}

/// Sends notifications as `sync` batches of at most [`Pace::batch_bytes`] each (one at
/// least), pacing itself after each; the last batch says `more`. Returns the bytes sent.
/// Nothing more is sent once the session's token has expired.
async fn emit_batch<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    pace: &mut Pace,
    notifications: Vec<Notification>,
    more: bool,
) -> Result<u64, CatchUpError> {
    // Each serialized once: its size is what the connection has to write.
    let raws = notifications
        .iter()
        .map(serde_json::value::to_raw_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            tracing::error!(error = %e, "cannot serialize a catch-up batch");
            CatchUpError::SocketGone
        })?;
    drop(notifications);
    let total: u64 = raws.iter().map(|r| r.get().len() as u64).sum();
    let limit = pace.batch_bytes();
    let mut rest: &[Box<RawValue>] = &raws;
    loop {
        if session.authorized().is_err() {
            return Err(CatchUpError::SocketGone);
        }
        let mut size = 0;
        let take = rest
            .iter()
            .take_while(|r| {
                size += r.get().len() as u64;
                size <= limit
            })
            .count()
            .max(1)
            .min(rest.len());
        let (chunk, after) = rest.split_at(take);
        rest = after;
        let batch = RawBatch {
            notifications: chunk,
            more: more || !rest.is_empty(),
        };
        let batch = serde_json::value::to_raw_value(&batch).map_err(|e| {
            tracing::error!(error = %e, "cannot serialize a catch-up batch");
            CatchUpError::SocketGone
        })?;
        pace.sent += batch.get().len() as u64;
        emit_paced(socket, events::SYNC, &batch).await?;
        state.metrics.catch_up_batches_total.increment(1);
        state
            .metrics
            .catch_up_notifications_total
            .increment(chunk.len() as u64);
        pace.drained(socket).await?;
        if rest.is_empty() {
            return Ok(total);
        }
    }
}

/// A `sync` batch of notifications serialized already (the shape of
/// [`belfry_protocol::events::SyncBatch`]).
#[derive(Serialize)]
struct RawBatch<'a> {
    notifications: &'a [Box<RawValue>],
    more: bool,
}

/// How many notifications the next page reads: the configured batch, fewer when they
/// are large (about [`PAGE_BYTES`] of them), never none.
fn next_page_size(batch: u32, bytes: u64, count: usize) -> u32 {
    if count == 0 || bytes == 0 {
        return batch;
    }
    let each = (bytes / count as u64).max(1);
    u32::try_from(PAGE_BYTES / each)
        .unwrap_or(u32::MAX)
        .clamp(1, batch)
}

/// Sends a socket everything visible to its user after `from`, in `sync` batches, then
/// `synced`, once no other catch-up runs on it. The socket must already be in its rooms.
pub async fn catch_up<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    from: CatchUpFrom,
) {
    let guard = session.catching_up().lock().await;
    catch_up_locked(state, socket, session, from, guard).await;
}

/// Runs the catch-up a client asked for with `sync` (the latest, if several piled up).
pub async fn requested_catch_up<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
) {
    let guard = session.catching_up().lock().await;
    if let Some(cursor) = session.take_sync() {
        catch_up_locked(state, socket, session, CatchUpFrom::Cursor(cursor), guard).await;
    }
}

/// [`catch_up`] for a caller that already holds the session's catch-up lock. A store
/// failure disconnects the socket, whatever its buffer holds: left as it is, it could
/// wait forever for a `synced` (or, lagging, for live notifications), while reconnecting
/// resumes from its cursor.
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
            session::disconnect(socket);
        }
    }
}

async fn run_catch_up<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    from: CatchUpFrom,
) -> Result<(), CatchUpError> {
    if !socket.connected() || session.authorized().is_err() {
        return Err(CatchUpError::SocketGone);
    }
    let mut pace = Pace::of(socket);
    // A device that is up to date needs nothing from the store: every id above the head
    // is emitted after this read (delivery raises the head before it emits), and the
    // socket is already in its rooms, so it arrives live. Most reconnects are like this
    // (a network blip, a restarted hub); each one used to cost a read transaction. Only
    // in the epoch delivery is in (read before the head): a socket let in under a newer
    // one reads the store until delivery has followed.
    let delivering = state.head.epoch();
    let head = state.head.get();
    if let CatchUpFrom::Cursor(Some(cursor)) = from
        && cursor >= head
        && *delivering == *session.epoch
    {
        state.metrics.catch_ups_up_to_date_total.increment(1);
        emit_batch(state, socket, session, &mut pace, Vec::new(), false).await?;
        return emit_paced(socket, events::SYNCED, &synced(state, head)).await;
    }
    let viewer = state.store.viewer(&session.user, &session.allowed).await?;
    let batch = state.config.catch_up_batch;
    let mut limit = batch;
    let mut cursor = match from {
        CatchUpFrom::Cursor(Some(cursor)) => cursor,
        CatchUpFrom::Cursor(None) => {
            // Head first: the query after it covers every id up to it (see below).
            let head = state.store.head().await?;
            let unread = state
                .store
                .unread(&viewer, crate::store::UNREAD_ON_FIRST_CONNECT)
                .await?;
            emit_batch(state, socket, session, &mut pace, unread, false).await?;
            return emit_paced(socket, events::SYNCED, &synced(state, head)).await;
        }
        CatchUpFrom::Lag => {
            if session.lag().is_none() {
                return Ok(());
            }
            // An empty batch first: it tells the client a catch-up is running, so it stops
            // advancing its cursor on live notifications until `synced`. Only then may
            // live delivery resume. (Only a recovery clears the lag, and recoveries run
            // one at a time, so it is still set.)
            emit_batch(state, socket, session, &mut pace, Vec::new(), true).await?;
            session.lag().take().unwrap_or(1).saturating_sub(1)
        }
    };
    loop {
        // The head comes from the page's snapshot: everything committed up to it is in
        // this page or an earlier one. Read after the page, it could name an id committed
        // meanwhile whose live emit has not reached the socket yet; a client that moved
        // its cursor to it and dropped off would skip that id.
        let page = state.store.page(&viewer, cursor, limit).await?;
        let head = page.head;
        let more = page.more;
        let count = page.notifications.len();
        let bytes = emit_batch(state, socket, session, &mut pace, page.notifications, more).await?;
        limit = next_page_size(batch, bytes, count);
        match page.last_id {
            Some(last) if more => cursor = last,
            _ => return emit_paced(socket, events::SYNCED, &synced(state, head)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_large_notifications_read_fewer() {
        // 200 of 1 KB: a full page.
        assert_eq!(next_page_size(200, 200 * 1024, 200), 200);
        // 36 KB each: about a megabyte's worth.
        assert_eq!(next_page_size(200, 200 * 36 * 1024, 200), 28);
        // Huge ones: one at a time, never none.
        assert_eq!(next_page_size(200, 4 * 1024 * 1024, 1), 1);
        assert_eq!(next_page_size(200, 0, 0), 200);
    }
}
