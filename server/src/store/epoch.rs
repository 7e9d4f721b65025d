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
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
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

/// The size of each of the mark's two slots. A note writes `<epoch> <head> <number>
/// <checksum>` into the slot the note before did not use, padded to this size, so that a
/// write a crash cut short leaves the other slot whole; the valid slot with the higher
/// number is the mark.
const SLOT: usize = 96;

/// The mark in the data dir: the epoch and the highest id this hub handed out in it.
#[derive(Debug)]
pub(super) struct Mark {
    path: PathBuf,
    epoch: Current,
    /// Whether writing it failed already (said once, not at every commit).
    failing: AtomicBool,
    /// The mark's file, open once written to, and the number of the next note. Written in
    /// place: a new file renamed over the old one after every batch cost the hub an
    /// inode allocated and freed per batch (bench/NOTES.md, PostgreSQL).
    file: Mutex<Option<Open>>,
}

/// The mark's file as a [`Mark`] holds it open.
#[derive(Debug)]
struct Open {
    file: File,
    /// Its device and inode, to notice the path naming another file.
    id: (u64, u64),
    /// The number of the next note.
    number: u64,
}

impl Mark {
    /// The mark of `data_dir`, in the store's current epoch.
    pub(super) fn new(data_dir: &Path, epoch: Current) -> Mark {
        Mark {
            path: data_dir.join(MARK_FILE),
            epoch,
            failing: AtomicBool::new(false),
            file: Mutex::new(None),
        }
    }

    /// The epoch the store is in now.
    pub(super) fn epoch(&self) -> Arc<str> {
        self.epoch.borrow().id.clone()
    }

    /// What the mark says: the epoch and the head, if it says anything readable.
    pub(super) fn read(data_dir: &Path) -> Option<(String, u64)> {
        let bytes = std::fs::read(data_dir.join(MARK_FILE)).ok()?;
        read_marked(&bytes).map(|(epoch, head, _)| (epoch, head))
    }

    /// Records that ids up to `head` were handed out, in the slot the note before did not
    /// use, so a crash leaves the old mark or the new one, never none. Not synced to disk:
    /// what matters is a restore made while the hub is stopped, after it wrote this. (One
    /// write of [`SLOT`] bytes into a file kept open, after each batch of commits: small
    /// enough for the writer's task.)
    pub(super) fn note(&self, head: u64) {
        let epoch = self.epoch.borrow().id.clone();
        let written = self.write(&epoch, head);
        match written {
            Ok(()) => self.failing.store(false, Relaxed),
            Err(e) if !self.failing.swap(true, Relaxed) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the store's head mark; a restored backup may go unnoticed");
            }
            Err(_) => {}
        }
    }

    fn write(&self, epoch: &str, head: u64) -> std::io::Result<()> {
        let mut open = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        // A mark deleted or replaced while the hub runs is written again at the next note,
        // not into the file that was taken away (one stat per note).
        if let Some(held) = &*open
            && file_id(&self.path).ok() != Some(held.id)
        {
            *open = None;
        }
        let Open { file, number, .. } = match &mut *open {
            Some(held) => held,
            None => {
                let file = File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&self.path)?;
                // Numbered on from what the file holds, so that the newest note stays the
                // one with the highest number (a mark of the old format counts as 0).
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut &file, &mut bytes)?;
                let number = read_marked(&bytes)
                    .and_then(|(_, _, n)| n.checked_add(1))
                    .unwrap_or(0);
                let id = file_id_of(&file.metadata()?);
                open.insert(Open { file, id, number })
            }
        };
        let slot = slot_text(epoch, head, *number).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the epoch is too long")
        })?;
        let at = (*number % 2) * SLOT as u64;
        match file.write_all_at(slot.as_bytes(), at) {
            Ok(()) => {
                *number += 1;
                Ok(())
            }
            Err(e) => {
                // Opened again at the next note.
                *open = None;
                Err(e)
            }
        }
    }
}

/// The device and inode of the file `path` names.
fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    Ok(file_id_of(&std::fs::metadata(path)?))
}

