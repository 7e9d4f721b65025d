//! Publishing: stores a notification and its targets (or answers a repeated
//! idempotency key with the first publish), and hands the notification to delivery.

use super::{Effects, Operation, json_text};
use crate::store::db::{Conn, Dialect, on};
use crate::store::{Committed, StoreError, now_ms, rows, target_key};
use belfry_protocol::{Notification, ValidPublish};
use std::time::Instant;
use time::OffsetDateTime;

/// How long an idempotency key is remembered, in milliseconds.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Stores a validated publish that lives `ttl_secs`.
#[derive(Debug)]
pub struct Publish {
    /// The publish, validated (and its idempotency key scoped to its publish key).
    pub request: Box<ValidPublish>,
    /// How long it lives.
    pub ttl_secs: u64,
    /// When the hub received it (for the publish-to-emit latency).
    pub received: Instant,
}

/// A publish that committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The notification's id.
    pub id: u64,
    /// When it was stored.
    pub created_at: OffsetDateTime,
    /// Whether this was a repeat of an idempotency key (nothing new was stored).
    pub duplicate: bool,
}

impl Operation for Publish {
    type Output = Published;
    const NAME: &'static str = "publish";
    const TAKES_IDS: bool = true;

    async fn apply(
        self,
        conn: &mut Conn<'_>,
        effects: &mut Effects,
    ) -> Result<Published, StoreError> {
        let (published, notification) = publish(conn, &self.request, self.ttl_secs).await?;
        if let Some(notification) = notification {
            effects.notifications.push(Committed {
                notification,
                targets: self.request.targets,
                received: self.received,
            });
        }
        Ok(published)
    }
}

/// Stores a notification and returns its id. `$1` to `$11`: the columns after `id`.
fn insert_notification(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => {
            "INSERT INTO notifications \
             (event, title, body, priority, tags, url, actions, data, topic, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id"
        }
        // The head row is locked until the commit (see the module's documentation); the
        // savepoint of a failed publish puts it back, so ids stay dense.
        Dialect::Postgres => {
            "WITH head AS (UPDATE notification_head SET id = id + 1 RETURNING id) \
             INSERT INTO notifications \
             (id, event, title, body, priority, tags, url, actions, data, topic, created_at, \
              expires_at) \
             SELECT head.id, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM head RETURNING id"
        }
    }
}

async fn publish(
    conn: &mut Conn<'_>,
    req: &ValidPublish,
    ttl_secs: u64,
) -> Result<(Published, Option<Notification>), sqlx::Error> {
    let now = now_ms();
    if let Some(key) = &req.idempotency_key {
        let seen: Option<(i64, i64)> = on!(conn, c => {
            sqlx::query_as(
                "SELECT notification_id, created_at FROM idempotency_keys \
                 WHERE key = $1 AND created_at > $2",
            )
            .bind(key)
            .bind(now - IDEMPOTENCY_WINDOW_MS)
            .fetch_optional(c)
            .await?
        });
        if let Some((id, created)) = seen {
            let published = Published {
                id: u64::try_from(id).unwrap_or(0),
                created_at: rows::from_ms(created),
                duplicate: true,
            };
            return Ok((published, None));
        }
    }
    let ttl_ms = i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let expires = now.saturating_add(ttl_ms);
    let tags = json_text(&req.tags);
    let actions = json_text(&req.actions);
    let data = json_text(&req.data);
    let insert = insert_notification(conn.dialect());
    let id: i64 = on!(conn, c => {
        sqlx::query_scalar(insert)
            .bind(&req.event)
            .bind(&req.title)
            .bind(&req.body)
            .bind(i64::from(req.priority.level()))
            .bind(&tags)
            .bind(&req.url)
            .bind(&actions)
            .bind(&data)
            .bind(req.topic())
            .bind(now)
            .bind(expires)
            .fetch_one(c)
            .await?
    });
    for target in &req.targets {
        let (kind, name) = target_key(target);
        on!(conn, c => {
            sqlx::query(
                "INSERT INTO notification_targets (kind, name, notification_id) \
                 VALUES ($1, $2, $3)",
            )
            .bind(kind)
            .bind(name)
            .bind(id)
            .execute(c)
            .await?;
        });
    }
    if let Some(key) = &req.idempotency_key {
        on!(conn, c => {
            sqlx::query(
                "INSERT INTO idempotency_keys (key, notification_id, created_at) \
                 VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE \
                 SET notification_id = excluded.notification_id, created_at = excluded.created_at",
            )
            .bind(key)
            .bind(id)
            .bind(now)
            .execute(c)
            .await?;
        });
    }
    let created_at = rows::from_ms(now);
    let notification = Notification {
        id: u64::try_from(id).unwrap_or(0),
        event: req.event.clone(),
        title: req.title.clone(),
        body: req.body.clone(),
        priority: req.priority,
        tags: req.tags.clone(),
        url: req.url.clone(),
        actions: req.actions.clone(),
        data: req.data.clone(),
        topic: req.topic().map(str::to_owned),
        created_at,
        expires_at: rows::from_ms(expires),
        read: false,
    };
    let published = Published {
        id: notification.id,
        created_at,
        duplicate: false,
    };
    Ok((published, Some(notification)))
}
