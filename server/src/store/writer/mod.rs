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
//! Operations of a kind that can be applied together ([`Operation::apply_all`], today
//! publishes) and that stand next to each other in a batch form one unit: one savepoint
//! and a few statements for all of them instead of a few each. If a unit fails, its
//! savepoint is rolled back and its operations are applied one by one, so one bad
//! operation still spoils only itself.
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
use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use tokio::sync::{mpsc, oneshot};

/// The most operations the writer takes from its queue at once.
pub const MAX_BATCH: usize = 512;
/// The most units (savepoints) in one PostgreSQL transaction: past 64 subtransactions
/// PostgreSQL's per-connection cache of them overflows, which slows every other
/// connection's snapshots while the transaction runs. A batch of more is committed as
/// several transactions, in order.
pub const MAX_UNITS_POSTGRES: usize = 64;

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

    /// Whether this operation may be applied together with operations of its kind next to
    /// it in the batch, through [`Operation::apply_all`].
    fn joins(&self) -> bool {
        false
    }

    /// Applies `ops` (two or more that [`Operation::joins`], in batch order) together and
    /// returns their outputs in the same order; what the commit will make true goes into
    /// `effects` as [`Operation::apply`] would put it there one by one. On an error the
    /// writer rolls back whatever this did and applies the operations one by one.
    fn apply_all(
        ops: &[&Self],
        conn: &mut Conn<'_>,
        effects: &mut Effects,
    ) -> impl Future<Output = Result<Vec<Self::Output>, StoreError>> + Send
    where
        Self: Sized + Sync,
    {
        let _ = (ops, conn, effects);
        std::future::ready(Err(StoreError::Commit(format!(
            "{} operations are applied one by one",
            Self::NAME
        ))))
    }
}

/// An operation with the caller waiting for its answer, or several of one kind applied
/// together (a unit).
trait Queued: Send {
    fn takes_ids(&self) -> bool;
    /// Applies the unit. Several operations that could not be applied together come back
    /// as [`Applied::Apart`], each to be applied alone.
    fn apply<'a, 'c: 'a>(
        self: Box<Self>,
        conn: &'a mut Conn<'c>,
        effects: &'a mut Effects,
    ) -> BoxFuture<'a, Applied>;
    /// Answers every operation of the unit that it was never applied.
    fn unapplied(self: Box<Self>, why: StoreError);
    /// Takes `next` into this unit if both may be applied together; gives it back if not.
    fn join(&mut self, next: Box<dyn Queued>) -> Result<(), Box<dyn Queued>>;
    /// Whether this unit is alone and may take others of its kind.
    fn joins(&self) -> bool;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    fn as_any(&self) -> &(dyn Any + Send);
}

/// What applying a unit came to.
enum Applied {
    /// The answers, in the unit's order: every one failed or every one succeeded when
    /// the unit held more than one.
    Answers(Vec<Box<dyn Answer>>),
    /// The operations of a unit that failed together, to be applied one by one.
    Apart(Vec<Box<dyn Queued>>),
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
    /// Operations of the same kind applied together with this one, in batch order.
    joined: Vec<Job<O>>,
}

struct Done<T> {
    reply: oneshot::Sender<Result<T, StoreError>>,
    result: Result<T, StoreError>,
}

impl<O: Operation + Sync> Queued for Job<O> {
    fn takes_ids(&self) -> bool {
        O::TAKES_IDS
    }

