//! The durable store: SQLite in WAL mode (the embedded default) or PostgreSQL (shared by
//! several hub nodes), through sqlx.
//!
//! Reads go through a small connection pool and never block writes. Every write goes
//! through one [`writer`] task per hub that commits whole batches of operations in one
//! transaction (group commit). The store hands out one [`Feed`] of what was committed:
//! every notification in id order, and every subscription change in commit order, from
//! this node's writer and, with PostgreSQL, from every other node's ([`feed`]).

mod commits;
mod db;
pub mod epoch;
pub mod feed;
mod rows;
pub mod writer;

pub use commits::{Committed, Effects, RoomChange};
pub use db::{Dialect, is_postgres};
pub use feed::{Fed, Feed, RoomEvent};
pub use writer::WriterHandle;
pub use writer::acks::{AckPoint, Acks};
pub use writer::prune::{Prune, PruneReport};
pub use writer::publish::{Publish, Published};
pub use writer::read::{Read, ReadSelection};
pub use writer::subscriptions::{Subscribe, Unsubscribe};

use belfry_protocol::{Notification, Target, TopicPatterns};
use db::{Conn, Pool, on};
use rows::StoreRow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The migrations could not be applied.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The transaction holding this operation could not be committed; nothing was stored.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The writer task has stopped (the hub is shutting down).
    #[error("the store is shutting down")]
    Closed,
    /// The user already has the maximum number of subscriptions.
    #[error("at most {0} subscriptions per user")]
    TooManySubscriptions(u32),
}

/// The most rows one catch-up batch or API page carries.
pub const MAX_PAGE: u32 = 500;
/// How many unread notifications a first connection (null cursor) receives.
pub const UNREAD_ON_FIRST_CONNECT: u32 = 200;

/// Who is looking: a user and the topics whose notifications they may see (their
/// subscriptions that their token allows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The user id.
    pub user: String,
    /// Subscribed and allowed topics.
    pub topics: Vec<String>,
}

impl Viewer {
    fn topics_json(&self) -> String {
        serde_json::to_string(&self.topics).unwrap_or_else(|_| "[]".into())
    }
}

/// Ids visible to a viewer between two bounds. Parameters: $1 user, $2 topics (JSON array),
/// $3 lower bound (exclusive), $4 upper bound (inclusive). Each arm is a range scan of the
/// targets' primary key.
pub(crate) fn visible_ids(dialect: Dialect) -> String {
    let topics = dialect.json_texts("$2", "topic");
    format!(
        "SELECT notification_id AS id FROM notification_targets \
            WHERE kind = 0 AND name = $1 AND notification_id > $3 AND notification_id <= $4 \
         UNION SELECT notification_id FROM notification_targets \
            WHERE kind = 2 AND name = '' AND notification_id > $3 AND notification_id <= $4 \
         UNION SELECT notification_id FROM notification_targets \
            WHERE kind = 1 AND name IN (SELECT value FROM {topics}) \
            AND notification_id > $3 AND notification_id <= $4"
    )
}

/// The highest id ever assigned and committed (0 when none).
pub(crate) async fn head_id(conn: &mut Conn<'_>) -> Result<i64, sqlx::Error> {
    let sql = conn.dialect().head();
    on!(conn, c => sqlx::query_scalar(sql).fetch_one(c).await)
}

/// One page of notifications and whether the store holds more after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Ascending by id, each with the viewer's read state.
    pub notifications: Vec<Notification>,
    /// The highest id this page covered (visible or expired): the cursor for the next page.
    pub last_id: Option<u64>,
    /// Whether more ids follow.
    pub more: bool,
    /// The store's head when the page was read: every id committed up to it is in this
    /// page, an earlier one or a later one.
    pub head: u64,
}

/// A receipt row: the user and their delivered / read times.
pub type ReceiptRow = (String, Option<OffsetDateTime>, Option<OffsetDateTime>);

