//! The hub's one state struct: cheap handles to everything a handler needs, built once
//! ([`AppState::new`]) and passed explicitly (axum's `with_state`, and a clone in each
//! Socket.IO handler). It holds no logic of its own: each handle's module has that.

use crate::auth::{PublishKeys, TokenSigner};
use crate::config::Config;
use crate::devices::Devices;
use crate::drain::Drain;
use crate::head::Head;
use crate::health::Health;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::publish::Publishing;
use crate::rate_limit::Limits;
use crate::receipts::PendingAcks;
use crate::store::Store;
use socketioxide::SocketIo;
use socketioxide::adapter::{Adapter, LocalAdapter};
use std::sync::Arc;

/// Shared, cheap handles to everything a handler needs. `A` is the Socket.IO adapter:
/// [`LocalAdapter`] on a single node, the Redis adapter when several nodes share the work.
pub struct AppState<A: Adapter = LocalAdapter> {
    /// The configuration.
    pub config: Config,
    /// The durable store.
    pub store: Store,
    /// The Socket.IO server handle.
    pub io: SocketIo<A>,
    /// Signs and verifies user tokens.
    pub tokens: TokenSigner,
    /// Accepted publish keys.
    pub keys: PublishKeys,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The publish use case.
    pub publishing: Publishing,
    /// Room membership and subscriptions.
    pub membership: Membership<A>,
    /// Every user's devices, on every node.
    pub devices: Devices<A>,
    /// Acks waiting to be written as delivery receipts.
    pub acks: Arc<PendingAcks>,
    /// The highest id handed to delivery.
    pub head: Head,
    /// Publisher events in flight, for shutdown.
    pub drain: Drain,
    /// The store's health, as `/healthz` reports it.
    pub health: Health,
    /// Per-user and per-address limits.
    pub limits: Limits,
}

impl<A: Adapter> std::fmt::Debug for AppState<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// The state as handlers hold it.
pub type SharedState<A = LocalAdapter> = Arc<AppState<A>>;

impl<A: Adapter> AppState<A> {
    /// Builds the state. The configuration's secrets must be resolved (`Hub::start`
    /// checks them).
    pub fn new(store: Store, io: SocketIo<A>, config: Config) -> Self {
        let metrics = Arc::new(Metrics::new());
        // One for the node: its slots count every device here.
        let devices = Devices::new(io.clone());
        Self {
            tokens: TokenSigner::new(config.jwt_secret.clone().unwrap_or_default()),
            keys: PublishKeys::new(config.publish_keys.iter().cloned()),
            publishing: Publishing::new(&config, store.writer().clone(), metrics.clone()),
            membership: Membership::new(
                io.clone(),
                store.clone(),
                devices.clone(),
                config.max_subscriptions,
            ),
            devices,
            acks: Arc::new(PendingAcks::default()),
            head: Head::new(store.epoch()),
            drain: Drain::default(),
            health: Health::new(store.clone(), metrics.health_checks_total.clone()),
            limits: Limits::new(&config),
            metrics,
            store,
            io,
            config,
        }
    }
}
