//! Read marks: a user's notifications marked read, by id or up to an id.

use super::{Effects, Operation, id_param};
use crate::store::db::{Conn, on};
use crate::store::{StoreError, Viewer, head_id, now_ms, visible_ids};

/// Which notifications a read marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadSelection {
    /// These ids (those not visible to the user are ignored).
    Ids(Vec<u64>),
    /// Every visible notification up to and including this id.
    UpTo(u64),
}

/// Marks notifications read for a viewer; answers how many changed.
#[derive(Debug)]
pub struct Read {
    /// Who reads, and what they may see.
    pub viewer: Viewer,
    /// What.
    pub selection: ReadSelection,
}

impl Operation for Read {
    type Output = u64;
    const NAME: &'static str = "read";

    async fn apply(self, conn: &mut Conn<'_>, _: &mut Effects) -> Result<u64, StoreError> {
        Ok(read(conn, &self.viewer, &self.selection).await?)
    }
}

async fn read(
    conn: &mut Conn<'_>,
    viewer: &Viewer,
    selection: &ReadSelection,
) -> Result<u64, sqlx::Error> {
    let dialect = conn.dialect();
    let upsert = "ON CONFLICT (user_id, notification_id) DO UPDATE \
         SET read_at = excluded.read_at, \
             delivered_at = coalesce(user_state.delivered_at, excluded.delivered_at) \
         WHERE user_state.read_at IS NULL";
    let now = now_ms();
    let result = match selection {
        ReadSelection::UpTo(up_to) => {
            let up_to = id_param(*up_to).min(head_id(conn).await?);
            let from: i64 = on!(conn, c => {
                sqlx::query_scalar(
                    "SELECT coalesce((SELECT read_scanned_up_to FROM users WHERE user_id = $1), 0)",
                )
                .bind(&viewer.user)
                .fetch_one(c)
                .await?
            });
            if up_to <= from {
                return Ok(0);
            }
            let sql = format!(
                "INSERT INTO user_state (user_id, notification_id, delivered_at, read_at) \
                 SELECT $1, id, $5, $5 FROM ({visible}) AS visible WHERE true {order} {upsert}",
                visible = visible_ids(dialect),
                order = dialect.lock_order("id")
            );
            on!(conn, c => {
                sqlx::query(
                    "INSERT INTO users (user_id, read_scanned_up_to) VALUES ($1, $2) \
                     ON CONFLICT (user_id) DO UPDATE SET read_scanned_up_to = CASE \
                       WHEN excluded.read_scanned_up_to > users.read_scanned_up_to \
                       THEN excluded.read_scanned_up_to ELSE users.read_scanned_up_to END",
                )
                .bind(&viewer.user)
                .bind(up_to)
                .execute(&mut *c)
                .await?;
                sqlx::query(&sql)
                    .bind(&viewer.user)
                    .bind(viewer.topics_json())
                    .bind(from)
                    .bind(up_to)
                    .bind(now)
                    .execute(c)
                    .await?
                    .rows_affected()
            })
        }
        ReadSelection::Ids(ids) => {
            let sql = format!(
                "INSERT INTO user_state (user_id, notification_id, delivered_at, read_at) \
                 SELECT $1, CAST(j.value AS BIGINT), $3, $3 FROM {ids} \
                 WHERE EXISTS (SELECT 1 FROM notification_targets t \
                    WHERE t.notification_id = CAST(j.value AS BIGINT) AND ( \
                        (t.kind = 0 AND t.name = $1) OR t.kind = 2 \
                        OR (t.kind = 1 AND t.name IN (SELECT value FROM {topics})))) \
                 {order} {upsert}",
                order = dialect.lock_order("2"),
                ids = dialect.json_texts("$4", "j"),
                topics = dialect.json_texts("$2", "topic"),
            );
            // Each id once (PostgreSQL refuses an upsert that touches a row twice), and
            // none past what an id can be.
            let ids: std::collections::BTreeSet<u64> = ids
                .iter()
                .copied()
                .filter(|&id| i64::try_from(id).is_ok())
                .collect();
            let ids_json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
            on!(conn, c => {
                sqlx::query(&sql)
                    .bind(&viewer.user)
                    .bind(viewer.topics_json())
                    .bind(now)
                    .bind(ids_json)
                    .execute(c)
                    .await?
                    .rows_affected()
            })
        }
    };
    Ok(result)
}
