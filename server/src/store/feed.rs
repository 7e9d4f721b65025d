//! The store's feed: what was committed, in order, for the node to act on.
//!
//! [`Feed`] carries two streams: every committed notification in id order (for
//! delivery), and every subscription change in commit order (for the rooms, see
//! `cluster.rs`). Both come from the writer's batches ([`super::Effects`]).
//!
//! With SQLite, one writer assigns every id, and its commits are the feed as they are.
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
//! is announced by its own transaction ([`announce`]), so every node hears it right after
//! it commits, whether or not Redis is up.
//!
//! The feed also keeps the node in its store's epoch. Every [`CHECK_EPOCH_EVERY`] it
//! re-reads the epoch (another node, or `belfry-server epoch --renew`, may have renewed
//! it) and compares the store's head with the highest id it handed out (a store that lost
//! commits, after a failover to a replica that lagged, gets a new epoch). A change of
//! epoch, however it was found, goes down the stream in its place among the commits
//! ([`Fed::NewEpoch`]), and the feed goes on from the head the epoch was taken up at:
//! what commits in the new epoch is handed out, even where its ids repeat old ones.

use super::Store;
use super::commits::{Committed, Effects, RoomChange};
use super::db::{Conn, Pool, on};
use super::epoch::Epoch;
use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::{PgListener, PgPool};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// The channel publishing transactions notify.
const CHANNEL: &str = "belfry_committed";
/// The statement a publishing transaction runs before its commit.
const NOTIFY_COMMITTED: &str = "SELECT pg_notify('belfry_committed', '')";
/// The channel of [`RoomChange`]s.
const ROOMS: &str = "belfry_rooms";
/// The statement that announces a [`RoomChange`] (`$1`: its JSON) at the commit.
const NOTIFY_ROOMS: &str = "SELECT pg_notify('belfry_rooms', $1)";

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
struct Listener {
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
    async fn start(
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
/// How the listening connection is made again: soon, then every [`POLL`], for as long
/// as it takes.
const RELISTEN: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(POLL)
    .without_max_times();
/// The most notifications read from the store at once.
const PAGE: u32 = 500;
/// How often the store's epoch and head are checked.
pub const CHECK_EPOCH_EVERY: Duration = Duration::from_secs(5);

/// One item of the stream of what was committed.
#[derive(Debug)]
pub enum Fed {
    /// Committed notifications, in id order after the ones before.
    Committed(Vec<Committed>),
    /// The store is in a new epoch from here on: what follows was committed in it, with
    /// ids above [`Epoch::since`].
    NewEpoch(Epoch),
}

/// What the store hands out (see the module documentation).
#[derive(Debug)]
pub struct Feed {
    /// Committed notifications in id order, a batch at a time, and epoch changes in
    /// their place among them.
    pub notifications: mpsc::Receiver<Fed>,
    /// Subscription changes in commit order, and the times they may have gone unheard.
    pub rooms: mpsc::UnboundedReceiver<RoomEvent>,
    /// The highest id committed when the feed started (what it hands out comes after).
    pub head: u64,
}

/// Starts the feed of a store from `head`; `own` carries this node's writer's effects.
/// Ends when the writer does.
pub(super) async fn start(
    store: &Store,
    own: mpsc::Receiver<Effects>,
    head: u64,
) -> Result<(Feed, tokio::task::JoinHandle<()>), super::StoreError> {
    let (notifications, notifications_rx) = mpsc::channel(64);
    let (rooms, rooms_rx) = mpsc::unbounded_channel();
    let task = match Listener::start(store, rooms.clone()).await? {
        // One writer assigns every id: its commits are the feed.
        None => tokio::spawn(forward(store.clone(), own, notifications, rooms, head)),
        // Several nodes may write: what any of them committed, in id order.
        Some(listener) => tokio::spawn(run(store.clone(), listener, own, notifications, head)),
    };
    let feed = Feed {
        notifications: notifications_rx,
        rooms: rooms_rx,
        head,
    };
    Ok((feed, task))
}

/// The feed of a store only this node writes to (SQLite).
async fn forward(
    store: Store,
    mut own: mpsc::Receiver<Effects>,
    notifications: mpsc::Sender<Fed>,
    rooms: mpsc::UnboundedSender<RoomEvent>,
    mut delivered: u64,
) {
    let mut epoch = Epochs::new(&store, delivered);
    loop {
        tokio::select! {
            biased;
            changed = epoch.changed() => {
                let Some(new) = changed else { break };
                delivered = delivered.min(new.since);
                epoch.note(delivered);
                if notifications.send(Fed::NewEpoch(new)).await.is_err() {
                    break;
                }
            }
            effects = own.recv() => {
                let Some(effects) = effects else { break };
                for change in effects.rooms {
                    let _ = rooms.send(RoomEvent::Change(change));
                }
                let Some(last) = effects.notifications.last() else { continue };
                // Committed in an epoch the feed has yet to hand on: that change first.
                if let Some(new) = epoch.pending_for(effects.epoch.as_deref()) {
                    delivered = delivered.min(new.since);
                    epoch.note(delivered);
                    if notifications.send(Fed::NewEpoch(new)).await.is_err() {
                        break;
                    }
                }
                if effects.epoch.as_deref().is_some_and(|e| *e != *epoch.now) {
                    // Of an epoch the store has left: committed before the change, so
                    // in the catch-ups of the sockets of the new one.
                    continue;
                }
                delivered = last.notification.id;
                epoch.note(delivered);
                if notifications.send(Fed::Committed(effects.notifications)).await.is_err() {
                    break;
                }
            }
        }
    }
    tracing::debug!("store feed stopped");
}

/// Tells the other nodes, at this transaction's commit, what it committed (PostgreSQL:
/// a notice that wakes their feeds, and each room change). Nothing on SQLite.
pub(super) async fn announce(conn: &mut Conn<'_>, effects: &Effects) -> Result<(), sqlx::Error> {
    if conn.dialect() == super::Dialect::Sqlite {
        return Ok(());
    }
    if !effects.notifications.is_empty() {
        conn.exec(NOTIFY_COMMITTED).await?;
    }
    for change in &effects.rooms {
        let payload = serde_json::to_string(change).unwrap_or_default();
        on!(conn, c => sqlx::query(NOTIFY_ROOMS).bind(&payload).execute(c).await.map(drop))?;
    }
    Ok(())
}

/// Hands `out` every notification committed after `delivered`, in id order, until the
/// writer stops (`own` closes). `own` carries this node's own commits (their room
/// changes come back through the listener, with every other node's).
async fn run(
    store: Store,
    listener: Listener,
    mut own: mpsc::Receiver<Effects>,
    out: mpsc::Sender<Fed>,
    mut delivered: u64,
) {
    let notices = listener.notices.clone();
    let mut failing = false;
    let mut epoch = Epochs::new(&store, delivered);
    loop {
        let mine = tokio::select! {
            biased;
            changed = epoch.changed() => {
                let Some(new) = changed else { break };
                // A store that lost commits issues their ids again above the head the
                // epoch was taken up at: the drain below hands out what the new epoch
                // committed meanwhile. (A renewal that lost nothing leaves it be.)
                delivered = delivered.min(new.since);
                epoch.note(delivered);
                if out.send(Fed::NewEpoch(new)).await.is_err() {
                    break;
                }
                None
            }
            effects = own.recv() => match effects {
                Some(effects) => Some(effects),
                None => break,
            },
            () = notices.notified() => None,
            () = tokio::time::sleep(POLL) => None,
        };
        if let Some(effects) = mine {
            let batch = effects.notifications;
            if batch.is_empty() {
                continue;
            }
            // Committed in an epoch the feed has yet to hand on: that change first.
            if let Some(new) = epoch.pending_for(effects.epoch.as_deref()) {
                delivered = delivered.min(new.since);
                epoch.note(delivered);
                if out.send(Fed::NewEpoch(new)).await.is_err() {
                    break;
                }
            }
            // Trusted as they are only when committed in the epoch the feed is in: a
            // batch of the old epoch may be one a failover lost, whose ids now name others.
            if effects.epoch.as_deref() == Some(&*epoch.now) && follows(&batch, delivered) {
                delivered = batch.last().map_or(delivered, |c| c.notification.id);
                epoch.note(delivered);
                if out.send(Fed::Committed(batch)).await.is_err() {
                    break;
                }
                continue;
            }
        }
        let drained = drain(&store, &out, &mut delivered).await;
        epoch.note(delivered);
        match drained {
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

/// What the feed has handed out: in which epoch, up to which id.
type HandedOut = std::sync::Mutex<(Arc<str>, u64)>;

/// The feed's view of the store's epoch: the changes to hand on, and what it handed out
/// for the periodic check, which runs in a task of its own ([`check_every`]) so that it
/// neither waits behind a feed that is busy nor holds one up.
struct Epochs {
    changes: tokio::sync::watch::Receiver<Epoch>,
    /// The epoch the feed is in (the last one it handed on).
    now: Arc<str>,
    handed_out: Arc<HandedOut>,
    check: tokio::task::JoinHandle<()>,
}

impl Drop for Epochs {
    fn drop(&mut self) {
        self.check.abort();
    }
}

impl Epochs {
    /// For a feed that has handed out ids up to `delivered`; starts the periodic check.
    fn new(store: &Store, delivered: u64) -> Epochs {
        let mut changes = store.epoch_changes();
        let now = changes.borrow_and_update().id.clone();
        let handed_out = Arc::new(std::sync::Mutex::new((now.clone(), delivered)));
        let check = tokio::spawn(check_every(store.clone(), handed_out.clone()));
        Epochs {
            changes,
            now,
            handed_out,
            check,
        }
    }

    /// The change to the epoch `of` (a batch's), if the store is in it and the feed has
    /// not handed that change on yet (it takes it, as [`Epochs::changed`] would).
    fn pending_for(&mut self, of: Option<&str>) -> Option<Epoch> {
        let of = of?;
        if *of == *self.now {
            return None;
        }
        let current = self.changes.borrow().clone();
        if *current.id != *of {
            // Not the store's epoch now: the batch is read again or dropped, and the
            // change comes through [`Epochs::changed`].
            return None;
        }
        self.changes.borrow_and_update();
        self.now = current.id.clone();
        Some(current)
    }

    /// Records that the feed has handed out ids up to `delivered`, in its epoch.
    fn note(&self, delivered: u64) {
        let mut handed_out = self.handed_out.lock().unwrap_or_else(|p| p.into_inner());
        *handed_out = (self.now.clone(), delivered);
    }

    /// The next new epoch; `None` once the store is gone.
    async fn changed(&mut self) -> Option<Epoch> {
        loop {
            self.changes.changed().await.ok()?;
            let new = self.changes.borrow_and_update().clone();
            if new.id != self.now {
                self.now = new.id.clone();
                return Some(new);
            }
        }
    }
}

/// Checks the store's epoch every [`CHECK_EPOCH_EVERY`] against what the feed handed out
/// (a change it finds reaches the feed through [`Epochs::changed`]).
async fn check_every(store: Store, handed_out: Arc<HandedOut>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(CHECK_EPOCH_EVERY).await;
        let (epoch, delivered) = handed_out.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match store.check_epoch(&epoch, Some(delivered)).await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot check the store's epoch; trying again");
            }
            Err(_) => {}
        }
    }
}

/// Hands on everything committed after `delivered`.
async fn drain(
    store: &Store,
    out: &mpsc::Sender<Fed>,
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
        if out.send(Fed::Committed(batch)).await.is_err() || !full {
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
        let relistened = (|| connect(&pool))
            .retry(RELISTEN)
            .notify(|e, _| tracing::debug!(error = %e, "cannot listen for commits yet"))
            .await;
        listener = match relistened {
            Ok(listener) => listener,
            // RELISTEN never gives up; this is only the type's other half.
            Err(_) => continue,
        };
        tracing::info!("listening for commits again");
        let _ = rooms.send(RoomEvent::Resumed);
        // Anything committed while not listening.
        notices.notify_one();
    }
}
