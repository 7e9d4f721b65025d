//! The local store (SQLite in the app's data dir): settings, the cursor, the history and
//! read marks waiting to reach the hub. A batch and the cursor it allows are written in one
//! transaction, before the client acknowledges them, so a crash never skips or repeats.
//!
//! The history is kept by era: one era per epoch of the hub's store. When the hub's store
//! starts a new epoch (a backup restored), the device starts a new era ([`LocalStore::
//! start_over`]): it keeps the old history (read), forgets the cursor, and takes the new
//! epoch's ids as new, except for a notification it finds again (the same id and time),
//! which moves into the new era instead of showing twice.

use crate::settings::Settings;
use belfry_protocol::events::ReadRequest;
use belfry_protocol::{Notification, Priority};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};
use std::path::Path;
use std::time::Duration;

/// The most notifications kept in the local history; older ones are dropped.
pub const MAX_HISTORY: i64 = 10_000;

/// Why the local store failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalStoreError {
    /// SQLite failed.
    #[error("local database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be set up.
    #[error("local database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The data dir could not be created.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, LocalStoreError>;

/// A filter for the history.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HistoryQuery {
    /// Only this topic (`""`: only notifications without a topic).
    pub topic: Option<String>,
    /// Only this priority or higher.
    pub min_priority: Option<Priority>,
    /// Only unread ones.
    pub unread_only: bool,
    /// Words that must appear in the title or body (case-insensitive).
    pub search: Option<String>,
    /// Skips this many of the matching ones, newest first (for paging: the next page
    /// starts where the last ended). An offset, not an id: ids of different epochs of
    /// the hub overlap, so no id says where a page ended.
    pub offset: Option<u32>,
    /// At most this many (default 200, at most 1000).
    pub limit: Option<u32>,
}

