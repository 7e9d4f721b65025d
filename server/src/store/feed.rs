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
/// How often the store is read without a notice.
pub const POLL: Duration = Duration::from_secs(1);
/// The most notifications read from the store at once.
const PAGE: u32 = 500;

/// Hands `out` every notification committed after `delivered`, in id order, until the
/// writer stops (`local` closes). `local` carries this node's own commits.
pub async fn run(
    store: Store,
    mut local: mpsc::Receiver<Vec<Committed>>,
    out: mpsc::Sender<Vec<Committed>>,
    mut delivered: u64,
) {
    let notices = Arc::new(Notify::new());
    let listener = match &store.pool {
        Pool::Postgres(pool) => Some(tokio::spawn(listen(pool.clone(), notices.clone()))),
        Pool::Sqlite(_) => None,
    };
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
    if let Some(listener) = listener {
        listener.abort();
    }
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

/// LISTENs for commits on a connection of its own and signals `notices` for each, and
/// after the connection was lost (notices may have been missed meanwhile). Runs until
/// aborted; reconnects on its own.
async fn listen(pool: PgPool, notices: Arc<Notify>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listening.await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for commits yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(POLL);
                continue;
            }
        };
        pause = Duration::from_millis(100);
        // Anything committed while not listening.
        notices.notify_one();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => notices.notify_one(),
                // Lost: the next call reconnects and listens again.
                Ok(None) => {
                    tracing::debug!("commit listener reconnecting");
                    notices.notify_one();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "commit listener failed");
                    break;
                }
            }
        }
    }
}
