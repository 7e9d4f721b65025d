//! The highest notification id this node has handed to delivery: what an ack may cover,
//! and where a catch-up from an up-to-date cursor can stop without reading the store.
//!
//! Delivery raises it *before* it looks up the sockets to emit to, and looking them up
//! takes the adapter's lock that joining a room also takes: a socket that joined its
//! rooms and then reads the head either is among those sockets or sees the raised head.
//! When the store's epoch changes, delivery sets it to where the new epoch began
//! (`epoch_change.rs`), in order with what it delivers.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// The delivered head.
#[derive(Debug, Default)]
pub struct Head(AtomicU64);

impl Head {
    /// The highest id handed to delivery.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Raises it to `id` (never lowers it).
    pub fn raise(&self, id: u64) {
        self.0.fetch_max(id, Relaxed);
    }

    /// Lowers it to `id` (never raises it): when the store starts a new epoch below it.
    pub fn lower_to(&self, id: u64) {
        self.0.fetch_min(id, Relaxed);
    }
}