/// The read side of the store, plus the handle to its writer.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// Connections for the feed (see [`feed`]).
    feed: Pool,
    writer: WriterHandle,
    /// The writer and feed tasks, until [`Store::close`] waits for them.
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// The store's epoch (see [`epoch`]).
    epoch: epoch::Current,
}

pub(crate) fn now_ms() -> i64 {
    rows::to_ms(OffsetDateTime::now_utc())
}

fn clamp_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens the store: the database at `url` when one is given (`sqlite://...` or
    /// `postgres://...`), else `belfry.db` in `data_dir` (created if needed). Applies
    /// migrations, starts the writer and the feed, and returns the feed of what is
    /// committed from now on.
    pub async fn open(data_dir: &Path, url: Option<&str>) -> Result<(Store, Feed), StoreError> {
        let (pool, feed_pool, conn) = db::open(data_dir, url).await?;
        let (head, epoch) = {
            let mut c = pool.acquire().await?;
            let mut conn = c.conn();
            let head = u64::try_from(head_id(&mut conn).await?).unwrap_or(0);
            (head, epoch::establish(&mut conn, data_dir, head).await?)
        };
        let epoch = epoch::current_as(&epoch, head);
        let (writer, handle) = writer::Writer::new(conn, epoch::Mark::new(data_dir, epoch.clone()));
        let store = Store {
            pool,
            feed: feed_pool,
            writer: handle,
            tasks: Arc::new(Mutex::new(Vec::new())),
            epoch,
        };
        let (committed, own) = tokio::sync::mpsc::channel(64);
        let (feed, task) = feed::start(&store, own, head).await?;
        let writer = tokio::spawn(writer.run(committed));
        store.tasks().extend([writer, task]);
        Ok((store, feed))
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store's epoch: ids only compare within one.
    pub fn epoch(&self) -> Arc<str> {
        self.epoch.borrow().id.clone()
    }

    /// Changes of the store's epoch, as a check or a renewal finds them (the store's feed
    /// follows them, see [`feed`]).
    pub fn epoch_changes(&self) -> tokio::sync::watch::Receiver<epoch::Epoch> {
        self.epoch.subscribe()
    }

    /// Gives the store a new epoch by hand (after restoring a backup where the hub cannot
    /// notice it); returns it. Hubs running on the store follow within seconds.
    pub async fn renew_epoch(&self) -> Result<Arc<str>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let mut conn = c.conn();
        let head = u64::try_from(head_id(&mut conn).await?).unwrap_or(0);
        let old = self.epoch();
        let renewed = epoch::renew(&mut conn, &old).await?;
        Ok(self.adopt(renewed, head, &old))
    }

    /// Re-reads the store's epoch: follows the one another node or a renewal gave the
    /// store. Returns the epoch afterwards.
    pub async fn refresh_epoch(&self) -> Result<Arc<str>, StoreError> {
        self.check_epoch(&self.epoch(), None).await
    }

    /// Re-reads the store's epoch for a node that has handed out ids up to `handed_out`
    /// (when given) in the epoch `in_epoch`: follows the epoch another node or a renewal
    /// gave the store, or makes a new one when the store's head is below `handed_out` (it
    /// lost commits: a failover to a replica that lagged, a restore under a running hub).
    /// Nothing is compared when the node has moved on from `in_epoch` already (its
    /// `handed_out` counts ids of an older epoch). Returns the epoch afterwards.
    pub(crate) async fn check_epoch(
        &self,
        in_epoch: &str,
        handed_out: Option<u64>,
    ) -> Result<Arc<str>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let mut conn = c.conn();
        // Read before the epoch: whatever commits after the epoch changed is above it.
        let head = u64::try_from(head_id(&mut conn).await?).unwrap_or(0);
        let stored = epoch::stored(&mut conn).await?;
        let known = self.epoch();
        if *known != *in_epoch {
            return Ok(known);
        }
        if *stored != *known {
            tracing::warn!(from = %known, to = %stored, "the store is in another epoch now; following it");
            return Ok(self.adopt(stored, head, &known));
        }
        match handed_out {
            Some(handed_out) if head < handed_out => {
                let renewed = epoch::renew(&mut conn, &known).await?;
                tracing::warn!(
                    head,
                    handed_out,
                    epoch = %renewed,
                    "the store's head is below what this hub handed out (a failover to a \
                     replica that lagged?): it starts a new epoch, and every client starts over"
                );
                Ok(self.adopt(renewed, head, &known))
            }
            _ => Ok(known),
        }
    }

    /// Makes `epoch` the current one in place of `from`, taken up at the store's head
    /// `since` (telling [`Store::epoch_changes`] if it is new). If the store moved on from
    /// `from` meanwhile (another check adopted a newer one), it stays where it is.
    /// Returns the epoch afterwards.
    fn adopt(&self, epoch: String, since: u64, from: &str) -> Arc<str> {
        let epoch: Arc<str> = epoch.into();
        self.epoch.send_if_modified(|current| {
            if *current.id == *epoch || *current.id != *from {
                return false;
            }
            *current = epoch::Epoch {
                id: epoch.clone(),
                since,
            };
            true
        });
        self.epoch()
    }

    /// Which database the store runs on.
    pub fn dialect(&self) -> Dialect {
        self.pool.dialect()
    }

    /// The handle that submits writes.
    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        let ping = async {
            let mut c = self.pool.acquire().await?;
            c.conn().exec("SELECT 1").await
        };
        // A read may wait long for a connection; a health check answers in time.
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(3), ping).await,
            Ok(Ok(()))
        )
    }

    /// Finishes the writes queued, stops the writer and the feed, and closes the pools.
    pub async fn close(&self) {
        self.writer.close().await;
        let tasks = std::mem::take(&mut *self.tasks());
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a store task failed");
            }
        }
        self.pool.close().await;
        if let Pool::Postgres(feed) = &self.feed {
            feed.close().await;
        }
    }

    /// The highest id ever assigned (0 when none).
    pub async fn head(&self) -> Result<u64, StoreError> {
        let mut c = self.pool.acquire().await?;
        let head = head_id(&mut c.conn()).await?;
        Ok(u64::try_from(head).unwrap_or(0))
    }

    /// The viewer for a user whose token allows `allowed`: their stored subscriptions
    /// that the token allows.
    pub async fn viewer(&self, user: &str, allowed: &TopicPatterns) -> Result<Viewer, StoreError> {
        let topics = self
            .subscriptions(user)
            .await?
            .into_iter()
            .filter(|t| allowed.allows(t))
            .collect();
        Ok(Viewer {
            user: user.to_owned(),
            topics,
        })
    }

    /// A user's subscribed topics, sorted.
    pub async fn subscriptions(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let topics = on!(&mut c.conn(), c => {
            sqlx::query_scalar("SELECT topic FROM subscriptions WHERE user_id = $1 ORDER BY topic")
                .bind(user)
                .fetch_all(c)
                .await?
        });
        Ok(topics)
    }

    /// Notifications visible to `viewer` with id > `after`, ascending, at most `limit`,
    /// and the store's head in the same snapshot.
    ///
    /// One statement, so one snapshot and one round trip: an indexed range scan per
    /// target the viewer sees (their user, `all`, each topic), each stopping after
    /// `limit + 1` ids, merged by the database; a page costs O(limit x targets), not
    /// O(everything after the cursor). The id past the page says whether more follow
    /// (if the merged ids go past `limit`, the first `limit + 1` of them are among the
    /// first `limit + 1` of their arms). The head is read in the same snapshot:
    /// everything committed up to it is in this page or a later one.
    pub async fn page(&self, viewer: &Viewer, after: u64, limit: u32) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let targets: Vec<(i64, &str)> = viewer_targets(viewer).collect();
        let (after, read) = (clamp_id(after), i64::from(limit) + 1);
        // Each statement's page is parsed once its connection is back in the pool.
        let (head, texts) = if targets.len() <= MAX_ARMS {
            let mut c = self.pool.acquire().await?;
            let (head, text) =
                page_text(&mut c.conn(), &viewer.user, &targets, after, read).await?;
            (head, vec![text])
        } else {
            // More targets than one statement may hold: a statement per share of them,
            // in one read transaction (one snapshot), merged here.
            let mut tx = self.pool.begin_read().await?;
            let mut head = 0;
            let mut texts = Vec::new();
            for share in targets.chunks(MAX_ARMS) {
                let (at, text) =
                    page_text(&mut tx.conn(), &viewer.user, share, after, read).await?;
                head = at;
                texts.push(text);
            }
            tx.commit().await?;
            (head, texts)
        };
        let mut rows = Vec::new();
        for text in texts.iter().flatten() {
            rows.extend(unpack(text)?);
        }
        // One statement's ids are distinct (UNION) and nearly always come sorted already;
        // several statements' need both.
        rows.sort_by_key(|r| r.covered);
        rows.dedup_by_key(|r| r.covered);
        let mut page = Page {
            notifications: Vec::with_capacity(rows.len().min(limit as usize)),
            last_id: None,
            more: rows.len() > limit as usize,
            head: u64::try_from(head).unwrap_or(0),
        };
        for row in rows.into_iter().take(limit as usize) {
            page.last_id = u64::try_from(row.covered).ok();
            page.notifications.extend(row.notification);
        }
        Ok(page)
    }

    /// The viewer's newest unread notifications (at most `limit`), ascending: per target,
    /// a newest-first scan that stops after `limit` unread, merged here.
    pub async fn unread(
        &self,
        viewer: &Viewer,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut tx = self.pool.begin_read().await?;
        let mut conn = tx.conn();
        let now = now_ms();
        let mut merged = std::collections::BTreeSet::new();
        for (kind, name) in viewer_targets(viewer) {
            let ids: Vec<i64> = on!(&mut conn, c => {
                sqlx::query_scalar(
                    "SELECT t.notification_id FROM notification_targets t \
                     JOIN notifications n ON n.id = t.notification_id \
                     LEFT JOIN user_state s ON s.user_id = $1 \
                        AND s.notification_id = t.notification_id \
                     WHERE t.kind = $2 AND t.name = $3 AND s.read_at IS NULL AND n.expires_at > $4 \
                     ORDER BY t.notification_id DESC LIMIT $5",
                )
                .bind(&viewer.user)
                .bind(kind)
                .bind(name)
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(c)
                .await?
            });
            merged.extend(ids);
        }
        let newest: Vec<i64> = merged
            .into_iter()
            .rev()
            .take(limit as usize)
            .rev()
            .collect();
        let out = Self::fetch_for(&mut conn, &viewer.user, &newest).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Full rows for `ids` (ascending), without expired ones, with `user`'s read state.
    async fn fetch_for(
        conn: &mut Conn<'_>,
        user: &str,
        ids: &[i64],
    ) -> Result<Vec<Notification>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {cols}, s.read_at FROM {ids} \
             JOIN notifications n ON n.id = CAST(j.value AS BIGINT) \
             LEFT JOIN user_state s ON s.user_id = $2 AND s.notification_id = n.id \
             WHERE n.expires_at > $3 ORDER BY n.id",
            cols = rows::COLUMNS,
            ids = conn.dialect().json_texts("$1", "j"),
        );
        let ids_json = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        let notifications = on!(conn, c => {
            sqlx::query(&sql)
                .bind(ids_json)
                .bind(user)
                .bind(now_ms())
                .fetch_all(c)
                .await?
                .iter()
                .map(rows::notification)
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(notifications)
    }

    /// Whether a notification exists (and has not expired).
    pub async fn exists(&self, id: u64) -> Result<bool, StoreError> {
        let mut c = self.pool.acquire().await?;
        let found: Option<i64> = on!(&mut c.conn(), c => {
            sqlx::query_scalar("SELECT id FROM notifications WHERE id = $1 AND expires_at > $2")
                .bind(clamp_id(id))
                .bind(now_ms())
                .fetch_optional(c)
                .await?
        });
        Ok(found.is_some())
    }

    /// Per-user delivery and read times of a notification: every user it named, and every
    /// other user who acknowledged or read it. `None` when the notification does not exist.
    pub async fn receipts(&self, id: u64) -> Result<Option<Vec<ReceiptRow>>, StoreError> {
        if !self.exists(id).await? {
            return Ok(None);
        }
        let mut c = self.pool.acquire().await?;
        let rows: Vec<(String, Option<i64>, Option<i64>)> = on!(&mut c.conn(), c => {
            sqlx::query(
                "SELECT t.name AS user_id, s.delivered_at, s.read_at FROM notification_targets t \
                   LEFT JOIN user_state s \
                     ON s.user_id = t.name AND s.notification_id = t.notification_id \
                   WHERE t.notification_id = $1 AND t.kind = 0 \
                 UNION \
                 SELECT s.user_id, s.delivered_at, s.read_at FROM user_state s \
                   WHERE s.notification_id = $1 \
                 ORDER BY user_id",
            )
            .bind(clamp_id(id))
            .fetch_all(c)
            .await?
            .iter()
            .map(|r| Ok((r.text("user_id")?, r.opt_int("delivered_at")?, r.opt_int("read_at")?)))
            .collect::<Result<_, sqlx::Error>>()?
        });
        let mut out: Vec<ReceiptRow> = Vec::with_capacity(rows.len());
        for (user, delivered, read) in rows {
            // A named user who also has a state row appears twice in the union (once with
            // nulls only if the left join found nothing, which it did not): keep one.
            if out.last().is_some_and(|(u, _, _)| *u == user) {
                continue;
            }
            out.push((user, delivered.map(rows::from_ms), read.map(rows::from_ms)));
        }
        Ok(Some(out))
    }

    /// The ids `user` marked read at or after `since` (Unix ms), ascending, at most
    /// `limit` (the newest kept).
    pub async fn read_since(
        &self,
        user: &str,
        since: i64,
        limit: u32,
    ) -> Result<Vec<u64>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let mut ids: Vec<i64> = on!(&mut c.conn(), c => {
            sqlx::query_scalar(
                "SELECT notification_id FROM user_state WHERE user_id = $1 AND read_at >= $2 \
                 ORDER BY notification_id DESC LIMIT $3",
            )
            .bind(user)
            .bind(since)
            .bind(i64::from(limit))
            .fetch_all(c)
            .await?
        });
        ids.reverse();
        Ok(ids.into_iter().map(|id| id as u64).collect())
    }

    /// Committed notifications with id > `after`, ascending, at most `limit`, with their
    /// targets: what [`feed`] hands to delivery. One statement, so one snapshot.
    async fn committed_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(Notification, Vec<Target>)>, StoreError> {
        let mut c = self.feed.acquire().await?;
        let mut conn = c.conn();
        let targets = match conn.dialect() {
            Dialect::Sqlite => {
                "(SELECT json_group_array(json_array(t.kind, t.name)) FROM notification_targets t \
                  WHERE t.notification_id = n.id)"
            }
            Dialect::Postgres => {
                "(SELECT CAST(json_agg(json_build_array(t.kind, t.name)) AS text) \
                  FROM notification_targets t WHERE t.notification_id = n.id)"
            }
        };
        let sql = format!(
            "SELECT {cols}, {targets} AS targets FROM notifications n \
             WHERE n.id > $1 ORDER BY n.id LIMIT $2",
            cols = rows::COLUMNS
        );
        let out = on!(&mut conn, c => {
            sqlx::query(&sql)
                .bind(clamp_id(after))
                .bind(i64::from(limit))
                .fetch_all(c)
                .await?
                .iter()
                .map(|r| {
                    let keys: Vec<(i64, String)> = r
                        .opt_text("targets")?
                        .map(|t: String| serde_json::from_str(&t))
                        .transpose()
                        .map_err(|e| sqlx::Error::ColumnDecode {
                            index: "targets".into(),
                            source: Box::new(e),
                        })?
                        .unwrap_or_default();
                    let targets = keys.into_iter().filter_map(|(k, n)| target_of(k, n)).collect();
                    Ok((rows::notification(r)?, targets))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(out)
    }

    #[cfg(test)]
    fn sqlite_pool(&self) -> &sqlx::SqlitePool {
        match &self.pool {
            Pool::Sqlite(p) => p,
            Pool::Postgres(_) => panic!("not an SQLite store"),
        }
    }
}

/// The most targets one page statement reads (SQLite allows 500 terms in a compound
/// SELECT): a viewer with more subscribed topics is read in several, in one snapshot.
const MAX_ARMS: usize = 200;

/// The head and the page of [`page_sql`] for `targets` (ids after `after`, `read` per
/// target and in all), as the database wrote it; `None` for no ids on PostgreSQL.
async fn page_text(
    conn: &mut Conn<'_>,
    user: &str,
    targets: &[(i64, &str)],
    after: i64,
    read: i64,
) -> Result<(i64, Option<String>), StoreError> {
    let sql = page_sql(conn.dialect(), targets.len());
    let page = on!(conn, c => {
        let mut query = sqlx::query(&sql)
            .bind(user)
            .bind(after)
            .bind(read)
            .bind(now_ms());
        for &(kind, name) in targets {
            query = query.bind(kind).bind(name);
        }
        let row = query.fetch_one(c).await?;
        (row.int("head")?, row.opt_text("page")?)
    });
    Ok(page)
}

/// The ids covered in a page of [`page_sql`], with their notifications.
fn unpack(text: &str) -> Result<Vec<PageRow>, StoreError> {
    let entries: Vec<(i64, rows::Packed)> =
        serde_json::from_str(text).map_err(|e| sqlx::Error::ColumnDecode {
            index: "page".to_owned(),
            source: Box::new(e),
        })?;
    let mut rows = Vec::with_capacity(entries.len());
    for (covered, packed) in entries {
        rows.push(PageRow {
            covered,
            notification: packed.into_notification()?,
        });
    }
    Ok(rows)
}

/// The statement of [`Store::page`] for a viewer of `targets` targets: `$1` the user, `$2`
/// the cursor, `$3` the ids to read per arm and in all, `$4` now; then a kind and a name
/// per target. It returns one row: the head, and the page as one JSON array of `[id
/// covered, notification columns]` (an id covered whose notification has expired comes
/// with the columns NULL). One value instead of a row per notification: a row crosses
/// from SQLite's thread to the hub's as fifteen values copied one by one, and the page's
/// hand-offs and copies cost the hub more than SQLite's reading (bench/NOTES.md,
/// catch-up). The array's order is unspecified: [`Store::page`] sorts it.
fn page_sql(dialect: Dialect, targets: usize) -> String {
    let arms: Vec<String> = (0..targets)
        .map(|i| {
            format!(
                "SELECT covered FROM (SELECT notification_id AS covered FROM notification_targets \
                 WHERE kind = ${kind} AND name = ${name} AND notification_id > $2 \
                 ORDER BY notification_id LIMIT $3) AS arm{i}",
                kind = 5 + 2 * i,
                name = 6 + 2 * i,
            )
        })
        .collect();
    let entry = dialect.json_array(&format!(
        "p.covered, {}",
        dialect.json_array(&rows::packed_columns(dialect))
    ));
    format!(
        "WITH picked AS ({arms} ORDER BY covered LIMIT $3) \
         SELECT ({head}) AS head, \
         (SELECT {page} FROM picked p \
          LEFT JOIN notifications n ON n.id = p.covered AND n.expires_at > $4 \
          LEFT JOIN user_state s ON s.user_id = $1 AND s.notification_id = n.id) AS page",
        arms = arms.join(" UNION "),
        head = dialect.head(),
        page = dialect.json_agg(&entry),
    )
}

/// An id a page covered.
struct PageRow {
    covered: i64,
    /// `None` where the id covered has expired.
    notification: Option<Notification>,
}

/// The `(kind, name)` target keys whose notifications `viewer` sees.
fn viewer_targets(viewer: &Viewer) -> impl Iterator<Item = (i64, &str)> {
    [(0, viewer.user.as_str()), (2, "")]
        .into_iter()
        .chain(viewer.topics.iter().map(|t| (1, t.as_str())))
}

/// The target stored as `(kind, name)`.
fn target_of(kind: i64, name: String) -> Option<Target> {
    match kind {
        0 => Some(Target::User(name)),
        1 => Some(Target::Topic(name)),
        2 => Some(Target::All),
        _ => None,
    }
}

/// Maps a target to its `(kind, name)` columns.
pub(crate) fn target_key(target: &Target) -> (i64, &str) {
    match target {
        Target::User(u) => (0, u.as_str()),
        Target::Topic(t) => (1, t.as_str()),
        Target::All => (2, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    /// A page is one statement: the user's, `all`'s and the topics' notifications merged
    /// in id order (one targeting two of them once), expired ones covered but not shown,
    /// `more` exact, and the head from the same snapshot.
    #[tokio::test]
    async fn a_page_merges_every_target_and_knows_exactly_whether_more_follow() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _feed) = Store::open(dir.path(), None).await.expect("store");
        let later = now_ms() + 3_600_000;
        // Ids 1 to 9: amy's own (1, 4, 7, 9), all (2, 5), topic t (3, 6, 9), bob's (8);
        // 7 has expired.
        let targets: [&[(i64, &str)]; 9] = [
            &[(0, "amy")],
            &[(2, "")],
            &[(1, "t")],
            &[(0, "amy")],
            &[(2, "")],
            &[(1, "t")],
            &[(0, "amy")],
            &[(0, "bob")],
            &[(0, "amy"), (1, "t")],
        ];
        for (i, targets) in targets.iter().enumerate() {
            let id = i as i64 + 1;
            sqlx::query(
                "INSERT INTO notifications (id, event, title, body, priority, tags, actions, \
                 data, created_at, expires_at) VALUES (?1, 'notification', ?2, '', 3, '[]', \
                 '[]', '{}', 1, ?3)",
            )
            .bind(id)
            .bind(format!("n{id}"))
            .bind(if id == 7 { 1 } else { later })
            .execute(store.sqlite_pool())
            .await
            .expect("notification");
            for &(kind, name) in *targets {
                sqlx::query(
                    "INSERT INTO notification_targets (kind, name, notification_id) \
                     VALUES (?1, ?2, ?3)",
                )
                .bind(kind)
                .bind(name)
                .bind(id)
                .execute(store.sqlite_pool())
                .await
                .expect("target");
            }
        }
        let amy = Viewer {
            user: "amy".into(),
            topics: vec!["t".into()],
        };
        let ids = |p: &Page| p.notifications.iter().map(|n| n.id).collect::<Vec<_>>();
        let page = |after, limit| {
            let (store, amy) = (&store, &amy);
            async move { store.page(amy, after, limit).await.expect("page") }
        };

        let first = page(0, 3).await;
        assert_eq!(ids(&first), [1, 2, 3]);
        assert_eq!(first.notifications[1].title, "n2");
        assert_eq!((first.last_id, first.more, first.head), (Some(3), true, 9));
        // 7 expired: covered (the cursor moves past it), not shown.
        let second = page(3, 4).await;
        assert_eq!(ids(&second), [4, 5, 6]);
        assert_eq!((second.last_id, second.more), (Some(7), true));
        let last = page(7, 10).await;
        assert_eq!(ids(&last), [9]);
        assert_eq!((last.last_id, last.more, last.head), (Some(9), false, 9));
        // Eight ids are amy's to cover (9 once): a page of eight has no more after it.
        assert!(!page(0, 8).await.more);
        assert!(page(0, 7).await.more);
        let after_all = page(9, 10).await;
        assert_eq!((ids(&after_all), after_all.last_id), (vec![], None));
        assert_eq!((after_all.more, after_all.head), (false, 9));
        // Without the topic: her own and `all`'s only.
        let own = Viewer {
            user: "amy".into(),
            topics: Vec::new(),
        };
        let own = store.page(&own, 0, 10).await.expect("page");
        assert_eq!(ids(&own), [1, 2, 4, 5, 9]);
        // More topics than one statement reads: the same page, from several statements.
        let many = Viewer {
            user: "amy".into(),
            topics: (0..2 * MAX_ARMS)
                .map(|i| {
                    if i == MAX_ARMS + 7 {
                        "t".into()
                    } else {
                        format!("x{i}")
                    }
                })
                .collect(),
        };
        let whole = store.page(&many, 0, 10).await.expect("page");
        assert_eq!(ids(&whole), [1, 2, 3, 4, 5, 6, 9]);
        assert_eq!((whole.last_id, whole.more, whole.head), (Some(9), false, 9));
        let part = store.page(&many, 2, 3).await.expect("page");
        assert_eq!((ids(&part), part.more), (vec![3, 4, 5], true));
    }

    /// A database written by a hub from before user state was keyed by notification keeps
    /// its delivery and read times, and lookups use the new key.
    #[tokio::test]
    async fn user_state_keeps_its_rows_when_rekeyed_by_notification() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("belfry.db"))
            .create_if_missing(true);
        let old = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .expect("old database");
        let mut before = sqlx::migrate!("./migrations/sqlite");
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version < 3)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(&old).await.expect("migrations 1 and 2");
        sqlx::query(
            "INSERT INTO notifications (id, event, title, body, priority, tags, actions, data, \
             created_at, expires_at) VALUES (7, 'notification', 't', 'b', 3, '[]', '[]', '{}', 1, ?1);
             INSERT INTO notification_targets (kind, name, notification_id) VALUES (2, '', 7);
             INSERT INTO user_state (user_id, notification_id, delivered_at, read_at)
               VALUES ('bob', 7, 1000, NULL), ('alice', 7, 2000, 3000);",
        )
        .bind(now_ms() + 3_600_000)
        .execute(&old)
        .await
        .expect("old rows");
        old.close().await;

        let (store, _writer) = Store::open(dir.path(), None).await.expect("migrated");
        let receipts = store.receipts(7).await.expect("receipts").expect("exists");
        let times: Vec<(String, Option<i64>, Option<i64>)> = receipts
            .into_iter()
            .map(|(u, d, r)| (u, d.map(rows::to_ms), r.map(rows::to_ms)))
            .collect();
        assert_eq!(
            times,
            [
                ("alice".to_owned(), Some(2000), Some(3000)),
                ("bob".to_owned(), Some(1000), None)
            ]
        );
        let plan: Vec<String> = sqlx::query(
            "EXPLAIN QUERY PLAN SELECT read_at FROM user_state WHERE user_id = ?1 AND notification_id = ?2",
        )
        .bind("alice")
        .bind(7_i64)
        .fetch_all(store.sqlite_pool())
        .await
        .expect("plan")
        .iter()
        .map(|row| row.try_get::<String, _>(3).expect("detail"))
        .collect();
        assert!(
            plan.iter()
                .any(|d| d.contains("PRIMARY KEY (notification_id=? AND user_id=?)")),
            "{plan:?}"
        );
    }
}
