//! Publishing: stores a notification and its targets (or answers a repeated
//! idempotency key with the first publish), and hands the notification to delivery.
//!
//! The publishes of a batch are stored together ([`Operation::apply_all`]): one statement
//! inserts all of their notifications (the ids in batch order), one all of their targets,
//! and, when they carry idempotency keys, one looks the keys up and one stores the new
//! ones. Each statement reads its rows from one JSON parameter, so its text never changes
//! and it is prepared once per connection. A publish alone goes the same way, as a batch
//! of one (in a savepoint of its own).

use super::{Effects, Operation, json_text};
use crate::store::db::{Conn, Dialect, on};
use crate::store::{Committed, StoreError, now_ms, rows, target_key};
use belfry_protocol::{Notification, ValidPublish};
use std::collections::HashMap;
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
        let mut published = store_all(&[&self], conn, effects).await?;
        published
            .pop()
            .ok_or_else(|| StoreError::Commit("the publish was not stored".into()))
    }

    fn joins(&self) -> bool {
        true
    }

    async fn apply_all(
        ops: &[&Self],
        conn: &mut Conn<'_>,
        effects: &mut Effects,
    ) -> Result<Vec<Published>, StoreError> {
        store_all(ops, conn, effects).await
    }
}

/// Stores `ops` (one or many) with a few statements for all of them, and pushes what is
/// new into `effects` for delivery.
async fn store_all(
    ops: &[&Publish],
    conn: &mut Conn<'_>,
    effects: &mut Effects,
) -> Result<Vec<Published>, StoreError> {
    let requests: Vec<&ValidPublish> = ops.iter().map(|op| &*op.request).collect();
    let ttls: Vec<u64> = ops.iter().map(|op| op.ttl_secs).collect();
    let (published, notifications) = publish_all(conn, &requests, &ttls).await?;
    for (op, notification) in ops.iter().zip(notifications) {
        if let Some(notification) = notification {
            effects.notifications.push(Committed {
                notification,
                targets: op.request.targets.clone(),
                received: op.received,
            });
        }
    }
    Ok(published)
}

/// When a publish received at `now` (Unix ms) expires.
fn expiry(now: i64, ttl_secs: u64) -> i64 {
    let ttl_ms = i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    now.saturating_add(ttl_ms)
}

/// A publish stored under `id`, as its publisher and its subscribers see it.
fn stored(req: &ValidPublish, id: i64, now: i64, expires: i64) -> (Published, Notification) {
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
    (published, notification)
}

/// One notification's columns after `id`, as the insert of many reads them (a JSON array).
type NotificationRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    i64,
    String,
    Option<&'a str>,
    String,
    String,
    Option<&'a str>,
    i64,
    i64,
);

/// The columns after `id`, read from one element `n.value` of the JSON parameter.
const NOTIFICATION_COLUMNS: &str = "n.value ->> 0, n.value ->> 1, n.value ->> 2, \
     CAST(n.value ->> 3 AS BIGINT), n.value ->> 4, n.value ->> 5, n.value ->> 6, \
     n.value ->> 7, n.value ->> 8, CAST(n.value ->> 9 AS BIGINT), CAST(n.value ->> 10 AS BIGINT)";

/// Stores the notifications in the JSON array `$1` (of [`NotificationRow`]s; on
/// PostgreSQL `$2` says how many) and returns their ids (on SQLite not in order: sorted, they are the rows' order).
fn insert_notifications(dialect: Dialect) -> String {
    match dialect {
        // One writer, AUTOINCREMENT: the rows take ascending ids in the order inserted.
        Dialect::Sqlite => format!(
            "INSERT INTO notifications \
             (event, title, body, priority, tags, url, actions, data, topic, created_at, \
              expires_at) \
             SELECT {NOTIFICATION_COLUMNS} FROM json_each($1) AS n ORDER BY n.key \
             RETURNING id"
        ),
        // The ids are the next $2 of the head, locked until the commit. The array is parsed
        // once, as jsonb (see `Dialect::json_values`).
        Dialect::Postgres => format!(
            "WITH head AS (UPDATE notification_head SET id = id + $2 RETURNING id) \
             INSERT INTO notifications \
             (id, event, title, body, priority, tags, url, actions, data, topic, created_at, \
              expires_at) \
             SELECT head.id - $2 + n.i, {NOTIFICATION_COLUMNS} \
             FROM head, jsonb_array_elements(CAST($1 AS jsonb)) WITH ORDINALITY AS n(value, i) \
             RETURNING id"
        ),
    }
}