    fn apply<'a, 'c: 'a>(
        self: Box<Self>,
        conn: &'a mut Conn<'c>,
        effects: &'a mut Effects,
    ) -> BoxFuture<'a, Applied> {
        let Job { op, reply, joined } = *self;
        Box::pin(async move {
            if joined.is_empty() {
                let result = op.apply(conn, effects).await;
                if let Err(e) = &result {
                    tracing::debug!(operation = O::NAME, error = %e, "write refused");
                }
                return Applied::Answers(vec![Box::new(Done { reply, result })]);
            }
            let jobs: Vec<Job<O>> = std::iter::once(Job {
                op,
                reply,
                joined: Vec::new(),
            })
            .chain(joined)
            .collect();
            let ops: Vec<&O> = jobs.iter().map(|job| &job.op).collect();
            let outputs = O::apply_all(&ops, conn, effects).await;
            drop(ops);
            match outputs {
                Ok(outputs) if outputs.len() == jobs.len() => Applied::Answers(
                    jobs.into_iter()
                        .zip(outputs)
                        .map(|(job, output)| {
                            Box::new(Done {
                                reply: job.reply,
                                result: Ok(output),
                            }) as Box<dyn Answer>
                        })
                        .collect(),
                ),
                outcome => {
                    if let Err(e) = outcome {
                        tracing::debug!(operation = O::NAME, error = %e, "applying one by one");
                    }
                    Applied::Apart(
                        jobs.into_iter()
                            .map(|job| Box::new(job) as Box<dyn Queued>)
                            .collect(),
                    )
                }
            }
        })
    }

    fn unapplied(self: Box<Self>, why: StoreError) {
        let Job { reply, joined, .. } = *self;
        for job in joined {
            // A caller that gave up waiting is not an error.
            let _ = job.reply.send(Err(same_error(&why)));
        }
        let _ = reply.send(Err(why));
    }

    fn join(&mut self, next: Box<dyn Queued>) -> Result<(), Box<dyn Queued>> {
        if !(self.op.joins() && next.joins() && next.as_any().is::<Self>()) {
            return Err(next);
        }
        match next.into_any().downcast::<Self>() {
            Ok(job) => {
                self.joined.push(*job);
                Ok(())
            }
            // Checked above: `next` is a `Job<O>`.
            Err(_) => unreachable!("a unit joins only its own kind"),
        }
    }

    fn joins(&self) -> bool {
        self.joined.is_empty() && self.op.joins()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    fn as_any(&self) -> &(dyn Any + Send) {
        self
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
    /// Operations committed in units of more than one.
    joined: AtomicU64,
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
    pub(crate) async fn submit<O: Operation + Sync>(&self, op: O) -> Result<O::Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Message::Op(Box::new(Job {
                op,
                reply,
                joined: Vec::new(),
            })))
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

    /// How many operations the writer has committed together with others of their kind
    /// (in units of more than one).
    pub fn joined(&self) -> u64 {
        self.progress.joined.load(Relaxed)
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
        let most_units = match self.conn.dialect() {
            Dialect::Sqlite => MAX_BATCH,
            Dialect::Postgres => MAX_UNITS_POSTGRES,
        };
        let mut messages = Vec::with_capacity(MAX_BATCH);
        let mut closed = None;
        while closed.is_none() && self.rx.recv_many(&mut messages, MAX_BATCH).await > 0 {
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
            let mut units = into_units(batch);
            while !units.is_empty() {
                let rest = units.split_off(units.len().min(most_units));
                let transaction = std::mem::replace(&mut units, rest);
                let left = self
                    .commit_and_answer(transaction, most_units, &committed)
                    .await;
                // What did not fit in that transaction goes first in the next.
                units.splice(0..0, left);
            }
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

    /// Commits `units` in one transaction of at most `savepoints` savepoints, hands what
    /// it committed to `committed`, then answers. Returns the operations that did not fit
    /// (a unit that fell apart needs a savepoint for each of its operations).
    async fn commit_and_answer(
        &mut self,
        units: Vec<Box<dyn Queued>>,
        savepoints: usize,
        committed: &mpsc::Sender<Effects>,
    ) -> Vec<Box<dyn Queued>> {
        self.progress.busy_since_ms.store(now_ms(), Relaxed);
        let epoch = self.mark.epoch();
        let mut left = Vec::new();
        let (answers, mut effects) = self.commit(units, savepoints, &mut left).await;
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
        left
    }

    /// Applies units in one transaction of at most `savepoints` savepoints; the answers to
    /// send and, if it committed, its effects. Where a unit falls apart and its operations
    /// would take the transaction past `savepoints`, they and the units after them go to
    /// `left`, unapplied, and the transaction commits what it applied before them.
    async fn commit(
        &mut self,
        batch: Vec<Box<dyn Queued>>,
        savepoints: usize,
        left: &mut Vec<Box<dyn Queued>>,
    ) -> (Vec<Box<dyn Answer>>, Effects) {
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
        let mut joined = 0;
        let mut units = batch.into_iter();
        let mut used = 0;
        while let Some(unit) = units.next() {
            used += 1;
            let before = answers.len();
            let apart = match apply_in_savepoint(&mut conn, unit, &mut answers, &mut effects).await
            {
                Ok(None) => {
                    let applied = answers.len() - before;
                    if applied > 1 {
                        joined += applied as u64;
                    }
                    continue;
                }
                Ok(Some(apart)) => apart,
                Err(e) => return abandon(&mut conn, answers, units, &e).await,
            };
            if used + apart.len() > savepoints {
                left.extend(apart);
                left.extend(units.by_ref());
                break;
            }
            used += apart.len();
            let mut apart = apart.into_iter();
            while let Some(op) = apart.next() {
                // Alone, a unit's answers always come back.
                if let Err(e) = apply_in_savepoint(&mut conn, op, &mut answers, &mut effects).await
                {
                    return abandon(&mut conn, answers, apart.chain(units), &e).await;
                }
            }
        }
        if let Err(e) = feed::announce(&mut conn, &effects).await {
            return abandon(&mut conn, answers, units, &e.to_string()).await;
        }
        if let Err(e) = conn.exec("COMMIT").await {
            tracing::error!(error = %e, "commit failed; the whole batch is refused");
            let _ = conn.exec("ROLLBACK").await;
            let why = e.to_string();
            answers.iter_mut().for_each(|a| a.fail(&why));
            return (answers, Effects::default());
        }
        self.progress.batches.fetch_add(1, Relaxed);
        self.progress.joined.fetch_add(joined, Relaxed);
        (answers, effects)
    }
}

/// The batch's operations in units: each operation that joins others takes in those of its
/// kind that follow it.
fn into_units(batch: Vec<Box<dyn Queued>>) -> Vec<Box<dyn Queued>> {
    let mut units: Vec<Box<dyn Queued>> = Vec::with_capacity(batch.len());
    for op in batch {
        let op = match units.last_mut() {
            Some(unit) => match unit.join(op) {
                Ok(()) => continue,
                Err(op) => op,
            },
            None => op,
        };
        units.push(op);
    }
    units
}

/// Applies one unit in a savepoint of its own. Its answers go to `answers` and, if it
/// succeeded, its effects to `effects`; a unit whose operations could not be applied
/// together comes back to be applied one by one (its savepoint rolled back). An error is
/// one the batch cannot go on after (the unit's answers are in `answers` by then).
async fn apply_in_savepoint(
    conn: &mut Conn<'_>,
    unit: Box<dyn Queued>,
    answers: &mut Vec<Box<dyn Answer>>,
    effects: &mut Effects,
) -> Result<Option<Vec<Box<dyn Queued>>>, String> {
    if let Err(e) = conn.exec("SAVEPOINT op").await {
        unit.unapplied(StoreError::Commit(e.to_string()));
        return Err(e.to_string());
    }
    let mut own = Effects::default();
    let (ok, apart) = match unit.apply(conn, &mut own).await {
        Applied::Answers(done) => {
            let ok = done.iter().all(|a| a.is_ok());
            answers.extend(done);
            (ok, None)
        }
        Applied::Apart(ops) => (false, Some(ops)),
    };
    let undo = if ok {
        conn.exec("RELEASE op").await
    } else {
        match conn.exec("ROLLBACK TO op").await {
            Ok(()) => conn.exec("RELEASE op").await,
            Err(e) => Err(e),
        }
    };
    if let Err(e) = undo {
        // SQLite may have rolled back the whole transaction by itself (disk full, I/O
        // error): carrying on would commit later operations one by one while reporting
        // them failed. Refuse the whole batch instead.
        let why = e.to_string();
        for op in apart.into_iter().flatten() {
            op.unapplied(StoreError::Commit(why.clone()));
        }
        return Err(why);
    }
    if ok {
        effects.extend(own);
    }
    Ok(apart)
}

/// The same error again, for the other operations of a unit that was not applied.
fn same_error(why: &StoreError) -> StoreError {
    match why {
        StoreError::Closed => StoreError::Closed,
        StoreError::TooManySubscriptions(n) => StoreError::TooManySubscriptions(*n),
        other => StoreError::Commit(other.to_string()),
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