fn file_id_of(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// A slot of the mark: `<epoch> <head> <number> <checksum>`, padded with spaces to [`SLOT`]
/// bytes, the last a newline; `None` if it does not fit.
fn slot_text(epoch: &str, head: u64, number: u64) -> Option<String> {
    let fields = format!("{epoch} {head} {number}");
    let mut text = format!("{fields} {:016x}", checksum(&fields));
    if text.len() >= SLOT || epoch.contains(char::is_whitespace) {
        return None;
    }
    text.extend(std::iter::repeat_n(' ', SLOT - 1 - text.len()));
    text.push('\n');
    Some(text)
}

/// The newest valid slot of a mark's bytes: its epoch, head and number. A mark of the
/// format before the slots (`<epoch> <head>` alone, once renamed into place) still reads,
/// as number 0, when no slot is valid.
fn read_marked(bytes: &[u8]) -> Option<(String, u64, u64)> {
    let slot = |text: &str| {
        let mut parts = text.split_ascii_whitespace();
        let (epoch, head, number, sum) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let fields = format!("{epoch} {head} {number}");
        (parts.next().is_none() && format!("{:016x}", checksum(&fields)) == sum)
            .then(|| Some((epoch.to_owned(), head.parse().ok()?, number.parse().ok()?)))
            .flatten()
    };
    let newest = bytes
        .chunks(SLOT)
        .take(2)
        .filter_map(|chunk| std::str::from_utf8(chunk).ok().and_then(slot))
        .max_by_key(|&(_, _, number)| number);
    // The old format is one line; what follows it (a slot of the new one, cut short by a
    // crash during the first note after an upgrade) does not hide it.
    newest.or_else(|| {
        let line = bytes.split(|&b| b == b'\n').next()?;
        let mut parts = std::str::from_utf8(line).ok()?.split_ascii_whitespace();
        let (epoch, head) = (parts.next()?, parts.next()?);
        parts
            .next()
            .is_none()
            .then(|| Some((epoch.to_owned(), head.parse().ok()?, 0)))
            .flatten()
    })
}

/// FNV-1a, 64 bits: enough to tell a slot a crash cut short from a whole one.
fn checksum(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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

    #[test]
    fn the_mark_is_written_in_place_and_a_torn_slot_leaves_the_note_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(MARK_FILE);
        // A mark of the format before the slots reads, and the notes number on from it.
        std::fs::write(&path, "e1 7\n").expect("write");
        assert_eq!(Mark::read(dir.path()), Some(("e1".to_owned(), 7)));
        let mark = Mark::new(dir.path(), current_as("e1", 0));
        for head in [8, 9, 10] {
            mark.note(head);
            assert_eq!(Mark::read(dir.path()), Some(("e1".to_owned(), head)));
        }
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 2 * SLOT, "two slots, no file beside them");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);

        // A crash in the middle of the next note: that slot is torn, the other holds 10.
        let (_, _, last) = read_marked(&bytes).expect("marked");
        let torn_at = ((last + 1) % 2) as usize * SLOT;
        let mut torn = bytes.clone();
        torn[torn_at..torn_at + 10].copy_from_slice(b"e1 11 9999");
        std::fs::write(&path, &torn).expect("write");
        assert_eq!(Mark::read(dir.path()), Some(("e1".to_owned(), 10)));

        // A hub started on it writes on from there, the epoch changed included.
        let mark = Mark::new(dir.path(), current_as("e2", 0));
        mark.note(3);
        assert_eq!(Mark::read(dir.path()), Some(("e2".to_owned(), 3)));
        mark.note(4);
        assert_eq!(Mark::read(dir.path()), Some(("e2".to_owned(), 4)));

        // Deleted, or replaced by another file, while the hub runs: written again.
        std::fs::remove_file(&path).expect("remove");
        mark.note(5);
        assert_eq!(Mark::read(dir.path()), Some(("e2".to_owned(), 5)));
        std::fs::write(&path, "e2 1\n").expect("replace");
        mark.note(6);
        assert_eq!(Mark::read(dir.path()), Some(("e2".to_owned(), 6)));

        // The first note after an upgrade, cut short: the old one-line mark still reads.
        let mut upgraded = b"e1 7\n".to_vec();
        upgraded.resize(SLOT, 0);
        upgraded.extend_from_slice(b"e1 8 1 00");
        assert_eq!(read_marked(&upgraded), Some(("e1".to_owned(), 7, 0)));

        // An epoch that does not fit a slot is refused, not written over the other slot.
        assert_eq!(slot_text(&"x".repeat(SLOT), 1, 1), None);
        assert_eq!(slot_text("a b", 1, 1), None);
        assert_eq!(slot_text("e", 1, 1).map(|s| s.len()), Some(SLOT));
    }
}
