//! The single writer: group commit for every write the hub makes.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync. So all writes
//! (publishes, acks, reads, subscriptions, pruning) are operations sent to one task that
//! owns the write connection. It takes every operation waiting in its queue (up to
//! [`MAX_BATCH`]), applies each inside its own savepoint (one bad operation never spoils
//! the others), commits once, and only then answers. Committed notifications are handed
//! on in id order, which is commit order, because only this task assigns ids.
//!
//! With PostgreSQL, every node has a writer like this one. A batch that publishes first
//! locks the one-row `notification_head` table and takes each id from it, so batches
//! that publish commit one after another across all nodes, in id order: a reader that
//! sees id n committed also sees every smaller id that will ever be committed. Cursors
//! stay gap-free with any number of writers (see `feed.rs` for how nodes deliver).

use super::db::{Conn, Dialect, WriteConn, on};
use super::feed::RoomChange;
use super::{StoreError, Viewer, feed, head_id, now_ms, rows, target_key, visible_ids};
use belfry_protocol::{Notification, Target, TopicPatterns, ValidPublish};
use std::time::Instant;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

/// The most operations committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// The most operations in one PostgreSQL transaction: each has a savepoint, and past 64
/// subtransactions PostgreSQL's per-connection cache of them overflows, which slows
/// every other connection's snapshots while the transaction runs.
pub const MAX_BATCH_POSTGRES: usize = 64;
/// How long an idempotency key is remembered, in milliseconds.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// The most notifications one prune operation deletes (so a prune never holds the writer
/// for long; the pruner repeats until less was deleted).
pub const PRUNE_CHUNK: i64 = 5_000;

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

/// A committed notification on its way to delivery.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The notification as subscribers receive it.
    pub notification: Notification,
    /// Who it is for.
    pub targets: Vec<Target>,
    /// When the hub received the publish (for the publish-to-emit latency).
    pub received: Instant,
}

/// Which notifications a read marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadSelection {
    /// These ids (those not visible to the user are ignored).
    Ids(Vec<u64>),
    /// Every visible notification up to and including this id.
    UpTo(u64),
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Notifications deleted because they expired.
    pub expired: u64,
    /// Notifications deleted because their targets were over the cap.
    pub trimmed: u64,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One user's delivery acknowledgement: everything up to `up_to` that a device whose
/// token allows `allowed` may see.
#[derive(Debug, Clone, PartialEq)]
pub struct AckPoint {
    /// The user.
    pub user: String,
    /// The acking device's topic patterns.
    pub allowed: TopicPatterns,
    /// The highest id acknowledged.
    pub up_to: u64,
}

enum Op {
    Publish {
        req: Box<ValidPublish>,
        ttl_secs: u64,
        received: Instant,
        reply: Reply<Published>,
    },
    Acks {
        points: Vec<AckPoint>,
        reply: Reply<u64>,
    },
    Read {
        viewer: Viewer,
        selection: ReadSelection,
        reply: Reply<u64>,
    },
    Subscribe {
        user: String,
        topic: String,
        max: u32,
        reply: Reply<bool>,
    },
    Unsubscribe {
        user: String,
        topic: String,
        reply: Reply<bool>,
    },
    Prune {
        max_per_target: u32,
        reply: Reply<PruneReport>,
    },
    /// Checks the write connection answers.
    Ping { reply: Reply<bool> },
    /// Finish what was queued before, then stop.
    Close(oneshot::Sender<()>),
}

/// An applied operation waiting for the commit before it answers.
enum Outcome {
    Publish(Reply<Published>, Result<Published, StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
    Flag(Reply<bool>, Result<bool, StoreError>),
    Prune(Reply<PruneReport>, Result<PruneReport, StoreError>),
    /// A close that was already answered.
    Closed,
}

impl Outcome {
    fn is_ok(&self) -> bool {
        match self {
            Outcome::Publish(_, r) => r.is_ok(),
            Outcome::Count(_, r) => r.is_ok(),
            Outcome::Flag(_, r) => r.is_ok(),
            Outcome::Prune(_, r) => r.is_ok(),
            Outcome::Closed => true,
        }
    }

