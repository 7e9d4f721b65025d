//! Publisher events in flight at shutdown: from the moment shutdown begins new ones are
//! refused, and the sockets are closed only once those in flight have their answers (or
//! a few seconds have passed).

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

/// Counts publisher events in flight. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Set when shutdown begins.
    shutting_down: AtomicBool,
    in_flight: AtomicUsize,
    done: tokio::sync::Notify,
}

/// A publisher event in flight; dropping it lets shutdown proceed.
#[derive(Debug)]
pub struct InFlight(Drain);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.0.in_flight.fetch_sub(1, SeqCst) == 1 {
            self.0.0.done.notify_waiters();
        }
    }
}

impl Drain {
    /// Counts an event in flight; `None` once shutdown has begun.
    pub fn begin(&self) -> Option<InFlight> {
        self.0.in_flight.fetch_add(1, SeqCst);
        let guard = InFlight(self.clone());
        // Dropping the guard un-counts the refused event.
        (!self.0.shutting_down.load(SeqCst)).then_some(guard)
    }

    /// Refuses new events and waits (up to `limit`) for those in flight.
    pub async fn wait(&self, limit: Duration) {
        self.0.shutting_down.store(true, SeqCst);
        let _ = tokio::time::timeout(limit, async {
            loop {
                let done = self.0.done.notified();
                if self.0.in_flight.load(SeqCst) == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_events_in_flight_and_refuses_new_ones() {
        let drain = Drain::default();
        let first = drain.begin().expect("taken before shutdown");
        let waiting = tokio::spawn({
            let drain = drain.clone();
            async move { drain.wait(Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        assert!(drain.begin().is_none(), "refused once shutdown began");
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("done once the event in flight ended")
            .expect("no panic");
    }
}
