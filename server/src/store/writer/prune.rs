//! Retention: deletes expired notifications (a chunk at a time), trims targets over
//! their cap and forgets old idempotency keys.

use super::publish::IDEMPOTENCY_WINDOW_MS;
use super::{Effects, Operation};
use crate::store::db::{Conn, Dialect, on};
use crate::store::{StoreError, now_ms};

/// The most notifications one prune operation deletes (so a prune never holds the writer
/// for long; the pruner repeats until less was deleted).
pub const PRUNE_CHUNK: i64 = 5_000;

/// One round of pruning, keeping at most `max_per_target` per target.
#[derive(Debug)]
pub struct Prune {
    /// The most notifications kept per target.
    pub max_per_target: u32,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Notifications deleted because they expired.
    pub expired: u64,
    /// Notifications deleted because their targets were over the cap.
    pub trimmed: u64,
}

impl Operation for Prune {
    type Output = PruneReport;
    const NAME: &'static str = "prune";

    async fn apply(self, conn: &mut Conn<'_>, _: &mut Effects) -> Result<PruneReport, StoreError> {
        Ok(prune(conn, self.max_per_target).await?)
    }
}

/// The advisory lock a PostgreSQL prune holds, so one node prunes at a time (two pruning
/// the same rows would wait on each other, holding up their batches).
const PRUNE_LOCK: i64 = 0x6265_6c66_7279;

async fn prune(conn: &mut Conn<'_>, max_per_target: u32) -> Result<PruneReport, sqlx::Error> {
    if conn.dialect() == Dialect::Postgres {
        let ours: bool = on!(conn, c => {
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(PRUNE_LOCK)
                .fetch_one(c)
                .await?
        });
        if !ours {
            // Another node is pruning; the next round here will find less to do.
            return Ok(PruneReport::default());
        }
    }
    let now = now_ms();
    let expired = on!(conn, c => {
        sqlx::query(
            "DELETE FROM notifications WHERE id IN \
             (SELECT id FROM notifications WHERE expires_at <= $1 LIMIT $2)",
        )
        .bind(now)
        .bind(PRUNE_CHUNK)
        .execute(c)
        .await?
        .rows_affected()
    });
    let over: Vec<(i64, String)> = on!(conn, c => {
        sqlx::query_as(
            "SELECT kind, name FROM notification_targets GROUP BY kind, name HAVING count(*) > $1",
        )
        .bind(i64::from(max_per_target))
        .fetch_all(c)
        .await?
    });
    let mut trimmed_targets = 0;
    for (kind, name) in &over {
        trimmed_targets += on!(conn, c => {
            sqlx::query(
                "DELETE FROM notification_targets WHERE kind = $1 AND name = $2 \
                 AND notification_id < (SELECT notification_id FROM notification_targets \
                    WHERE kind = $1 AND name = $2 ORDER BY notification_id DESC LIMIT 1 OFFSET $3)",
            )
            .bind(kind)
            .bind(name)
            .bind(i64::from(max_per_target) - 1)
            .execute(c)
            .await?
            .rows_affected()
        });
    }
    let mut trimmed = 0;
    if trimmed_targets > 0 {
        // Notifications left with no target at all are unreachable: delete them.
        trimmed = on!(conn, c => {
            sqlx::query(
                "DELETE FROM notifications WHERE NOT EXISTS \
                 (SELECT 1 FROM notification_targets t WHERE t.notification_id = notifications.id)",
            )
            .execute(c)
            .await?
            .rows_affected()
        });
    }
    on!(conn, c => {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= $1")
            .bind(now - IDEMPOTENCY_WINDOW_MS)
            .execute(c)
            .await?;
    });
    Ok(PruneReport { expired, trimmed })
}