    fn fail(self, why: &str) -> Outcome {
        fn err<T>(why: &str) -> Result<T, StoreError> {
            Err(StoreError::Commit(why.to_owned()))
        }
        match self {
            Outcome::Publish(tx, _) => Outcome::Publish(tx, err(why)),
            Outcome::Count(tx, _) => Outcome::Count(tx, err(why)),
            Outcome::Flag(tx, _) => Outcome::Flag(tx, err(why)),
            Outcome::Prune(tx, _) => Outcome::Prune(tx, err(why)),
            Outcome::Closed => Outcome::Closed,
        }
    }

    fn send(self) {
        // A caller that gave up waiting is not an error.
        match self {
            Outcome::Publish(tx, r) => drop(tx.send(r)),
            Outcome::Count(tx, r) => drop(tx.send(r)),
            Outcome::Flag(tx, r) => drop(tx.send(r)),
            Outcome::Prune(tx, r) => drop(tx.send(r)),
            Outcome::Closed => {}
        }
    }
}

/// Submits writes to the writer task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Op>,
}

/// The writer task's state: its connection and queue. Run it with [`Writer::run`].
#[derive(Debug)]
pub struct Writer {
    conn: WriteConn,
    rx: mpsc::Receiver<Op>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Publish { .. } => "Publish",
            Op::Acks { .. } => "Acks",
            Op::Read { .. } => "Read",
            Op::Subscribe { .. } => "Subscribe",
            Op::Unsubscribe { .. } => "Unsubscribe",
            Op::Prune { .. } => "Prune",
            Op::Ping { .. } => "Ping",
            Op::Close(_) => "Close",
        })
    }
}

impl WriterHandle {
    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores a notification; answers once it is committed.
    pub async fn publish(
        &self,
        req: ValidPublish,
        ttl_secs: u64,
        received: Instant,
    ) -> Result<Published, StoreError> {
        self.submit(|reply| Op::Publish {
            req: Box::new(req),
            ttl_secs,
            received,
            reply,
        })
        .await
    }

    /// Records that the viewer's device stored everything visible up to `up_to` (capped
    /// at the head). Returns the user's delivery watermark afterwards.
    pub async fn ack(&self, points: Vec<AckPoint>) -> Result<u64, StoreError> {
        self.submit(|reply| Op::Acks { points, reply }).await
    }

    /// Marks notifications read; returns how many changed.
    pub async fn read(&self, viewer: Viewer, selection: ReadSelection) -> Result<u64, StoreError> {
        self.submit(|reply| Op::Read {
            viewer,
            selection,
            reply,
        })
        .await
    }

    /// Subscribes a user to a topic; `Ok(false)` when already subscribed.
    pub async fn subscribe(&self, user: &str, topic: &str, max: u32) -> Result<bool, StoreError> {
        self.submit(|reply| Op::Subscribe {
            user: user.to_owned(),
            topic: topic.to_owned(),
            max,
            reply,
        })
        .await
    }

    /// Unsubscribes; `Ok(false)` when the user was not subscribed.
    pub async fn unsubscribe(&self, user: &str, topic: &str) -> Result<bool, StoreError> {
        self.submit(|reply| Op::Unsubscribe {
            user: user.to_owned(),
            topic: topic.to_owned(),
            reply,
        })
        .await
    }

    /// Whether the writer and its connection answer.
    pub async fn ping(&self) -> bool {
        self.submit(|reply| Op::Ping { reply })
            .await
            .unwrap_or(false)
    }

    /// Stops the writer once everything queued before this call is committed. Later
    /// writes fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Deletes one chunk of expired notifications, trims targets over the cap and forgets
    /// old idempotency keys.
    pub async fn prune(&self, max_per_target: u32) -> Result<PruneReport, StoreError> {
        self.submit(|reply| Op::Prune {
            max_per_target,
            reply,
        })
        .await
    }
}

