//! The single writer: group commit for every write the hub makes.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync. So all writes
//! are [`Operation`]s sent to one task that owns the write connection. It takes every
//! operation waiting in its queue (up to [`MAX_BATCH`]), applies each inside its own
//! savepoint (one bad operation never spoils the others), commits once, and only then
//! answers. What the batch committed that others must hear of (notifications to deliver,
//! room changes) goes to the store's feed (`feed.rs`) in commit order, which is id order,
//! because only this task assigns ids.
//!
//! With PostgreSQL, every node has a writer like this one. A batch that publishes first
//! locks the one-row `notification_head` table and takes each id from it, so batches
//! that publish commit one after another across all nodes, in id order: a reader that
//! sees id n committed also sees every smaller id that will ever be committed. Cursors
//! stay gap-free with any number of writers (see `feed.rs` for how nodes deliver).
//!
//! Each kind of write is one file here, implementing [`Operation`]: a new one is a new
//! file and its `pub mod` line below.

pub mod acks;
pub mod prune;
pub mod publish;
pub mod read;
pub mod subscriptions;

use super::commits::Effects;
use super::db::{Conn, Dialect, WriteConn};
use super::epoch::Mark;
use super::feed;
use super::{StoreError, now_ms};
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use tokio::sync::{mpsc, oneshot};

/// The most operations committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// The most operations in one PostgreSQL transaction: each has a savepoint, and past 64
/// subtransactions PostgreSQL's per-connection cache of them overflows, which slows
/// every other connection's snapshots while the transaction runs.
pub const MAX_BATCH_POSTGRES: usize = 64;

/// One kind of write, applied inside the writer's batch transaction in a savepoint of its
/// own: if it fails, only its own changes are rolled back.
pub(crate) trait Operation: Send + 'static {
    /// What the caller gets once the batch has committed.
    type Output: Send + 'static;
    /// Its name, for logs.
    const NAME: &'static str;
    /// Whether the batch must take the notification ids before it (PostgreSQL: the lock
    /// on the head that makes ids commit in order across nodes).
    const TAKES_IDS: bool = false;

    /// Applies the operation on the batch's connection. What the commit makes true that
    /// others must hear of goes into `effects` (kept only if the operation succeeds).
    fn apply(
        self,
        conn: &mut Conn<'_>,
        effects: &mut Effects,
    ) -> impl Future<Output = Result<Self::Output, StoreError>> + Send;
}

/// An operation with the caller waiting for its answer.
trait Queued: Send {
    fn takes_ids(&self) -> bool;
    fn apply<'a, 'c: 'a>(
        self: Box<Self>,
        conn: &'a mut Conn<'c>,
        effects: &'a mut Effects,
    ) -> BoxFuture<'a, Box<dyn Answer>>;
    /// The answer of an operation that was never applied.
    fn unapplied(self: Box<Self>, why: StoreError);
}

/// An applied operation's answer, held until the commit.
trait Answer: Send {
    fn is_ok(&self) -> bool;
    /// The batch did not commit: the operation failed whatever it did.
    fn fail(&mut self, why: &str);
    fn send(self: Box<Self>);
}

struct Job<O: Operation> {
    op: O,
    reply: oneshot::Sender<Result<O::Output, StoreError>>,
}

struct Done<T> {
    reply: oneshot::Sender<Result<T, StoreError>>,
    result: Result<T, StoreError>,
}

impl<O: Operation> Queued for Job<O> {
    fn takes_ids(&self) -> bool {
        O::TAKES_IDS
    }

    fn apply<'a, 'c: 'a>(
        self: Box<Self>,
        conn: &'a mut Conn<'c>,
        effects: &'a mut Effects,
    ) -> BoxFuture<'a, Box<dyn Answer>> {
        let Job { op, reply } = *self;
        Box::pin(async move {
            let result = op.apply(conn, effects).await;
            if let Err(e) = &result {
                tracing::debug!(operation = O::NAME, error = %e, "write refused");
            }
            Box::new(Done { reply, result }) as Box<dyn Answer>
        })
    }

    fn unapplied(self: Box<Self>, why: StoreError) {
        // A caller that gave up waiting is not an error.
        let _ = self.reply.send(Err(why));
    }
}

