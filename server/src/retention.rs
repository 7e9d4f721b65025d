//! The retention task: deletes expired notifications, trims targets over their cap and
//! forgets old idempotency keys, through the writer like every other write.

use crate::config::Config;
use crate::store::writer::prune::PRUNE_CHUNK;
use crate::store::{Prune, StoreError, WriterHandle};

pub(crate) async fn run(config: Config, writer: WriterHandle) {
    let mut tick = tokio::time::interval(config.prune_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max_per_target = config.keep_per_target();
    loop {
        tick.tick().await;
        // Repeat while a whole chunk was deleted: there may be more.
        loop {
            match writer.submit(Prune { max_per_target }).await {
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
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "prune failed; retrying at the next tick");
                    break;
                }
            }
        }
    }
}