fn id_param(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// Marks delivered what a batch of ack points covers: `$1` the points as JSON
/// (`[{"u": user, "f": from, "t": to, "p": [visible topics]}]`), `$2` the time.
///
/// One indexed range per point and target kind (the primary key is kind, name, id).
/// CROSS JOIN keeps the points as the outer loop: left to itself, SQLite scanned every
/// stored target once per point (a test checks the plan).
fn mark_acked(dialect: Dialect) -> String {
    let points = dialect.json_values("$1", "point");
    let topics = dialect.json_texts("a.p", "topic");
    let order = dialect.lock_order("id, u");
    format!(
        "WITH a AS (SELECT value ->> 'u' AS u, CAST(value ->> 'f' AS BIGINT) AS f, \
                    CAST(value ->> 't' AS BIGINT) AS t, value -> 'p' AS p FROM {points}) \
         INSERT INTO user_state (user_id, notification_id, delivered_at) \
         SELECT u, id, $2 FROM ( \
           SELECT a.u AS u, n.notification_id AS id FROM a CROSS JOIN notification_targets n \
             WHERE n.kind = 0 AND n.name = a.u \
               AND n.notification_id > a.f AND n.notification_id <= a.t \
           UNION SELECT a.u, n.notification_id FROM a CROSS JOIN notification_targets n \
             WHERE n.kind = 2 AND n.name = '' \
               AND n.notification_id > a.f AND n.notification_id <= a.t \
           UNION SELECT a.u, n.notification_id FROM a CROSS JOIN {topics} \
             CROSS JOIN notification_targets n \
             WHERE n.kind = 1 AND n.name = topic.value \
               AND n.notification_id > a.f AND n.notification_id <= a.t) AS marked \
         WHERE true {order} \
         ON CONFLICT (user_id, notification_id) DO UPDATE \
         SET delivered_at = excluded.delivered_at WHERE user_state.delivered_at IS NULL"
    )
}

/// Raises the acking users' watermarks: `$1` the points as in [`mark_acked`].
fn raise_ack_watermarks(dialect: Dialect) -> String {
    let points = dialect.json_values("$1", "point");
    let order = dialect.lock_order("1");
    format!(
        "INSERT INTO users (user_id, acked_up_to) \
         SELECT value ->> 'u', max(CAST(value ->> 't' AS BIGINT)) FROM {points} \
         WHERE true GROUP BY value ->> 'u' {order} \
         ON CONFLICT (user_id) DO UPDATE SET acked_up_to = CASE \
           WHEN excluded.acked_up_to > users.acked_up_to THEN excluded.acked_up_to \
           ELSE users.acked_up_to END"
    )
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

impl Writer {
    pub(super) fn new(conn: WriteConn) -> (Writer, WriterHandle) {
        let (tx, rx) = mpsc::channel(16 * MAX_BATCH);
        (Writer { conn, rx }, WriterHandle { tx })
    }

    /// Runs until every [`WriterHandle`] is dropped and the queue is empty, then closes the
    /// connection cleanly. Committed notifications go to `committed`, one batch per
    /// transaction, in id order.
    pub async fn run(mut self, committed: mpsc::Sender<Vec<Committed>>) {
        let limit = match self.conn.dialect() {
            Dialect::Sqlite => MAX_BATCH,
            Dialect::Postgres => MAX_BATCH_POSTGRES,
        };
        let mut ops = Vec::with_capacity(limit);
        let mut closed = None;
        while closed.is_none() && self.rx.recv_many(&mut ops, limit).await > 0 {
            let mut batch = std::mem::take(&mut ops);
            if let Some(at) = batch.iter().position(|op| matches!(op, Op::Close(_))) {
                // Everything after the close is refused; everything before commits.
                for op in batch.split_off(at + 1) {
                    Self::placeholder(op).send();
                }
                if let Some(Op::Close(done)) = batch.pop() {
                    closed = Some(done);
                }
                self.rx.close();
            }
            let (outcomes, notes) = self.commit(batch).await;
            if !notes.is_empty() {
                // Delivery is best effort once stored: if it has stopped, clients catch up.
                let _ = committed.send(notes).await;
            }
            outcomes.into_iter().for_each(Outcome::send);
        }
        // Refuse whatever raced in after the close.
        while let Ok(op) = self.rx.try_recv() {
            Self::placeholder(op).send();
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the write connection");
        }
        tracing::debug!("store writer stopped");
        if let Some(done) = closed {
            let _ = done.send(());
        }
    }

    async fn commit(&mut self, batch: Vec<Op>) -> (Vec<Outcome>, Vec<Committed>) {
        let dialect = self.conn.dialect();
        let publishes = batch.iter().any(|op| matches!(op, Op::Publish { .. }));
        let mut held = match self.conn.hold().await {
            Ok(held) => held,
            Err(e) => return refuse(batch, "cannot reach the database", &e),
        };
        let mut conn = held.conn();
        if let Err(e) = conn.exec(dialect.begin_write()).await {
            return refuse(batch, "cannot begin a write transaction", &e);
        }
        if publishes
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
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut notes = Vec::new();
        let mut ops = batch.into_iter();
        while let Some(op) = ops.next() {
            if let Err(e) = conn.exec("SAVEPOINT op").await {
                outcomes.push(Self::placeholder(op));
                return abandon(&mut conn, outcomes, ops, &e.to_string()).await;
            }
            let (outcome, note) = Self::apply(&mut conn, op).await;
            let undo = if outcome.is_ok() {
                conn.exec("RELEASE op").await
            } else {
                match conn.exec("ROLLBACK TO op").await {
                    Ok(()) => conn.exec("RELEASE op").await,
                    Err(e) => Err(e),
                }
            };
            outcomes.push(outcome);
            if let Err(e) = undo {
                // SQLite may have rolled back the whole transaction by itself (disk full,
                // I/O error): carrying on would commit later operations one by one while
                // reporting them failed. Refuse the whole batch instead.
                return abandon(&mut conn, outcomes, ops, &e.to_string()).await;
            }
            notes.extend(note);
        }
        if !notes.is_empty()
            && dialect == Dialect::Postgres
            && let Err(e) = conn.exec(feed::NOTIFY_COMMITTED).await
        {
            return abandon(&mut conn, outcomes, ops, &e.to_string()).await;
        }
        if let Err(e) = conn.exec("COMMIT").await {
            tracing::error!(error = %e, "commit failed; the whole batch is refused");
            let _ = conn.exec("ROLLBACK").await;
            let why = e.to_string();
            return (
                outcomes.into_iter().map(|o| o.fail(&why)).collect(),
                Vec::new(),
            );
        }
        (outcomes, notes)
    }

    /// An outcome that only carries the reply channel, for operations never applied.
    fn placeholder(op: Op) -> Outcome {
        fn unapplied<T>() -> Result<T, StoreError> {
            Err(StoreError::Closed)
        }
        match op {
            Op::Publish { reply, .. } => Outcome::Publish(reply, unapplied()),
            Op::Acks { reply, .. } | Op::Read { reply, .. } => Outcome::Count(reply, unapplied()),
            Op::Subscribe { reply, .. } | Op::Unsubscribe { reply, .. } | Op::Ping { reply } => {
                Outcome::Flag(reply, unapplied())
            }
            Op::Prune { reply, .. } => Outcome::Prune(reply, unapplied()),
            Op::Close(done) => {
                let _ = done.send(());
                Outcome::Closed
            }
        }
    }

    async fn apply(conn: &mut Conn<'_>, op: Op) -> (Outcome, Option<Committed>) {
        match op {
            Op::Publish {
                req,
                ttl_secs,
                received,
                reply,
            } => match publish(conn, &req, ttl_secs).await {
                Ok((published, notification)) => {
                    let note = notification.map(|notification| Committed {
                        notification,
                        targets: req.targets,
                        received,
                    });
                    (Outcome::Publish(reply, Ok(published)), note)
                }
                Err(e) => (Outcome::Publish(reply, Err(e.into())), None),
            },
            Op::Acks { points, reply } => (
                Outcome::Count(reply, ack(conn, points).await.map_err(Into::into)),
                None,
            ),
            Op::Read {
                viewer,
                selection,
                reply,
            } => (
                Outcome::Count(
                    reply,
                    read(conn, &viewer, &selection).await.map_err(Into::into),
                ),
                None,
            ),
            Op::Subscribe {
                user,
                topic,
                max,
                reply,
            } => (
                Outcome::Flag(reply, subscribe(conn, &user, &topic, max).await),
                None,
            ),
            Op::Unsubscribe { user, topic, reply } => (
                Outcome::Flag(reply, unsubscribe(conn, user, topic).await),
                None,
            ),
            Op::Prune {
                max_per_target,
                reply,
            } => (
                Outcome::Prune(reply, prune(conn, max_per_target).await.map_err(Into::into)),
                None,
            ),
            Op::Ping { reply } => {
                let r = conn
                    .exec("SELECT 1")
                    .await
                    .map(|()| true)
                    .map_err(Into::into);
                (Outcome::Flag(reply, r), None)
            }
            close @ Op::Close(_) => (Self::placeholder(close), None),
        }
    }
}

/// Refuses a whole batch that could not start.
fn refuse(batch: Vec<Op>, what: &str, e: &sqlx::Error) -> (Vec<Outcome>, Vec<Committed>) {
    tracing::error!(error = %e, "{what}; the batch is refused");
    let why = e.to_string();
    let outcomes = batch
        .into_iter()
        .map(|op| Writer::placeholder(op).fail(&why))
        .collect();
    (outcomes, Vec::new())
}

/// Rolls back and refuses every operation of the batch: those applied, and the rest.
async fn abandon(
    conn: &mut Conn<'_>,
    applied: Vec<Outcome>,
    rest: impl Iterator<Item = Op>,
    why: &str,
) -> (Vec<Outcome>, Vec<Committed>) {
    tracing::error!(error = %why, "write transaction failed; the whole batch is refused");
    let _ = conn.exec("ROLLBACK").await;
    let outcomes = applied
        .into_iter()
        .chain(rest.map(Writer::placeholder))
        .map(|o| o.fail(why))
        .collect();
    (outcomes, Vec::new())
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

/// Records delivery receipts for many acks at once, in five statements however many
/// there are (one statement per ack kept the writer busy for seconds after every
/// publish to everyone, and publishes queued behind it). A user's points apply in
/// ascending order, each from where the one before left the watermark, so each marks
/// what its device's patterns may see. Returns how many points moved a watermark.
async fn ack(conn: &mut Conn<'_>, mut points: Vec<AckPoint>) -> Result<u64, sqlx::Error> {
    let dialect = conn.dialect();
    // Never move a watermark past what exists, or later notifications would be
    // skipped by the next ack.
    let head = head_id(conn).await?;
    points.sort_by(|a, b| a.user.cmp(&b.user).then(a.up_to.cmp(&b.up_to)));
    let users: Vec<&str> = points.iter().map(|p| p.user.as_str()).collect();
    let users_json = serde_json::to_string(&users).unwrap_or_else(|_| "[]".into());
    let users_in = dialect.json_texts("$1", "u");
    // The watermarks and topics of every user in the batch, read on the writer's own
    // connection: acks come by the thousand after a fan-out and must not queue for
    // the read pool.
    let marks: std::collections::HashMap<String, i64> = on!(conn, c => {
        sqlx::query_as(&format!(
            "SELECT user_id, acked_up_to FROM users WHERE user_id IN (SELECT value FROM {users_in})"
        ))
        .bind(&users_json)
        .fetch_all(c)
        .await?
        .into_iter()
        .collect()
    });
    let mut topics: std::collections::HashMap<String, Vec<String>> =
        std::collections::HashMap::new();
    let rows: Vec<(String, String)> = on!(conn, c => {
        sqlx::query_as(&format!(
            "SELECT user_id, topic FROM subscriptions \
             WHERE user_id IN (SELECT value FROM {users_in})"
        ))
        .bind(&users_json)
        .fetch_all(c)
        .await?
    });
    for (user, topic) in rows {
        topics.entry(user).or_default().push(topic);
    }
    // Each point's range (from, to] and the topics its device sees.
    let mut ranges = Vec::with_capacity(points.len());
    let mut last: Option<(&str, i64)> = None;
    for p in &points {
        let from = match last {
            Some((user, mark)) if user == p.user => mark,
            _ => marks.get(&p.user).copied().unwrap_or(0),
        };
        let to = id_param(p.up_to).min(head);
        if to <= from {
            last = Some((&p.user, from));
            continue;
        }
        let visible: Vec<&String> = topics
            .get(&p.user)
            .into_iter()
            .flatten()
            .filter(|t| p.allowed.allows(t))
            .collect();
        ranges.push(serde_json::json!({"u": p.user, "f": from, "t": to, "p": visible}));
        last = Some((&p.user, to));
    }
    if ranges.is_empty() {
        return Ok(0);
    }
    let ranges_json = serde_json::to_string(&ranges).unwrap_or_else(|_| "[]".into());
    let (mark, raise) = (mark_acked(dialect), raise_ack_watermarks(dialect));
    on!(conn, c => {
        sqlx::query(&mark)
            .bind(&ranges_json)
            .bind(now_ms())
            .execute(&mut *c)
            .await?;
        sqlx::query(&raise).bind(&ranges_json).execute(c).await?;
    });
    Ok(ranges.len() as u64)
}

async fn read(
    conn: &mut Conn<'_>,
    viewer: &Viewer,
    selection: &ReadSelection,
) -> Result<u64, sqlx::Error> {
    let dialect = conn.dialect();
    let upsert = "ON CONFLICT (user_id, notification_id) DO UPDATE \
         SET read_at = excluded.read_at, \
             delivered_at = coalesce(user_state.delivered_at, excluded.delivered_at) \
         WHERE user_state.read_at IS NULL";
    let now = now_ms();
    let result = match selection {
        ReadSelection::UpTo(up_to) => {
            let up_to = id_param(*up_to).min(head_id(conn).await?);
            let from: i64 = on!(conn, c => {
                sqlx::query_scalar(
                    "SELECT coalesce((SELECT read_scanned_up_to FROM users WHERE user_id = $1), 0)",
                )
                .bind(&viewer.user)
                .fetch_one(c)
                .await?
            });
            if up_to <= from {
                return Ok(0);
            }
            let sql = format!(
                "INSERT INTO user_state (user_id, notification_id, delivered_at, read_at) \
                 SELECT $1, id, $5, $5 FROM ({visible}) AS visible WHERE true {order} {upsert}",
                visible = visible_ids(dialect),
                order = dialect.lock_order("id")
            );
            on!(conn, c => {
                sqlx::query(
                    "INSERT INTO users (user_id, read_scanned_up_to) VALUES ($1, $2) \
                     ON CONFLICT (user_id) DO UPDATE SET read_scanned_up_to = CASE \
                       WHEN excluded.read_scanned_up_to > users.read_scanned_up_to \
                       THEN excluded.read_scanned_up_to ELSE users.read_scanned_up_to END",
                )
                .bind(&viewer.user)
                .bind(up_to)
                .execute(&mut *c)
                .await?;
                sqlx::query(&sql)
                    .bind(&viewer.user)
                    .bind(viewer.topics_json())
                    .bind(from)
                    .bind(up_to)
                    .bind(now)
                    .execute(c)
                    .await?
                    .rows_affected()
            })
        }
        ReadSelection::Ids(ids) => {
            let sql = format!(
                "INSERT INTO user_state (user_id, notification_id, delivered_at, read_at) \
                 SELECT $1, CAST(j.value AS BIGINT), $3, $3 FROM {ids} \
                 WHERE EXISTS (SELECT 1 FROM notification_targets t \
                    WHERE t.notification_id = CAST(j.value AS BIGINT) AND ( \
                        (t.kind = 0 AND t.name = $1) OR t.kind = 2 \
                        OR (t.kind = 1 AND t.name IN (SELECT value FROM {topics})))) \
                 {order} {upsert}",
                order = dialect.lock_order("2"),
                ids = dialect.json_texts("$4", "j"),
                topics = dialect.json_texts("$2", "topic"),
            );
            // Each id once (PostgreSQL refuses an upsert that touches a row twice), and
            // none past what an id can be.
            let ids: std::collections::BTreeSet<u64> = ids
                .iter()
                .copied()
                .filter(|&id| i64::try_from(id).is_ok())
                .collect();
            let ids_json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
            on!(conn, c => {
                sqlx::query(&sql)
                    .bind(&viewer.user)
                    .bind(viewer.topics_json())
                    .bind(now)
                    .bind(ids_json)
                    .execute(c)
                    .await?
                    .rows_affected()
            })
        }
    };
    Ok(result)
}

async fn subscribe(
    conn: &mut Conn<'_>,
    user: &str,
    topic: &str,
    max: u32,
) -> Result<bool, StoreError> {
    let (exists, count): (i64, i64) = on!(conn, c => {
        sqlx::query_as(
            "SELECT count(CASE WHEN topic = $2 THEN 1 END), count(*) FROM subscriptions \
             WHERE user_id = $1",
        )
        .bind(user)
        .bind(topic)
        .fetch_one(c)
        .await?
    });
    if exists > 0 {
        return Ok(false);
    }
    if count >= i64::from(max) {
        return Err(StoreError::TooManySubscriptions(max));
    }
    // DO NOTHING: another node may have stored the same subscription meanwhile.
    let added: u64 = on!(conn, c => {
        sqlx::query(
            "INSERT INTO subscriptions (user_id, topic, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, topic) DO NOTHING",
        )
        .bind(user)
        .bind(topic)
        .bind(now_ms())
        .execute(c)
        .await?
        .rows_affected()
    });
    if added > 0 && conn.dialect() == Dialect::Postgres {
        let from = u64::try_from(head_id(conn).await?).unwrap_or(0);
        let change = RoomChange::Subscribed {
            user: user.to_owned(),
            topic: topic.to_owned(),
            from,
        };
        announce(conn, &change).await?;
    }
    Ok(added > 0)
}

async fn unsubscribe(conn: &mut Conn<'_>, user: String, topic: String) -> Result<bool, StoreError> {
    let removed: u64 = on!(conn, c => {
        sqlx::query("DELETE FROM subscriptions WHERE user_id = $1 AND topic = $2")
            .bind(&user)
            .bind(&topic)
            .execute(c)
            .await?
            .rows_affected()
    });
    if removed > 0 && conn.dialect() == Dialect::Postgres {
        announce(conn, &RoomChange::Unsubscribed { user, topic }).await?;
    }
    Ok(removed > 0)
}

/// Tells every node about a room change when this transaction commits (PostgreSQL; see
/// `feed.rs`).
async fn announce(conn: &mut Conn<'_>, change: &RoomChange) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_string(change).unwrap_or_default();
    on!(conn, c => sqlx::query(feed::NOTIFY_ROOMS).bind(&payload).execute(c).await.map(drop))
}

/// The advisory lock a PostgreSQL prune holds, so one node prunes at a time (two pruning
/// the same rows would wait on each other, holding up their batches).
const PRUNE_LOCK: i64 = 0x6265_6c66_7279;

async fn prune(conn: &mut Conn<'_>, max_per_target: u32) -> Result<PruneReport, sqlx::Error> {
    if conn.dialect() == Dialect::Postgres {
        let ours: bool = on!(conn, c => {
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(PRUNE_LOCK)
                .fetch_one(c)
                .await?
        });
        if !ours {
            // Another node is pruning; the next round here will find less to do.
            return Ok(PruneReport::default());
        }
    }
    let now = now_ms();
    let expired = on!(conn, c => {
        sqlx::query(
            "DELETE FROM notifications WHERE id IN \
             (SELECT id FROM notifications WHERE expires_at <= $1 LIMIT $2)",
        )
        .bind(now)
        .bind(PRUNE_CHUNK)
        .execute(c)
        .await?
        .rows_affected()
    });
    let over: Vec<(i64, String)> = on!(conn, c => {
        sqlx::query_as(
            "SELECT kind, name FROM notification_targets GROUP BY kind, name HAVING count(*) > $1",
        )
        .bind(i64::from(max_per_target))
        .fetch_all(c)
        .await?
    });
    let mut trimmed_targets = 0;
    for (kind, name) in &over {
        trimmed_targets += on!(conn, c => {
            sqlx::query(
                "DELETE FROM notification_targets WHERE kind = $1 AND name = $2 \
                 AND notification_id < (SELECT notification_id FROM notification_targets \
                    WHERE kind = $1 AND name = $2 ORDER BY notification_id DESC LIMIT 1 OFFSET $3)",
            )
            .bind(kind)
            .bind(name)
            .bind(i64::from(max_per_target) - 1)
            .execute(c)
            .await?
            .rows_affected()
        });
    }
    let mut trimmed = 0;
    if trimmed_targets > 0 {
        // Notifications left with no target at all are unreachable: delete them.
        trimmed = on!(conn, c => {
            sqlx::query(
                "DELETE FROM notifications WHERE NOT EXISTS \
                 (SELECT 1 FROM notification_targets t WHERE t.notification_id = notifications.id)",
            )
            .execute(c)
            .await?
            .rows_affected()
        });
    }
    on!(conn, c => {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= $1")
            .bind(now - IDEMPOTENCY_WINDOW_MS)
            .execute(c)
            .await?;
    });
    Ok(PruneReport { expired, trimmed })
}

/// JSON text of a value stored in a JSON column (strings, actions, JSON values: these
/// always serialize).
fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use belfry_protocol::PublishRequest;

    async fn publish(store: &Store, to: &str) -> u64 {
        let req = PublishRequest {
            to: Some(vec![to.to_owned()]),
            title: Some(to.to_owned()),
            ..PublishRequest::default()
        };
        let valid = req.validate().expect("valid publish");
        store
            .writer()
            .publish(valid, 3_600, Instant::now())
            .await
            .expect("stored")
            .id
    }

    fn point(user: &str, patterns: &[&str], up_to: u64) -> AckPoint {
        AckPoint {
            user: user.to_owned(),
            allowed: TopicPatterns::new(patterns.iter().map(|p| (*p).to_owned()).collect()),
            up_to,
        }
    }

    /// Who has a delivery time for `id`.
    async fn delivered(store: &Store, id: u64) -> Vec<String> {
        store
            .receipts(id)
            .await
            .expect("receipts")
            .expect("exists")
            .into_iter()
            .filter(|(_, delivered, _)| delivered.is_some())
            .map(|(user, _, _)| user)
            .collect()
    }

    #[tokio::test]
    async fn marking_acks_searches_targets_by_key_and_never_scans_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _writer) = Store::open(dir.path(), None).await.expect("store");
        // EXPLAIN QUERY PLAN rows: id, parent, notused, detail ("SEARCH n USING ...").
        let plan: Vec<String> = sqlx::query(&format!(
            "EXPLAIN QUERY PLAN {}",
            mark_acked(Dialect::Sqlite)
        ))
        .bind("[]")
        .bind(0_i64)
        .fetch_all(store.sqlite_pool())
        .await
        .expect("query plan")
        .iter()
        .map(|row| sqlx::Row::try_get::<String, _>(row, 3).expect("detail"))
        .collect();
        // Every step on the targets table (aliased n): one per target kind.
        let on_targets: Vec<&String> = plan
            .iter()
            .filter(|d| d.split_whitespace().nth(1) == Some("n"))
            .collect();
        assert_eq!(on_targets.len(), 3, "{plan:#?}");
        // Each a key search bounded by the point's id range, not a pass over a whole
        // kind (what SQLite chose when the points were not the outer loop).
        assert!(
            on_targets
                .iter()
                .all(|d| d.starts_with("SEARCH n USING PRIMARY KEY")
                    && d.contains("name=?")
                    && d.contains("notification_id>?")),
            "{plan:#?}"
        );
    }

    #[tokio::test]
    async fn a_batch_of_acks_marks_what_each_device_may_see_up_to_the_head() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, writer) = Store::open(dir.path(), None).await.expect("store");
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(writer.run(tx));
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let w = store.writer();
        assert!(w.subscribe("ann", "ops", 100).await.expect("subscribed"));
        assert!(w.subscribe("ann", "dev", 100).await.expect("subscribed"));
        let to_ann = publish(&store, "user:ann").await;
        let to_all = publish(&store, "all").await;
        let to_ops = publish(&store, "topic:ops").await;
        let to_dev = publish(&store, "topic:dev").await;

        // Ann's ops-only device acked up to the ops one, her other device everything;
        // bob acked far past the head. Out of order on purpose: they apply ascending.
        let moved = w
            .ack(vec![
                point("ann", &["*"], to_dev),
                point("bob", &["*"], 1_000_000),
                point("ann", &["ops"], to_ops),
            ])
            .await
            .expect("acked");
        assert_eq!(moved, 3);
        assert_eq!(delivered(&store, to_ann).await, ["ann"]);
        assert_eq!(delivered(&store, to_all).await, ["ann", "bob"]);
        assert_eq!(delivered(&store, to_ops).await, ["ann"]);
        assert_eq!(delivered(&store, to_dev).await, ["ann"]);

        // The watermark stopped at the head: what comes next is marked by the next ack,
        // and acks at or below a watermark move nothing.
        let later = publish(&store, "all").await;
        assert_eq!(
            w.ack(vec![point("bob", &["*"], to_all)])
                .await
                .expect("acked"),
            0
        );
        assert!(delivered(&store, later).await.is_empty());
        assert_eq!(
            w.ack(vec![point("bob", &["*"], later)])
                .await
                .expect("acked"),
            1
        );
        assert_eq!(delivered(&store, later).await, ["bob"]);

        // A device that may not see a topic does not mark it.
        let ops_again = publish(&store, "topic:ops").await;
        assert_eq!(
            w.ack(vec![point("ann", &["dev"], ops_again)])
                .await
                .expect("acked"),
            1
        );
        assert!(delivered(&store, ops_again).await.is_empty());
    }
}
