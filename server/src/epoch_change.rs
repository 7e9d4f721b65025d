//! What a node does when its store's epoch changes (another node or `belfry-server epoch
//! --renew` renewed it, or the store lost commits: see `store/feed.rs`, which finds the
//! change and hands it to delivery in its place among the commits).
//!
//! The node follows: its delivered head comes down to the head the epoch was taken up at,
//! if it is above it (so the up-to-date shortcut of a catch-up cannot pass over the ids
//! a store that lost commits issues again), and
//! its subscribers let in during an older epoch are disconnected. They reconnect with the
//! old epoch, are told `epoch_changed`, and start over. (One let in just as the epoch
//! changed, and missed here, ends its catch-up with a `synced` that names the new epoch:
//! its client starts over on that.) Until they are gone, they are served nothing: their
//! events are refused (`subscriber.rs`), and they have left their rooms.

use crate::session;
use crate::state::SharedState;
use crate::store::epoch::Epoch;
use belfry_protocol::events;
use socketioxide::adapter::Adapter;

/// Moves this node to `epoch`: the head down, the subscribers of older epochs out. Runs
/// on the delivery task, between the last notification of the old epoch and the first of
/// the new one.
pub fn follow<A: Adapter>(state: &SharedState<A>, epoch: &Epoch) {
    state.head.enter(epoch.id.clone(), epoch.since);
    // The store may be in a newer epoch still (found while this change was on its way):
    // sockets let in under that one stay.
    let sockets = state
        .io
        .of(events::SUBSCRIBER_NAMESPACE)
        .map(|ns| ns.local().sockets())
        .unwrap_or_default();
    // Read after the sockets are listed: any let in before it is in that epoch or older.
    let now = state.store.epoch();
    let older = sockets
        .into_iter()
        .filter(|socket| {
            session::of(socket).is_none_or(|s| *s.epoch != *epoch.id && *s.epoch != *now)
        })
        .collect::<Vec<_>>();
    for socket in &older {
        if session::of(socket).is_none_or(|s| s.send_away()) {
            session::disconnect(socket);
        }
    }
    tracing::warn!(
        epoch = %epoch.id,
        head = epoch.since,
        subscribers = older.len(),
        "the store's epoch changed: this node's subscribers start over"
    );
}