/// Stores several publishes with a few statements for all of them; the answers and the
/// new notifications in the publishes' order (`None` for a repeated idempotency key).
async fn publish_all(
    conn: &mut Conn<'_>,
    requests: &[&ValidPublish],
    ttls: &[u64],
) -> Result<(Vec<Published>, Vec<Option<Notification>>), sqlx::Error> {
    let now = now_ms();
    let dialect = conn.dialect();
    // Keys stored earlier, and keys of this batch's own earlier publishes.
    let seen = seen_keys(conn, requests, now).await?;
    enum Outcome {
        Repeat(usize),
        Known(Published),
        New(usize),
    }
    let mut fresh: Vec<usize> = Vec::with_capacity(requests.len());
    let mut first_of_key: HashMap<&str, usize> = HashMap::new();
    let outcomes: Vec<Outcome> = requests
        .iter()
        .enumerate()
        .map(|(i, req)| {
            if let Some(key) = req.idempotency_key.as_deref() {
                if let Some(&first) = first_of_key.get(key) {
                    return Outcome::Repeat(first);
                }
                if let Some(&first) = seen.get(key) {
                    return Outcome::Known(first);
                }
                first_of_key.insert(key, fresh.len());
            }
            fresh.push(i);
            Outcome::New(fresh.len() - 1)
        })
        .collect();
    let expires: Vec<i64> = fresh.iter().map(|&i| expiry(now, ttls[i])).collect();
    let mut ids: Vec<i64> = Vec::new();
    if !fresh.is_empty() {
        let rows: Vec<NotificationRow<'_>> = fresh
            .iter()
            .zip(&expires)
            .map(|(&i, &expires)| {
                let req = requests[i];
                (
                    req.event.as_str(),
                    req.title.as_str(),
                    req.body.as_str(),
                    i64::from(req.priority.level()),
                    json_text(&req.tags),
                    req.url.as_deref(),
                    json_text(&req.actions),
                    json_text(&req.data),
                    req.topic(),
                    now,
                    expires,
                )
            })
            .collect();
        let count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        let insert = insert_notifications(dialect);
        ids = on!(conn, c => {
            let mut query = sqlx::query_scalar(&insert).bind(json_text(&rows));
            if dialect == Dialect::Postgres {
                query = query.bind(count);
            }
            query.fetch_all(c).await?
        });
        if ids.len() != fresh.len() {
            return Err(sqlx::Error::Protocol(format!(
                "stored {} notifications of {}",
                ids.len(),
                fresh.len()
            )));
        }
        ids.sort_unstable();
        let targets: Vec<(i64, &str, i64)> = fresh
            .iter()
            .zip(&ids)
            .flat_map(|(&i, &id)| {
                requests[i].targets.iter().map(move |target| {
                    let (kind, name) = target_key(target);
                    (kind, name, id)
                })
            })
            .collect();
        let insert = format!(
            "INSERT INTO notification_targets (kind, name, notification_id) \
             SELECT CAST(t.value ->> 0 AS BIGINT), t.value ->> 1, CAST(t.value ->> 2 AS BIGINT) \
             FROM {}",
            dialect.json_values("$1", "t")
        );
        on!(conn, c => {
            sqlx::query(&insert).bind(json_text(&targets)).execute(c).await?;
        });
        let keys: Vec<(&str, i64, i64)> = fresh
            .iter()
            .zip(&ids)
            .filter_map(|(&i, &id)| Some((requests[i].idempotency_key.as_deref()?, id, now)))
            .collect();
        if !keys.is_empty() {
            // `WHERE true`: SQLite reads the ON CONFLICT of an INSERT from a SELECT only
            // after a WHERE.
            let insert = format!(
                "INSERT INTO idempotency_keys (key, notification_id, created_at) \
                 SELECT k.value ->> 0, CAST(k.value ->> 1 AS BIGINT), \
                        CAST(k.value ->> 2 AS BIGINT) \
                 FROM {} WHERE true \
                 ON CONFLICT (key) DO UPDATE \
                 SET notification_id = excluded.notification_id, created_at = excluded.created_at",
                dialect.json_values("$1", "k")
            );
            on!(conn, c => {
                sqlx::query(&insert).bind(json_text(&keys)).execute(c).await?;
            });
        }
    }
    let mut published = Vec::with_capacity(requests.len());
    let mut notifications = Vec::with_capacity(requests.len());
    for outcome in outcomes {
        match outcome {
            Outcome::Known(first) => {
                published.push(first);
                notifications.push(None);
            }
            Outcome::Repeat(first) => {
                published.push(Published {
                    duplicate: true,
                    ..stored_answer(ids[first], now)
                });
                notifications.push(None);
            }
            Outcome::New(k) => {
                let (answer, notification) = stored(requests[fresh[k]], ids[k], now, expires[k]);
                published.push(answer);
                notifications.push(Some(notification));
            }
        }
    }
    Ok((published, notifications))
}