impl<T: Send + 'static> Answer for Done<T> {
    fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    fn fail(&mut self, why: &str) {
        self.result = Err(StoreError::Commit(why.to_owned()));
    }

    fn send(self: Box<Self>) {
        let _ = self.reply.send(self.result);
    }
}

enum Message {
    Op(Box<dyn Queued>),
    /// Finish what was queued before, then stop.
    Close(oneshot::Sender<()>),
}

/// How the writer is doing, for the health check (read without queueing behind writes).
#[derive(Debug, Default)]
struct Progress {
    /// When the batch being written began (Unix ms), 0 while idle.
    busy_since_ms: AtomicI64,
    /// Batches committed.
    batches: AtomicU64,
}

/// Submits writes to the writer task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Message>,
    progress: Arc<Progress>,
}

/// The writer task's state: its connection and queue. Run it with [`Writer::run`].
pub struct Writer {
    conn: WriteConn,
    rx: mpsc::Receiver<Message>,
    progress: Arc<Progress>,
    /// Where the highest id handed out is noted (see `epoch.rs`).
    mark: Mark,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl WriterHandle {
    /// Submits an operation; answers once the batch holding it has committed.
    pub(crate) async fn submit<O: Operation>(&self, op: O) -> Result<O::Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Message::Op(Box::new(Job { op, reply })))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops the writer once everything queued before this call is committed. Later
    /// writes fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether the writer task still runs and no batch has been stuck for longer than
    /// `stuck_after` (a batch waiting on a lock, or a database that stopped answering).
    pub fn is_healthy(&self, stuck_after: std::time::Duration) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let since = self.progress.busy_since_ms.load(Relaxed);
        let stuck_ms = i64::try_from(stuck_after.as_millis()).unwrap_or(i64::MAX);
        since == 0 || now_ms() - since < stuck_ms
    }

    /// How many batches the writer has committed.
    pub fn batches(&self) -> u64 {
        self.progress.batches.load(Relaxed)
    }
}

impl Writer {
    pub(super) fn new(conn: WriteConn, mark: Mark) -> (Writer, WriterHandle) {
        let (tx, rx) = mpsc::channel(16 * MAX_BATCH);
        let progress = Arc::new(Progress::default());
        (
            Writer {
                conn,
                rx,
                progress: progress.clone(),
                mark,
            },
            WriterHandle { tx, progress },
        )
    }

    /// Runs until every [`WriterHandle`] is dropped or one closes it, then closes the
    /// connection cleanly. What each batch committed goes to `committed`, one message per
    /// transaction.
    pub async fn run(mut self, committed: mpsc::Sender<Effects>) {
        let limit = match self.conn.dialect() {
            Dialect::Sqlite => MAX_BATCH,
            Dialect::Postgres => MAX_BATCH_POSTGRES,
        };
        let mut messages = Vec::with_capacity(limit);
        let mut closed = None;
        while closed.is_none() && self.rx.recv_many(&mut messages, limit).await > 0 {
            let mut batch = Vec::with_capacity(messages.len());
            for message in messages.drain(..) {
                match message {
                    // Everything after a close is refused; everything before commits.
                    Message::Op(op) if closed.is_some() => op.unapplied(StoreError::Closed),
                    Message::Op(op) => batch.push(op),
                    Message::Close(done) if closed.is_none() => closed = Some(done),
                    Message::Close(done) => drop(done.send(())),
                }
            }
            if closed.is_some() {
                self.rx.close();
            }
            self.progress.busy_since_ms.store(now_ms(), Relaxed);
            let epoch = self.mark.epoch();
            let (answers, mut effects) = self.commit(batch).await;
            self.progress.busy_since_ms.store(0, Relaxed);
            if let Some(last) = effects.notifications.last() {
                self.mark.note(last.notification.id);
            }
            if !effects.is_empty() {
                // The epoch of the commit, unless it changed while the commit ran.
                effects.epoch = (*self.mark.epoch() == *epoch).then_some(epoch);
                // Delivery is best effort once stored: if it has stopped, clients catch up.
                let _ = committed.send(effects).await;
            }
            answers.into_iter().for_each(|a| a.send());
        }
        // Refuse whatever raced in after the close.
        while let Ok(message) = self.rx.try_recv() {
            match message {
                Message::Op(op) => op.unapplied(StoreError::Closed),
                Message::Close(done) => drop(done.send(())),
            }
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the write connection");
        }
        tracing::debug!("store writer stopped");
        if let Some(done) = closed {
            let _ = done.send(());
        }
    }

