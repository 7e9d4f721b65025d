//! Live delivery: every notification the store's feed hands over, in id order, to the
//! sockets of this node in its rooms.
//!
//! The guarantee: a client that follows the cursor rule in `docs/PROTOCOL.md` never misses
//! a notification. Three mechanisms give it:
//! - A socket joins its rooms *before* its catch-up reads the store, so whatever commits
//!   after the read is delivered live, and whatever committed before is in the catch-up.
//! - Live notifications are emitted one socket at a time. When a socket's buffer is full
//!   (a slow client), the socket is marked lagging from that id: nothing more is emitted to
//!   it live, and a recovery catch-up from that id runs once it has room again
//!   (`catch_up.rs`).
//! - Only one catch-up runs per socket at a time, and every catch-up ends with `synced`.

use crate::catch_up;
use crate::epoch_change;
use crate::session::{self, Session};
use crate::state::SharedState;
use crate::store::{Committed, Fed};
use belfry_protocol::events;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use std::time::Duration;
use tokio::sync::mpsc;

/// The delivery task: emits what the store's feed hands over, in id order, and follows
/// the store into a new epoch where the feed says it begins.
pub async fn run<A: Adapter>(state: SharedState<A>, mut fed: mpsc::Receiver<Fed>) {
    while let Some(item) = fed.recv().await {
        match item {
            Fed::Committed(batch) => {
                let epoch = state.head.epoch();
                for c in batch {
                    deliver(&state, &epoch, &c);
                }
            }
            Fed::NewEpoch(epoch) => epoch_change::follow(&state, &epoch),
        }
    }
    tracing::debug!("delivery stopped");
}

/// Delivers `c`, of `epoch`, to the sockets let in under that epoch.
fn deliver<A: Adapter>(state: &SharedState<A>, epoch: &str, c: &Committed) {
    state.head.raise(c.notification.id);
    let sockets = state.membership.sockets_for(&c.targets);
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
            let Some(session) = session::of(&socket) else {
                continue;
            };
            if *session.epoch != *epoch {
                // Of another epoch: sent away (older), or to be served once delivery
                // follows (newer; its catch-up reads the store meanwhile).
                continue;
            }
            if emit_live(state, &socket, &session, c.notification.id, &raw) {
                delivered += 1;
            }
        }
        state.metrics.deliveries_total.increment(delivered);
    }
    state.metrics.observe_publish_to_emit(c.received.elapsed());
}

/// Emits one live notification to one socket; on a full buffer, marks the socket lagging
/// and starts its recovery. Returns whether the socket took it.
fn emit_live<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    id: u64,
    raw: &serde_json::value::RawValue,
) -> bool {
    if session.authorized().is_err() {
        // Its token has expired: it is being closed, and gets nothing more.
        return false;
    }
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
            state.metrics.lagged_total.increment(1);
            tracing::debug!(sid = %socket.id, id, "socket fell behind; recovering by catch-up");
            catch_up::recover(state, socket, Duration::ZERO);
            false
        }
        Err(_) => false,
    }
}
