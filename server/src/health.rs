//! `GET /healthz`, kept cheap: the store is checked at most once per [`FRESH_FOR`], one
//! check shared by every caller meanwhile, and never with a write. The writer is judged
//! by what it is doing (a batch stuck for longer than [`STUCK_AFTER`]), never by queueing
//! a test write behind the publishes, or inside the batch that holds the ids of every
//! node (PostgreSQL).

use crate::store::Store;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one check answers for.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// A batch writing for longer than this means the writer is stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(15);

/// The cached health of the store.
#[derive(Debug)]
pub struct Health {
    store: Store,
    /// The last answer and when it was found. A std mutex: read or written in a few
    /// instructions.
    last: Mutex<Option<(Instant, bool)>>,
    /// Held by the one caller that checks; the others wait for its answer.
    checking: tokio::sync::Mutex<()>,
    checks: metrics::Counter,
}

impl Health {
    /// The health of `store`; `checks` counts the checks made.
    pub fn new(store: Store, checks: metrics::Counter) -> Self {
        Self {
            store,
            last: Mutex::new(None),
            checking: tokio::sync::Mutex::new(()),
            checks,
        }
    }

    fn fresh(&self) -> Option<bool> {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, ok)| ok)
    }

    /// Whether the store answers reads and its writer is not stuck.
    pub async fn check(&self) -> bool {
        if let Some(ok) = self.fresh() {
            return ok;
        }
        let _one = self.checking.lock().await;
        if let Some(ok) = self.fresh() {
            return ok;
        }
        self.checks.increment(1);
        let ok = self.store.ping().await && self.store.writer().is_healthy(STUCK_AFTER);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), ok));
        ok
    }
}