    /// Applies a batch in one transaction; the answers to send and, if it committed, its
    /// effects.
    async fn commit(&mut self, batch: Vec<Box<dyn Queued>>) -> (Vec<Box<dyn Answer>>, Effects) {
        if batch.is_empty() {
            return (Vec::new(), Effects::default());
        }
        let dialect = self.conn.dialect();
        let takes_ids = batch.iter().any(|op| op.takes_ids());
        let mut held = match self.conn.hold().await {
            Ok(held) => held,
            Err(e) => return refuse(batch, "cannot reach the database", &e),
        };
        let mut conn = held.conn();
        if let Err(e) = conn.exec(dialect.begin_write()).await {
            return refuse(batch, "cannot begin a write transaction", &e);
        }
        if takes_ids
            && dialect == Dialect::Postgres
            // Before any idempotency lookup: publishes of all nodes take turns from here,
            // so a key repeated on two nodes at once is stored once.
            && let Err(e) = conn
                .exec("SELECT id FROM notification_head FOR UPDATE")
                .await
        {
            let _ = conn.exec("ROLLBACK").await;
            return refuse(batch, "cannot lock the notification ids", &e);
        }
        let mut answers: Vec<Box<dyn Answer>> = Vec::with_capacity(batch.len());
        let mut effects = Effects::default();
        let mut ops = batch.into_iter();
        while let Some(op) = ops.next() {
            if let Err(e) = conn.exec("SAVEPOINT op").await {
                op.unapplied(StoreError::Commit(e.to_string()));
                return abandon(&mut conn, answers, ops, &e.to_string()).await;
            }
            let mut own = Effects::default();
            let answer = op.apply(&mut conn, &mut own).await;
            let undo = if answer.is_ok() {
                conn.exec("RELEASE op").await
            } else {
                match conn.exec("ROLLBACK TO op").await {
                    Ok(()) => conn.exec("RELEASE op").await,
                    Err(e) => Err(e),
                }
            };
            let ok = answer.is_ok();
            answers.push(answer);
            if let Err(e) = undo {
                // SQLite may have rolled back the whole transaction by itself (disk full,
                // I/O error): carrying on would commit later operations one by one while
                // reporting them failed. Refuse the whole batch instead.
                return abandon(&mut conn, answers, ops, &e.to_string()).await;
            }
            if ok {
                effects.extend(own);
            }
        }
        if let Err(e) = feed::announce(&mut conn, &effects).await {
            return abandon(&mut conn, answers, ops, &e.to_string()).await;
        }
        if let Err(e) = conn.exec("COMMIT").await {
            tracing::error!(error = %e, "commit failed; the whole batch is refused");
            let _ = conn.exec("ROLLBACK").await;
            let why = e.to_string();
            answers.iter_mut().for_each(|a| a.fail(&why));
            return (answers, Effects::default());
        }
        self.progress.batches.fetch_add(1, Relaxed);
        (answers, effects)
    }
}

/// Refuses a whole batch that could not start.
fn refuse(
    batch: Vec<Box<dyn Queued>>,
    what: &str,
    e: &sqlx::Error,
) -> (Vec<Box<dyn Answer>>, Effects) {
    tracing::error!(error = %e, "{what}; the batch is refused");
    for op in batch {
        op.unapplied(StoreError::Commit(e.to_string()));
    }
    (Vec::new(), Effects::default())
}

/// Rolls back and refuses every operation of the batch: those applied, and the rest.
async fn abandon(
    conn: &mut Conn<'_>,
    mut applied: Vec<Box<dyn Answer>>,
    rest: impl Iterator<Item = Box<dyn Queued>>,
    why: &str,
) -> (Vec<Box<dyn Answer>>, Effects) {
    tracing::error!(error = %why, "write transaction failed; the whole batch is refused");
    let _ = conn.exec("ROLLBACK").await;
    applied.iter_mut().for_each(|a| a.fail(why));
    for op in rest {
        op.unapplied(StoreError::Commit(why.to_owned()));
    }
    (applied, Effects::default())
}

/// An id as the databases store it.
fn id_param(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// JSON text of a value stored in a JSON column (strings, actions, JSON values: these
/// always serialize).
fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}
