//! Delivery receipts from client acks, coalesced per user and written in the background.
//!
//! Every device acks every batch and live notification it stores, so one publish to
//! everyone brings an ack from every connected socket at once. Acks only feed receipts
//! (`delivered_at`), so they need not be written one by one or before the reply: each
//! ack raises the user's pending point here, and a task writes the pending points every
//! [`FLUSH_INTERVAL`] through the store's writer (one point per user and token scope,
//! however many acks came; a thousand points per writer operation), and once more when
//! the hub stops.

use crate::store::{AckPoint, Acks, WriterHandle};
use belfry_protocol::TopicPatterns;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often pending acks are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// One pending point: everything up to `up_to` that sockets with these topic patterns
/// may see.
type Step = (u64, TopicPatterns);

/// Acks received and not yet written: per user, the points in the order they were
/// raised. Devices whose tokens allow the same topics share one point; a device with
/// other patterns gets its own, since an ack records what the acking socket may see.
#[derive(Debug, Default)]
pub struct PendingAcks {
    by_user: Mutex<HashMap<String, Vec<Step>>>,
}

impl PendingAcks {
    /// Records an ack.
    pub fn note(&self, user: &str, allowed: &TopicPatterns, up_to: u64) {
        let mut map = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        let steps = map.entry(user.to_owned()).or_default();
        match steps.iter_mut().find(|(_, p)| p == allowed) {
            Some((pending, _)) => *pending = (*pending).max(up_to),
            None => steps.push((up_to, allowed.clone())),
        }
    }

    fn take(&self) -> HashMap<String, Vec<Step>> {
        std::mem::take(&mut *self.by_user.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The most acks written in one writer operation: a publish waiting behind one waits for
/// at most this many.
const CHUNK: usize = 1_000;

/// Writes every pending ack; points that fail to write are kept for the next flush.
/// Returns how many points were written.
pub async fn flush(acks: &PendingAcks, writer: &WriterHandle) -> usize {
    let mut points: Vec<AckPoint> = acks
        .take()
        .into_iter()
        .flat_map(|(user, steps)| {
            steps.into_iter().map(move |(up_to, allowed)| AckPoint {
                user: user.clone(),
                allowed,
                up_to,
            })
        })
        .collect();
    // A user's points in ascending order, also across chunks: each then advances the
    // user's watermark by what its own patterns may see.
    points.sort_by(|a, b| a.user.cmp(&b.user).then(a.up_to.cmp(&b.up_to)));
    let mut written = 0;
    // One chunk at a time: the writer interleaves publishes between them.
    for chunk in points.chunks(CHUNK) {
        match writer.submit(Acks(chunk.to_vec())).await {
            Ok(_) => written += chunk.len(),
            Err(e) => {
                tracing::warn!(error = %e, points = chunk.len(), "writing delivery receipts; retrying later");
                for p in chunk {
                    acks.note(&p.user, &p.allowed, p.up_to);
                }
            }
        }
    }
    written
}

/// The background task: flushes every [`FLUSH_INTERVAL`] until `stop` is notified, then
/// once more.
pub(crate) async fn run(
    acks: Arc<PendingAcks>,
    writer: WriterHandle,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                flush(&acks, &writer).await;
            }
            () = stop.notified() => {
                flush(&acks, &writer).await;
                return;
            }
        }
    }
}
