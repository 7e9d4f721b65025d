//! The store's epoch: a random id made with the store and kept in it, sent to clients
//! with every catch-up. Ids are only comparable within one epoch. A store restored from
//! an older backup (or replaced by another) issues ids that clients already hold for
//! other notifications; a new epoch tells them to start over instead of dropping the new
//! notifications as ones they have.
//!
//! The hub notices a restore by itself: after each commit it writes the highest id it
//! has handed out, with the epoch, to `store-head` in its data dir. A store whose head is
//! below that mark is older than what this hub already gave its clients: it gets a new
//! epoch. (A store restored on a machine that never ran the hub cannot be noticed:
//! `belfry-server epoch --renew` makes a new epoch by hand.)

use super::StoreError;
use super::db::{Conn, on};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tokio::sync::watch;

/// An epoch as this node took it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// The epoch.
    pub id: Arc<str>,
    /// The store's head, read just before this node took the epoch up. Where the store
    /// lost commits, the new epoch issues ids again from above it, so the feed goes on
    /// from here; whatever committed up to it is in the catch-ups of the clients that start
    /// over. (Commits of the old epoch may sit just above it too: handed out again, they
    /// are duplicates, which clients drop.)
    pub since: u64,
}

/// The epoch a store is in now, shared by its handles, its writer and its feed; it
/// changes when a check finds the store in another (see [`super::Store::check_epoch`]).
pub type Current = Arc<watch::Sender<Epoch>>;

/// The file in the data dir that keeps the highest id handed out, with its epoch.
pub const MARK_FILE: &str = "store-head";

/// A new random epoch: 128 random bits, hex.
pub fn fresh() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The epoch the store holds now.
pub(super) async fn stored(conn: &mut Conn<'_>) -> Result<String, StoreError> {
    on!(conn, c => Ok(sqlx::query_scalar("SELECT epoch FROM store_epoch").fetch_one(c).await?))
}

/// The store's epoch, made if the store has none yet (several nodes starting at once
/// agree: the first insert wins).
pub(super) async fn current(conn: &mut Conn<'_>) -> Result<String, StoreError> {
    on!(conn, c => {
        sqlx::query(
            "INSERT INTO store_epoch (only_row, epoch, created_at) VALUES (true, $1, $2) \
             ON CONFLICT (only_row) DO NOTHING",
        )
        .bind(fresh())
        .bind(super::now_ms())
        .execute(&mut *c)
        .await?;
        Ok(sqlx::query_scalar("SELECT epoch FROM store_epoch").fetch_one(c).await?)
    })
}

/// Replaces the epoch `old` with a new one (unless another node already did); returns
/// the store's epoch afterwards.
pub(super) async fn renew(conn: &mut Conn<'_>, old: &str) -> Result<String, StoreError> {
    on!(conn, c => {
        sqlx::query("UPDATE store_epoch SET epoch = $1, created_at = $2 WHERE epoch = $3")
            .bind(fresh())
            .bind(super::now_ms())
            .bind(old)
            .execute(&mut *c)
            .await?;
        Ok(sqlx::query_scalar("SELECT epoch FROM store_epoch").fetch_one(c).await?)
    })
}

/// The mark in the data dir: the epoch and the highest id this hub handed out in it.
#[derive(Debug)]
pub(super) struct Mark {
    path: PathBuf,
    epoch: Current,
    /// Whether writing it failed already (said once, not at every commit).
    failing: AtomicBool,
}

impl Mark {
    /// The mark of `data_dir`, in the store's current epoch.
    pub(super) fn new(data_dir: &Path, epoch: Current) -> Mark {
        Mark {
            path: data_dir.join(MARK_FILE),
            epoch,
            failing: AtomicBool::new(false),
        }
    }

    /// The epoch the store is in now.
    pub(super) fn epoch(&self) -> Arc<str> {
        self.epoch.borrow().id.clone()
    }

    /// What the mark says: the epoch and the head, if it says anything readable.
    pub(super) fn read(data_dir: &Path) -> Option<(String, u64)> {
        let text = std::fs::read_to_string(data_dir.join(MARK_FILE)).ok()?;
        let (epoch, head) = text.trim().split_once(' ')?;
        Some((epoch.to_owned(), head.parse().ok()?))
    }

    /// Records that ids up to `head` were handed out: written aside, then renamed over
    /// the mark, so a crash leaves the old mark or the new one, never an empty file. Not
    /// synced to disk: what matters is a restore made while the hub is stopped, after it
    /// wrote this. (Some forty bytes, after each batch of commits: small enough for the
    /// writer's task.)
    pub(super) fn note(&self, head: u64) {
        let aside = self.path.with_extension("new");
        let epoch = self.epoch.borrow().id.clone();
        let written = std::fs::write(&aside, format!("{epoch} {head}\n"))
            .and_then(|()| std::fs::rename(&aside, &self.path));
        match written {
            Ok(()) => self.failing.store(false, Relaxed),
            Err(e) if !self.failing.swap(true, Relaxed) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the store's head mark; a restored backup may go unnoticed");
            }
            Err(_) => {}
        }
    }
}

/// The epoch the store opens in: its own, or a new one if the mark in `data_dir` shows
/// that this hub already handed out ids beyond the store's `head` in that epoch.
pub(super) async fn establish(
    conn: &mut Conn<'_>,
    data_dir: &Path,
    head: u64,
) -> Result<String, StoreError> {
    let epoch = current(conn).await?;
    let epoch = match Mark::read(data_dir) {
        Some((marked, handed_out)) if marked == epoch && head < handed_out => {
            let renewed = renew(conn, &epoch).await?;
            tracing::warn!(
                head,
                handed_out,
                epoch = %renewed,
                "the store is older than what this hub handed out (a restored backup?): \
                 it starts a new epoch, and every client starts over"
            );
            renewed
        }
        _ => epoch,
    };
    Mark::new(data_dir, current_as(&epoch, head)).note(head);
    Ok(epoch)
}

/// A [`Current`] holding `epoch`, taken up at `since`.
pub(super) fn current_as(epoch: &str, since: u64) -> Current {
    Arc::new(watch::Sender::new(Epoch {
        id: epoch.into(),
        since,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_random_and_the_mark_round_trips() {
        assert_ne!(fresh(), fresh());
        assert_eq!(fresh().len(), 32);
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Mark::read(dir.path()), None);
        Mark::new(dir.path(), current_as("e1", 0)).note(41);
        assert_eq!(Mark::read(dir.path()), Some(("e1".to_owned(), 41)));
        std::fs::write(dir.path().join(MARK_FILE), "garbled").expect("write");
        assert_eq!(Mark::read(dir.path()), None);
    }
}
