//! Keeps this node in the store's epoch while it runs. Every [`CHECK_EVERY`] it re-reads
//! the store's epoch (another node, or `belfry-server epoch --renew`, may have renewed
//! it) and compares the store's head with what this node handed out (a store that lost
//! commits, after a failover to a replica that lagged, gets a new epoch).
//!
//! When the epoch changes, however it was found, the node follows: its delivered head
//! comes down to the store's, and its subscribers let in during an older epoch are
//! disconnected. They reconnect with the old epoch, are told `epoch_changed`, and start
//! over. (One let in just as the epoch changed, and missed here, ends its catch-up with
//! a `synced` that names the new epoch: its client starts over on that.)

use crate::cluster::HubAdapter;
use crate::session;
use crate::state::SharedState;
use belfry_protocol::events;
use std::time::Duration;

/// How often the store's epoch and head are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Checks, and follows changes, until the store closes.
pub async fn run<A: HubAdapter>(state: SharedState<A>) {
    let mut changes = state.store.epoch_changes();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // What this node handed out, read before the store's head.
                let handed_out = state.head.get();
                if let Err(e) = state.store.check_epoch(handed_out).await {
                    tracing::debug!(error = %e, "cannot check the store's epoch; trying again");
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let epoch = changes.borrow_and_update().clone();
                follow(&state, &epoch).await;
            }
        }
    }
}

/// Moves this node to `epoch`: the head to the store's, the subscribers of older epochs
/// out.
async fn follow<A: HubAdapter>(state: &SharedState<A>, epoch: &str) {
    match state.store.head().await {
        Ok(head) => state.head.reset_to(head),
        Err(e) => tracing::warn!(error = %e, "cannot read the store's head after an epoch change"),
    }
    let older = state
        .io
        .of(events::SUBSCRIBER_NAMESPACE)
        .map(|ns| ns.local().sockets())
        .unwrap_or_default()
        .into_iter()
        .filter(|socket| session::of(socket).is_none_or(|s| *s.epoch != *epoch))
        .collect::<Vec<_>>();
    for socket in &older {
        session::disconnect(socket);
    }
    tracing::warn!(
        epoch,
        subscribers = older.len(),
        "the store's epoch changed: this node's subscribers start over"
    );
}
