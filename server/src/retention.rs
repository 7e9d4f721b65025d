//! The retention task: deletes expired notifications, trims targets over their cap and
//! forgets old idempotency keys, through the writer like every other write.

use crate::state::SharedState;
use crate::store::writer_limits::PRUNE_CHUNK;
use socketioxide::adapter::Adapter;

pub(crate) async fn run<A: Adapter>(state: SharedState<A>) {
    let retention = state.config.retention;
    let mut tick = tokio::time::interval(retention.prune_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Repeat while a whole chunk was deleted: there may be more.
        loop {
            match state.store.writer().prune(retention.max_per_target).await {
                Ok(report) => {
                    if report.expired > 0 || report.trimmed > 0 {
                        tracing::info!(
                            expired = report.expired,
                            trimmed = report.trimmed,
                            "pruned"
                        );
                    }
                    if report.expired < PRUNE_CHUNK as u64 {
                        break;
                    }
                }
                Err(crate::store::StoreError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "prune failed; retrying at the next tick");
                    break;
                }
            }
        }
    }
}
