//! The highest notification id this node has handed to delivery, and the epoch it counts
//! in: what an ack may cover, and where a catch-up from an up-to-date cursor can stop
//! without reading the store.
//!
//! Delivery raises it *before* it looks up the sockets to emit to, and looking them up
//! takes the adapter's lock that joining a room also takes: a socket that joined its
//! rooms and then reads the head either is among those sockets or sees the raised head.
//! When the store's epoch changes, delivery enters the new epoch where it began
//! (`epoch_change.rs`), in order with what it delivers.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

/// The delivered head.
#[derive(Debug)]
pub struct Head {
    id: AtomicU64,
    /// The epoch delivery is in (live notifications go only to sockets let in under it),
    /// and the store's head where it began.
    epoch: RwLock<(Arc<str>, u64)>,
}

impl Head {
    /// Nothing delivered yet, in `epoch`.
    pub fn new(epoch: Arc<str>) -> Self {
        Self {
            id: AtomicU64::new(0),
            epoch: RwLock::new((epoch, 0)),
        }
    }

    /// The highest id handed to delivery. (To compare it with a socket's epoch, read
    /// [`Head::epoch`] first: an epoch read after the id may be newer than the id.)
    pub fn get(&self) -> u64 {
        self.id.load(Relaxed)
    }

    /// The epoch delivery is in.
    pub fn epoch(&self) -> Arc<str> {
        self.epoch
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The epoch delivery is in and the store's head where delivery entered it (0 for
    /// the epoch the node started in).
    pub fn epoch_began(&self) -> (Arc<str>, u64) {
        self.epoch.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Raises it to `id` (never lowers it).
    pub fn raise(&self, id: u64) {
        self.id.fetch_max(id, Relaxed);
    }

    /// Enters `epoch`, which began at the store's head `since`: the head comes down to
    /// `since` if it is above it (a store that lost commits issues their ids again),
    /// before the epoch is set, so whoever reads the new epoch reads the lowered head.
    pub fn enter(&self, epoch: Arc<str>, since: u64) {
        self.id.fetch_min(since, Relaxed);
        *self.epoch.write().unwrap_or_else(|p| p.into_inner()) = (epoch, since);
    }
}