/// The answer to a publish stored under `id` at `now`.
fn stored_answer(id: i64, now: i64) -> Published {
    Published {
        id: u64::try_from(id).unwrap_or(0),
        created_at: rows::from_ms(now),
        duplicate: false,
    }
}

/// The idempotency keys of `requests` stored within the window before `now`, with the
/// answers they were first given (as repeats).
async fn seen_keys(
    conn: &mut Conn<'_>,
    requests: &[&ValidPublish],
    now: i64,
) -> Result<HashMap<String, Published>, sqlx::Error> {
    let keys: Vec<&str> = requests
        .iter()
        .filter_map(|req| req.idempotency_key.as_deref())
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let select = format!(
        "SELECT key, notification_id, created_at FROM idempotency_keys \
         WHERE created_at > $2 AND key IN (SELECT k.value FROM {})",
        conn.dialect().json_texts("$1", "k")
    );
    let found: Vec<(String, i64, i64)> = on!(conn, c => {
        sqlx::query_as(&select)
            .bind(json_text(&keys))
            .bind(now - IDEMPOTENCY_WINDOW_MS)
            .fetch_all(c)
            .await?
    });
    Ok(found
        .into_iter()
        .map(|(key, id, created)| {
            let first = Published {
                id: u64::try_from(id).unwrap_or(0),
                created_at: rows::from_ms(created),
                duplicate: true,
            };
            (key, first)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, Viewer};
    use belfry_protocol::PublishRequest;
    use futures_util::future::join_all;

    fn publish(to: &[&str], title: &str, key: Option<&str>) -> Publish {
        let req = PublishRequest {
            to: Some(to.iter().map(|t| (*t).to_owned()).collect()),
            title: Some(title.to_owned()),
            idempotency_key: key.map(str::to_owned),
            ..PublishRequest::default()
        };
        Publish {
            request: Box::new(req.validate().expect("valid publish")),
            ttl_secs: 3_600,
            received: Instant::now(),
        }
    }

    /// The titles `user` sees, in id order.
    async fn titles(store: &Store, user: &str) -> Vec<String> {
        let viewer = Viewer {
            user: user.to_owned(),
            topics: Vec::new(),
        };
        let page = store.page(&viewer, 0, 500).await.expect("page");
        page.notifications.into_iter().map(|n| n.title).collect()
    }

    /// Everything submitted before the writer runs (a current-thread runtime) is one batch,
    /// so these publishes are one unit: stored with one insert each for notifications,
    /// targets and keys.
    async fn submit_together(store: &Store, ops: Vec<Publish>) -> Vec<Result<Published, String>> {
        let writer = store.writer();
        // Unconstrained: tokio's cooperative budget would otherwise make the sends yield
        // after 128, and the writer would take the rest as another batch.
        tokio::task::unconstrained(join_all(ops.into_iter().map(|op| writer.submit(op))))
            .await
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn publishes_stored_together_keep_their_order_targets_and_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _feed) = Store::open(dir.path(), None).await.expect("store");
        let earlier = submit_together(&store, vec![publish(&["user:ann"], "old", Some("k0"))])
            .await
            .remove(0)
            .expect("stored");
        let batches = store.writer().batches();
        let answers = submit_together(
            &store,
            vec![
                publish(&["user:ann"], "a1", Some("k1")),
                publish(&["user:bob", "user:ann"], "both", None),
                publish(&["user:ann"], "a1 again", Some("k1")),
                publish(&["user:bob"], "b1", None),
                publish(&["user:ann"], "old again", Some("k0")),
                publish(&["user:ann"], "a2", Some("k2")),
            ],
        )
        .await;
        assert_eq!(store.writer().batches(), batches + 1, "one batch");
        assert_eq!(store.writer().joined(), 6, "stored together");
        let answers: Vec<Published> = answers.into_iter().map(|a| a.expect("ok")).collect();
        let ids: Vec<u64> = answers.iter().map(|a| a.id).collect();
        let first = earlier.id + 1;
        // New ones take the next ids in batch order; repeats answer with the first.
        assert_eq!(
            ids,
            [first, first + 1, first, first + 2, earlier.id, first + 3]
        );
        let duplicates: Vec<bool> = answers.iter().map(|a| a.duplicate).collect();
        assert_eq!(duplicates, [false, false, true, false, true, false]);
        assert_eq!(answers[4].created_at, earlier.created_at);
        assert_eq!(titles(&store, "ann").await, ["old", "a1", "both", "a2"]);
        assert_eq!(titles(&store, "bob").await, ["both", "b1"]);
        // The keys stored together are kept: repeated later, alone, they find the first.
        let again = submit_together(&store, vec![publish(&["user:ann"], "x", Some("k2"))])
            .await
            .remove(0)
            .expect("stored");
        assert_eq!((again.id, again.duplicate), (first + 3, true));
        assert_eq!(store.head().await.expect("head"), first + 3);
    }

    /// Makes every publish titled "poison" fail, whichever way it is inserted: alone or
    /// with others.
    async fn poison(store: &Store) {
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON notifications WHEN NEW.title = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
        )
        .execute(store.sqlite_pool())
        .await
        .expect("trigger");
    }

    #[tokio::test]
    async fn a_publish_that_fails_in_a_unit_fails_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _feed) = Store::open(dir.path(), None).await.expect("store");
        poison(&store).await;
        let answers = submit_together(
            &store,
            vec![
                publish(&["user:cy"], "before", Some("k1")),
                publish(&["user:cy"], "poison", Some("k2")),
                publish(&["user:cy"], "after", None),
            ],
        )
        .await;
        assert!(
            answers[1].as_ref().is_err_and(|e| e.contains("poisoned")),
            "{answers:?}"
        );
        let ids: Vec<u64> = [&answers[0], &answers[2]]
            .iter()
            .map(|a| a.as_ref().expect("stored").id)
            .collect();
        assert_eq!(ids, [1, 2], "ids stay dense");
        assert_eq!(titles(&store, "cy").await, ["before", "after"]);
        // The failed publish's key was not kept: a retry is stored.
        sqlx::query("DROP TRIGGER poison")
            .execute(store.sqlite_pool())
            .await
            .expect("drop trigger");
        let retry = submit_together(&store, vec![publish(&["user:cy"], "fixed", Some("k2"))])
            .await
            .remove(0)
            .expect("stored");
        assert_eq!((retry.id, retry.duplicate), (3, false));
    }

    #[tokio::test]
    async fn a_unit_too_large_to_fall_apart_in_its_transaction_goes_to_the_next() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _feed) = Store::open(dir.path(), None).await.expect("store");
        poison(&store).await;
        let batches = store.writer().batches();
        // One unit of a whole batch: apart, its operations need more savepoints than one
        // transaction may hold, so they are applied one by one in the next.
        let ops = (0..super::super::MAX_BATCH)
            .map(|i| {
                let title = if i == 100 {
                    "poison".to_owned()
                } else {
                    format!("n{i}")
                };
                publish(&["user:dee"], &title, None)
            })
            .collect();
        let answers = submit_together(&store, ops).await;
        assert!(answers[100].is_err());
        // (join_all over this many futures does not submit them in order: the ids follow
        // the queue's order, which the smaller tests check.)
        let mut ids: Vec<u64> = answers
            .iter()
            .filter_map(|a| a.as_ref().ok().map(|p| p.id))
            .collect();
        ids.sort_unstable();
        let expected: Vec<u64> = (1..super::super::MAX_BATCH as u64).collect();
        assert_eq!(ids, expected, "every other one stored, ids dense");
        assert_eq!(store.writer().batches(), batches + 2);
        assert_eq!(store.writer().joined(), 0);
        assert_eq!(store.head().await.expect("head"), expected.len() as u64);
    }

    /// A publish carrying every field, as stored alone and as stored with others.
    fn rich(title: &str) -> Publish {
        let req = PublishRequest {
            to: Some(vec!["user:eve".to_owned(), "topic:builds".to_owned()]),
            title: Some(title.to_owned()),
            event: Some("build".to_owned()),
            body: Some("line one\nline \"two\"".to_owned()),
            priority: Some(belfry_protocol::Priority::High),
            tags: Some(vec!["ci".to_owned(), "ünïcode".to_owned()]),
            url: Some("https://example.com/b/1".to_owned()),
            actions: Some(vec![belfry_protocol::Action {
                label: "Open".to_owned(),
                url: "https://example.com/b/1/log".to_owned(),
            }]),
            data: Some(serde_json::json!({"z": 1, "a": [1.5, null, "x"], "nested": {"k": true}})),
            ttl: Some(600),
            idempotency_key: None,
        };
        Publish {
            request: Box::new(req.validate().expect("valid publish")),
            ttl_secs: 600,
            received: Instant::now(),
        }
    }

    #[tokio::test]
    async fn a_publish_stored_with_others_reads_back_as_one_stored_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _feed) = Store::open(dir.path(), None).await.expect("store");
        submit_together(&store, vec![rich("same")]).await;
        submit_together(
            &store,
            vec![rich("same"), publish(&["user:eve"], "other", None)],
        )
        .await;
        assert_eq!(store.writer().joined(), 2);
        let viewer = Viewer {
            user: "eve".to_owned(),
            topics: Vec::new(),
        };
        let page = store.page(&viewer, 0, 10).await.expect("page");
        let [alone, joined, _] = &page.notifications[..] else {
            panic!("{:?}", page.notifications);
        };
        assert_eq!((alone.id, joined.id), (1, 2));
        let strip = |n: &Notification| {
            let mut v = serde_json::to_value(n).expect("json");
            for key in ["id", "created_at", "expires_at"] {
                v.as_object_mut().expect("object").remove(key);
            }
            v
        };
        assert_eq!(strip(alone), strip(joined));
        assert_eq!(joined.topic.as_deref(), Some("builds"));
        assert_eq!(
            joined.expires_at - joined.created_at,
            time::Duration::seconds(600)
        );
    }
}