/// The local store.
#[derive(Debug, Clone)]
pub struct LocalStore {
    pool: SqlitePool,
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// When a notification was made, as its JSON says it (RFC 3339): with its id, what
/// tells one notification from another across epochs.
fn created_text(n: &Notification) -> String {
    n.created_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn id_param(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// Makes the database `db` in `dir` readable by its owner only, and `dir` too when it is
/// the store's own: created now, or holding the database already (an older version made
/// it open to everyone). A directory that held other things (`--data-dir .`) keeps its
/// mode. SQLite creates the `-wal` and `-shm` files with the database's permissions;
/// those left by an older version are narrowed too.
fn keep_private(dir: &Path, db: &Path) -> std::io::Result<()> {
    let own_dir = !dir.exists() || db.exists();
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        if own_dir {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        // Created empty and private before SQLite opens it.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

impl LocalStore {
    /// Opens (creating) `belfry-desktop.db` in `dir`. The database and its journal files
    /// are the owner's only (0600), and so is the dir (0700) when it is the store's own:
    /// they hold the token.
    pub async fn open(dir: &Path) -> Result<LocalStore> {
        let db = dir.join("belfry-desktop.db");
        keep_private(dir, &db)?;
        let options = SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // One connection: the app is the only writer, and it keeps the memory small.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(LocalStore { pool })
    }

    /// Closes the database.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The saved settings, if any were saved.
    pub async fn settings(&self) -> Result<Option<Settings>> {
        let json: Option<String> = sqlx::query_scalar("SELECT json FROM settings WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        // Unreadable settings (an older or damaged file) fall back to defaults rather
        // than keeping the app from starting.
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Saves the settings.
    pub async fn save_settings(&self, settings: &Settings) -> Result<()> {
        let json = serde_json::to_string(settings).unwrap_or_default();
        sqlx::query("INSERT INTO settings (id, json) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET json = excluded.json")
            .bind(json)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The cursor: `None` before the first catch-up ever completed a batch.
    pub async fn cursor(&self) -> Result<Option<u64>> {
        let v: Option<i64> = sqlx::query_scalar("SELECT value FROM cursor WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
    }

    /// Forgets the cursor and history (another server or user).
    pub async fn reset(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM cursor").execute(&mut *tx).await?;
        sqlx::query("DELETE FROM history").execute(&mut *tx).await?;
        sqlx::query("UPDATE hub_epoch SET epoch = NULL")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM pending_reads")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores notifications (ignoring ids already held, taking the hub's read state) and,
    /// in the same transaction, raises the cursor to `advance_to` if given. Returns the
    /// notifications that were new, in the order given.
    pub async fn store(
        &self,
        notifications: &[Notification],
        advance_to: Option<u64>,
    ) -> Result<Vec<Notification>> {
        let mut tx = self.pool.begin().await?;
        let era: i64 = sqlx::query_scalar("SELECT era FROM hub_epoch WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let mut fresh = Vec::new();
        let now = now_ms();
        for n in notifications {
            let json = serde_json::to_string(n).unwrap_or_default();
            let created_at = created_text(n);
            // Found again after the hub's store started over: it moves into this era.
            let found_again = sqlx::query(
                "UPDATE history SET era = ?1, json = ?2, read = ?5 WHERE era < ?1 AND id = ?3 \
                 AND created_at = ?4 AND NOT EXISTS \
                 (SELECT 1 FROM history WHERE era = ?1 AND id = ?3)",
            )
            .bind(era)
            .bind(&json)
            .bind(id_param(n.id))
            .bind(&created_at)
            .bind(n.read)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let inserted = if found_again > 0 {
                0
            } else {
                sqlx::query(
                    "INSERT OR IGNORE INTO history \
                     (era, id, created_at, json, title, body, topic, priority, received_at, read) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(era)
                .bind(id_param(n.id))
                .bind(&created_at)
                .bind(json)
                .bind(&n.title)
                .bind(&n.body)
                .bind(&n.topic)
                .bind(i64::from(n.priority.level()))
                .bind(now)
                .bind(n.read)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            };
            if inserted > 0 {
                fresh.push(n.clone());
            } else if n.read {
                sqlx::query("UPDATE history SET read = 1 WHERE era = ? AND id = ?")
                    .bind(era)
                    .bind(id_param(n.id))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if let Some(to) = advance_to {
            Self::raise_cursor(&mut tx, to).await?;
        }
        if !fresh.is_empty() {
            sqlx::query(
                "DELETE FROM history WHERE (era, id) < \
                 (SELECT era, id FROM history ORDER BY era DESC, id DESC LIMIT 1 OFFSET ?)",
            )
            .bind(MAX_HISTORY - 1)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(fresh)
    }

    /// The hub's epoch this device follows, once a hub said it.
    pub async fn epoch(&self) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT epoch FROM hub_epoch WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Takes the hub's epoch as this device's (when it had none yet).
    pub async fn adopt_epoch(&self, epoch: &str) -> Result<()> {
        sqlx::query("UPDATE hub_epoch SET epoch = ? WHERE id = 1")
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The hub's store started over (another epoch): a new era. The history so far stays,
    /// all read (it can no longer be marked on the hub); the cursor goes back to 0, so the
    /// next catch-up brings everything the hub has; read marks not yet sent are dropped
    /// (their ids name the old epoch's notifications); the epoch becomes `epoch` (`None`:
    /// whatever the next `synced` says).
    pub async fn start_over(&self, epoch: Option<&str>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE history SET read = 1 WHERE read = 0")
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE hub_epoch SET era = era + 1, epoch = ? WHERE id = 1")
            .bind(epoch)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO cursor (id, value) VALUES (1, 0) \
             ON CONFLICT (id) DO UPDATE SET value = 0",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM pending_reads")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn raise_cursor(conn: &mut sqlx::SqliteConnection, to: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO cursor (id, value) VALUES (1, ?) \
             ON CONFLICT (id) DO UPDATE SET value = max(value, excluded.value)",
        )
        .bind(id_param(to))
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Raises the cursor (never lowers it).
    pub async fn advance_cursor(&self, to: u64) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        Self::raise_cursor(&mut conn, to).await
    }

    /// Marks notifications read locally; returns how many changed.
    pub async fn mark_read(&self, request: &ReadRequest) -> Result<u64> {
        let done = match request {
            ReadRequest::Ids { ids } => {
                let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
                sqlx::query(
                    "UPDATE history SET read = 1 WHERE read = 0 \
                     AND era = (SELECT era FROM hub_epoch WHERE id = 1) \
                     AND id IN (SELECT value FROM json_each(?))",
                )
                .bind(ids)
                .execute(&self.pool)
                .await?
            }
            ReadRequest::UpTo { up_to } => {
                sqlx::query(
                    "UPDATE history SET read = 1 WHERE read = 0 \
                     AND era = (SELECT era FROM hub_epoch WHERE id = 1) AND id <= ?",
                )
                .bind(id_param(*up_to))
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected())
    }

    /// The highest id held (for "mark all read").
    pub async fn newest_id(&self) -> Result<Option<u64>> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT max(id) FROM history WHERE era = (SELECT era FROM hub_epoch WHERE id = 1)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
    }

    /// How many notifications are unread.
    pub async fn unread_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM history WHERE read = 0")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// How many notifications the history holds.
    pub async fn history_len(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM history")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The history, newest first.
    pub async fn history(&self, q: &HistoryQuery) -> Result<Vec<Notification>> {
        let mut sql = QueryBuilder::new("SELECT json, read FROM history WHERE 1 = 1");
        match q.topic.as_deref() {
            Some("") => {
                sql.push(" AND topic IS NULL");
            }
            Some(t) => {
                sql.push(" AND topic = ").push_bind(t.to_owned());
            }
            None => {}
        }
        if let Some(p) = q.min_priority {
            sql.push(" AND priority >= ")
                .push_bind(i64::from(p.level()));
        }
        if q.unread_only {
            sql.push(" AND read = 0");
        }
        if let Some(words) = q.search.as_deref() {
            for word in words.split_whitespace().take(8) {
                let like = format!(
                    "%{}%",
                    word.replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_")
                );
                sql.push(" AND (title LIKE ")
                    .push_bind(like.clone())
                    .push(" ESCAPE '\\' OR body LIKE ")
                    .push_bind(like)
                    .push(" ESCAPE '\\')");
            }
        }
        let limit = i64::from(q.limit.unwrap_or(200).clamp(1, 1000));
        let offset = i64::from(q.offset.unwrap_or(0)).min(MAX_HISTORY);
        sql.push(" ORDER BY era DESC, id DESC LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = sql.build().fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let json: String = row.try_get("json")?;
            let read: bool = row.try_get("read")?;
            if let Ok(mut n) = serde_json::from_str::<Notification>(&json) {
                n.read = read;
                out.push(n);
            }
        }
        Ok(out)
    }

    /// The topics that appear in the history, sorted.
    pub async fn history_topics(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT topic FROM history WHERE topic IS NOT NULL ORDER BY topic",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Queues a read mark for the hub (sent when connected).
    pub async fn queue_read(&self, request: &ReadRequest) -> Result<()> {
        sqlx::query("INSERT INTO pending_reads (json) VALUES (?)")
            .bind(serde_json::to_string(request).unwrap_or_default())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Read marks not yet confirmed by the hub, oldest first.
    pub async fn pending_reads(&self) -> Result<Vec<(i64, ReadRequest)>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, json FROM pending_reads ORDER BY seq")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(seq, json)| serde_json::from_str(&json).ok().map(|r| (seq, r)))
            .collect())
    }

    /// Forgets a read mark the hub confirmed.
    pub async fn drop_pending_read(&self, seq: i64) -> Result<()> {
        sqlx::query("DELETE FROM pending_reads WHERE seq = ?")
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(id: u64, title: &str, topic: Option<&str>, priority: Priority) -> Notification {
        Notification {
            id,
            event: "notification".into(),
            title: title.into(),
            body: format!("body of {title}"),
            priority,
            tags: vec![],
            url: None,
            actions: vec![],
            data: serde_json::Value::Null,
            topic: topic.map(str::to_owned),
            created_at: time::macros::datetime!(2026-11-22 10:00 UTC),
            expires_at: time::macros::datetime!(2026-11-29 10:00 UTC),
            read: false,
        }
    }

    /// The data dir and the database (which holds the token) are the owner's only, also
    /// when an older version left them open to others.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_data_dir_and_database_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("belfry");
        let store = LocalStore::open(&dir).await.expect("open");
        store
            .save_settings(&Settings {
                token: "a-token".into(),
                ..Settings::default()
            })
            .await
            .expect("saved");
        assert_eq!(mode(&dir), 0o700);
        for name in [
            "belfry-desktop.db",
            "belfry-desktop.db-wal",
            "belfry-desktop.db-shm",
        ] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        store.close().await;
        // An older version's: readable by everyone.
        for (path, open) in [(dir.clone(), 0o755), (dir.join("belfry-desktop.db"), 0o644)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(open)).expect("chmod");
        }
        let store = LocalStore::open(&dir).await.expect("reopen");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("belfry-desktop.db")), 0o600);
        store.close().await;
        // A directory of other things is left as it is; the database is still private.
        let shared = parent.path().join("projects");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let store = LocalStore::open(&shared)
            .await
            .expect("open in a shared dir");
        assert_eq!(mode(&shared), 0o755);
        assert_eq!(mode(&shared.join("belfry-desktop.db")), 0o600);
        store.close().await;
    }

    #[tokio::test]
    async fn batches_dedupe_and_move_the_cursor_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).await.expect("open");
        assert_eq!(store.cursor().await.expect("cursor"), None);
        let a = note(5, "a", None, Priority::Default);
        let b = note(7, "b", Some("ops"), Priority::High);
        let fresh = store
            .store(&[a.clone(), b.clone()], Some(7))
            .await
            .expect("store");
        assert_eq!(fresh.len(), 2);
        // The same ids again: nothing new, the cursor never goes back.
        let again = store
            .store(std::slice::from_ref(&a), Some(3))
            .await
            .expect("store");
        assert!(again.is_empty());
        assert_eq!(store.cursor().await.expect("cursor"), Some(7));
        assert_eq!(store.unread_count().await.expect("count"), 2);
        // The hub's read state is taken for held ones too.
        let mut read_b = b.clone();
        read_b.read = true;
        store.store(&[read_b], None).await.expect("store");
        assert_eq!(store.unread_count().await.expect("count"), 1);

        drop(store);
        let reopened = LocalStore::open(dir.path()).await.expect("reopen");
        assert_eq!(reopened.cursor().await.expect("cursor"), Some(7));
        assert_eq!(reopened.history_len().await.expect("len"), 2);
    }

    #[tokio::test]
    async fn history_filters_and_read_marks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).await.expect("open");
        let notes = vec![
            note(1, "Deploy api", Some("deploys"), Priority::Default),
            note(2, "Disk 95% full", Some("ops"), Priority::Urgent),
            note(3, "Lunch?", None, Priority::Low),
            note(4, "Deploy web", Some("deploys"), Priority::High),
        ];
        store.store(&notes, Some(4)).await.expect("store");
        let ids = |v: Vec<Notification>| v.iter().map(|n| n.id).collect::<Vec<_>>();
        let all = store.history(&HistoryQuery::default()).await.expect("h");
        assert_eq!(ids(all), vec![4, 3, 2, 1]);
        let deploys = HistoryQuery {
            topic: Some("deploys".into()),
            ..Default::default()
        };
        assert_eq!(ids(store.history(&deploys).await.expect("h")), vec![4, 1]);
        let untopiced = HistoryQuery {
            topic: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(ids(store.history(&untopiced).await.expect("h")), vec![3]);
        let high = HistoryQuery {
            min_priority: Some(Priority::High),
            ..Default::default()
        };
        assert_eq!(ids(store.history(&high).await.expect("h")), vec![4, 2]);
        let search = HistoryQuery {
            search: Some("DEPLOY web".into()),
            ..Default::default()
        };
        assert_eq!(ids(store.history(&search).await.expect("h")), vec![4]);
        let percent = HistoryQuery {
            search: Some("95%".into()),
            ..Default::default()
        };
        assert_eq!(ids(store.history(&percent).await.expect("h")), vec![2]);
        let page = HistoryQuery {
            offset: Some(2),
            limit: Some(1),
            ..Default::default()
        };
        assert_eq!(ids(store.history(&page).await.expect("h")), vec![2]);

        assert_eq!(
            store
                .mark_read(&ReadRequest::Ids { ids: vec![2, 99] })
                .await
                .expect("r"),
            1
        );
        assert_eq!(
            store
                .mark_read(&ReadRequest::UpTo { up_to: 3 })
                .await
                .expect("r"),
            2
        );
        let unread = HistoryQuery {
            unread_only: true,
            ..Default::default()
        };
        assert_eq!(ids(store.history(&unread).await.expect("h")), vec![4]);
        assert_eq!(
            store.history_topics().await.expect("t"),
            vec!["deploys", "ops"]
        );
        assert_eq!(store.newest_id().await.expect("n"), Some(4));

        store
            .queue_read(&ReadRequest::UpTo { up_to: 4 })
            .await
            .expect("q");
        let pending = store.pending_reads().await.expect("p");
        assert_eq!(pending.len(), 1);
        store.drop_pending_read(pending[0].0).await.expect("d");
        assert!(store.pending_reads().await.expect("p").is_empty());
    }

    #[tokio::test]
    async fn paging_walks_every_era_once_however_their_ids_overlap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).await.expect("open");
        let old: Vec<_> = (1..=5)
            .map(|id| note(id, &format!("old {id}"), None, Priority::Default))
            .collect();
        store.store(&old, Some(5)).await.expect("store");
        store.start_over(Some("e2")).await.expect("start over");
        // The new epoch's ids run over the old ones' (other notifications: made later).
        let new: Vec<_> = (3..=7)
            .map(|id| Notification {
                created_at: time::macros::datetime!(2026-11-23 10:00 UTC),
                ..note(id, &format!("new {id}"), None, Priority::Default)
            })
            .collect();
        store.store(&new, Some(7)).await.expect("store");
        let mut titles = Vec::new();
        for page in 0..6 {
            let query = HistoryQuery {
                offset: Some(page * 2),
                limit: Some(2),
                ..Default::default()
            };
            titles.extend(
                store
                    .history(&query)
                    .await
                    .expect("h")
                    .into_iter()
                    .map(|n| n.title),
            );
        }
        let expected: Vec<String> = (3..=7)
            .rev()
            .map(|id| format!("new {id}"))
            .chain((1..=5).rev().map(|id| format!("old {id}")))
            .collect();
        assert_eq!(titles, expected);
    }

    #[tokio::test]
    async fn settings_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).await.expect("open");
        assert_eq!(store.settings().await.expect("s"), None);
        let s = Settings {
            token: "abc".into(),
            digest_threshold: 9,
            ..Settings::default()
        };
        store.save_settings(&s).await.expect("save");
        assert_eq!(store.settings().await.expect("s"), Some(s));
    }
}
