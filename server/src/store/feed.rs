//! What every node committed, in id order, for each node to deliver (PostgreSQL).
//!
//! With SQLite, one writer assigns every id and hands its commits straight to delivery.
//! With several nodes on one PostgreSQL store, ids from different nodes interleave, and a
//! socket must still receive them in id order: a client may move its cursor over ids it
//! holds (PROTOCOL.md section 7), so an id arriving after a higher one could be skipped
//! for good. So each node reads what was committed back from the store, in id order:
//! - its own writer's batch at once, when it follows straight on from what was delivered
//!   (no other node's id can sit in between: see `writer.rs`);
//! - anything else when PostgreSQL tells the node (a NOTIFY sent by the publishing
//!   transaction, delivered to listeners at its commit);
//! - and every [`POLL`] anyway, for notices lost while the listening connection was down.
//!
//! Ids commit in id order on every node (`writer.rs`), so "everything above the last id
//! delivered" never passes over an id that commits later.
//!
//! The same listening connection hears [`RoomChange`]s: a subscription stored on any node
//! is announced by its own transaction, so every node hears it right after it commits,
//! whether or not Redis is up (see `cluster.rs` for what a node does with it).

use super::db::Pool;
use super::{Committed, Store};
use sqlx::postgres::{PgListener, PgPool};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// The channel publishing transactions notify.
const CHANNEL: &str = "belfry_committed";
/// The statement a publishing transaction runs before its commit.
pub(crate) const NOTIFY_COMMITTED: &str = "SELECT pg_notify('belfry_committed', '')";
/// The channel of [`RoomChange`]s.
const ROOMS: &str = "belfry_rooms";
/// The statement that announces a [`RoomChange`] (`$1`: its JSON) at the commit.
pub(crate) const NOTIFY_ROOMS: &str = "SELECT pg_notify('belfry_rooms', $1)";

/// A change of who belongs in a topic's room, announced by the transaction that stored it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RoomChange {
    /// `user` subscribed to `topic`; every notification after `from` (the head when the
    /// subscription was stored) may be for them.
    Subscribed {
        /// The user.
        user: String,
        /// The topic.
        topic: String,
        /// The committed head when the subscription was stored.
        from: u64,
    },
    /// `user` unsubscribed from `topic`.
    Unsubscribed {
        /// The user.
        user: String,
        /// The topic.
        topic: String,
    },
}

/// What the listening connection reports about room changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A change, in commit order.
    Change(RoomChange),
    /// The listening connection was lost: changes may go unheard until [`RoomEvent::Resumed`].
    Lost,
    /// Listening again.
    Resumed,
}

/// The node's LISTEN connection (PostgreSQL): it wakes the feed for each commit and
/// reports room changes. Stops when dropped.
#[derive(Debug)]
pub struct Listener {
    notices: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Listens (returns once LISTEN is in place, so no change after this is unheard);
    /// room events go to `rooms`. `None` on SQLite.
    pub async fn start(
        store: &Store,
        rooms: mpsc::UnboundedSender<RoomEvent>,
    ) -> Result<Option<Listener>, super::StoreError> {
        let Pool::Postgres(pool) = &store.feed else {
            return Ok(None);
        };
        let listener = connect(pool).await?;
        let notices = Arc::new(Notify::new());
        let task = tokio::spawn(listen(pool.clone(), listener, notices.clone(), rooms));
        Ok(Some(Listener { notices, task }))
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all([CHANNEL, ROOMS]).await?;
    Ok(listener)
}
/// How often the store is read without a notice.
pub const POLL: Duration = Duration::from_secs(1);
/// The most notifications read from the store at once.
const PAGE: u32 = 500;

/// Hands `out` every notification committed after `delivered`, in id order, until the
/// writer stops (`local` closes). `local` carries this node's own commits.
pub async fn run(
    store: Store,
    listener: Listener,
    mut local: mpsc::Receiver<Vec<Committed>>,
    out: mpsc::Sender<Vec<Committed>>,
    mut delivered: u64,
) {
    let notices = listener.notices.clone();
    let mut failing = false;
    loop {
        let own = tokio::select! {
            batch = local.recv() => match batch {
                Some(batch) => Some(batch),
                None => break,
            },
            () = notices.notified() => None,
            () = tokio::time::sleep(POLL) => None,
        };
        if let Some(batch) = own
            && follows(&batch, delivered)
        {
            delivered = batch.last().map_or(delivered, |c| c.notification.id);
            if out.send(batch).await.is_err() {
                break;
            }
            continue;
        }
        match drain(&store, &out, &mut delivered).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read new notifications from the store; retrying");
            }
            Err(_) => {}
        }
        if out.is_closed() {
            break;
        }
    }
    drop(listener);
    tracing::debug!("store feed stopped");
}

/// Whether a batch of this node's commits continues straight on from `delivered` (ids
/// dense and starting right after it).
fn follows(batch: &[Committed], delivered: u64) -> bool {
    batch
        .first()
        .is_some_and(|c| c.notification.id == delivered + 1)
        && batch
            .windows(2)
            .all(|w| w[1].notification.id == w[0].notification.id + 1)
}

/// Hands on everything committed after `delivered`.
async fn drain(
    store: &Store,
    out: &mpsc::Sender<Vec<Committed>>,
    delivered: &mut u64,
) -> Result<(), super::StoreError> {
    loop {
        let rows = store.committed_after(*delivered, PAGE).await?;
        let full = rows.len() == PAGE as usize;
        let Some((last, _)) = rows.last() else {
            return Ok(());
        };
        *delivered = last.id;
        let received = Instant::now();
        let batch = rows
            .into_iter()
            .map(|(notification, targets)| Committed {
                notification,
                targets,
                received,
            })
            .collect();
        if out.send(batch).await.is_err() || !full {
            return Ok(());
        }
    }
}

/// Signals `notices` for each commit and after a lost connection (commits may have gone
/// unheard meanwhile); passes room changes on. Reconnects on its own; runs until aborted.
async fn listen(
    pool: PgPool,
    mut listener: PgListener,
    notices: Arc<Notify>,
    rooms: mpsc::UnboundedSender<RoomEvent>,
) {
    loop {
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) if n.channel() == ROOMS => match serde_json::from_str(n.payload()) {
                    Ok(change) => drop(rooms.send(RoomEvent::Change(change))),
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed room change"),
                },
                Ok(Some(_)) => notices.notify_one(),
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "commit listener failed");
                    break;
                }
            }
        }
        tracing::warn!("lost the connection that listens for commits; reconnecting");
        let _ = rooms.send(RoomEvent::Lost);
        let mut pause = Duration::from_millis(100);
        listener = loop {
            match connect(&pool).await {
                Ok(listener) => break listener,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot listen for commits yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(POLL);
                }
            }
        };
        tracing::info!("listening for commits again");
        let _ = rooms.send(RoomEvent::Resumed);
        // Anything committed while not listening.
        notices.notify_one();
    }
}
