//! The hub's one state struct, built once and passed explicitly, and the operations that
//! HTTP and Socket.IO share (publish, subscribe, read), so both edges behave the same.

use crate::auth::{PublishKeys, TokenSigner, UserClaims};
use crate::config::Config;
use crate::delivery::{self, Session, rooms};
use crate::metrics::Metrics;
use crate::rate_limit::TokenBucket;
use crate::store::{Published, ReadSelection, Store, Viewer};
use belfry_protocol::events::{self, ReadRequest, TopicRequest};
use belfry_protocol::{ErrorBody, ErrorCode, PublishRequest, TopicPatterns, validate_topic};
use socketioxide::SocketIo;
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::Sid;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shared, cheap handles to everything a handler needs. `A` is the Socket.IO adapter:
/// [`LocalAdapter`] on a single node, the Redis adapter when several nodes share the work.
pub struct AppState<A: Adapter = LocalAdapter> {
    /// The durable store.
    pub store: Store,
    /// The Socket.IO server handle.
    pub io: SocketIo<A>,
    /// Signs and verifies user tokens.
    pub tokens: TokenSigner,
    /// Accepted publish keys.
    pub keys: PublishKeys,
    /// Per publish key, a fingerprint that scopes its idempotency keys (so two backends
    /// using the same idempotency key never swallow each other's publishes).
    key_scopes: Vec<String>,
    /// The configuration.
    pub config: Config,
    /// Metrics.
    pub metrics: Metrics,
    /// One bucket per publish key (indexed like `keys`). A std mutex: held for a few
    /// instructions, never across an await.
    publish_buckets: Mutex<Vec<TokenBucket>>,
    /// Per-user serialisation of room membership changes (connect, subscribe,
    /// unsubscribe), striped by a hash of the user id: without it a subscribe racing a
    /// connect could leave a socket outside a room its user subscribed to.
    user_locks: Vec<tokio::sync::Mutex<()>>,
    /// Acks waiting to be written as delivery receipts.
    pub acks: crate::receipts::PendingAcks,
    /// The highest id committed and handed to delivery (what an ack may cover).
    head: std::sync::atomic::AtomicU64,
    /// Set when shutdown begins: publisher events are refused from then on.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Publisher events in flight (shutdown waits for them before closing sockets).
    publishing: std::sync::atomic::AtomicUsize,
    publishing_done: tokio::sync::Notify,
}

impl<A: Adapter> std::fmt::Debug for AppState<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

/// Stripes of [`AppState`]'s per-user locks.
const USER_LOCK_STRIPES: usize = 64;

/// The state as handlers hold it.
pub type SharedState<A = LocalAdapter> = Arc<AppState<A>>;

impl<A: Adapter> AppState<A> {
    /// Builds the state.
    pub fn new(store: Store, io: SocketIo<A>, config: Config) -> Self {
        let buckets = config
            .publish_keys
            .iter()
            .map(|_| TokenBucket::new(config.limits.publish_rate, config.limits.publish_burst))
            .collect();
        Self {
            store,
            io,
            tokens: TokenSigner::new(config.jwt_secret.as_bytes().to_vec()),
            keys: PublishKeys::new(config.publish_keys.iter().cloned()),
            key_scopes: config
                .publish_keys
                .iter()
                .map(|k| key_fingerprint(k))
                .collect(),
            config,
            metrics: Metrics::default(),
            publish_buckets: Mutex::new(buckets),
            user_locks: (0..USER_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            acks: crate::receipts::PendingAcks::default(),
            head: std::sync::atomic::AtomicU64::new(0),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            publishing: std::sync::atomic::AtomicUsize::new(0),
            publishing_done: tokio::sync::Notify::new(),
        }
    }

    /// Validates, rate-limits and stores a publish; answers once it is durable. Delivery
    /// follows from the writer, in id order.
    pub async fn publish(
        &self,
        key_index: usize,
        req: PublishRequest,
        received: Instant,
    ) -> Result<Published, PublishError> {
        self.take_publish_token(key_index)?;
        let mut valid = req.validate()?;
        if let (Some(key), Some(scope)) =
            (valid.idempotency_key.take(), self.key_scopes.get(key_index))
        {
            valid.idempotency_key = Some(format!("{scope}/{key}"));
        }
        let retention = &self.config.retention;
        let ttl = valid
            .ttl
            .map(Duration::from_secs)
            .unwrap_or(retention.default_ttl)
            .min(retention.max_ttl);
        let published = self
            .store
            .writer()
            .publish(valid, ttl.as_secs().max(1), received)
            .await
            .map_err(ErrorBody::from)?;
        let counter = if published.duplicate {
            &self.metrics.publish_duplicates_total
        } else {
            &self.metrics.publishes_total
        };
        counter.fetch_add(1, Relaxed);
        Ok(published)
    }

    fn take_publish_token(&self, key_index: usize) -> Result<(), PublishError> {
        let mut buckets = self
            .publish_buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(bucket) = buckets.get_mut(key_index) else {
            return Ok(());
        };
        bucket.take(Instant::now()).map_err(|retry_after| {
            self.metrics.rate_limited_total.fetch_add(1, Relaxed);
            PublishError::RateLimited(retry_after)
        })
    }

    /// The viewer for a user with the given allowed topics: their stored subscriptions
    /// that the token allows.
    pub async fn viewer(&self, user: &str, allowed: &TopicPatterns) -> Result<Viewer, ErrorBody> {
        let topics = self
            .store
            .subscriptions(user)
            .await?
            .into_iter()
            .filter(|t| allowed.allows(t))
            .collect();
        Ok(Viewer {
            user: user.to_owned(),
            topics,
        })
    }

    /// The highest id committed and handed to delivery. Delivery raises it before it
    /// looks up the sockets to emit to, under the adapter's lock that joining a room also
    /// takes: a socket that joined its rooms and then reads the head either is among those
    /// sockets or sees the raised head.
    pub fn head(&self) -> u64 {
        self.head.load(Relaxed)
    }

    /// Raises [`head`](Self::head) to `id`.
    pub fn note_head(&self, id: u64) {
        self.head.fetch_max(id, Relaxed);
    }

    /// The lock that serialises room changes of one user.
    pub fn user_lock(&self, user: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        &self.user_locks[(h.finish() as usize) % self.user_locks.len()]
    }

    /// Broadcast operators for a room of the subscribers' namespace, or `None` once the
    /// namespace is gone (after shutdown closed it).
    pub fn room(&self, room: impl Into<String>) -> Option<BroadcastOperators<A>> {
        self.io
            .of(events::SUBSCRIBER_NAMESPACE)
            .map(|ns| ns.to(room.into()))
    }

    /// The sockets of this hub in any of `rooms`, each once (none once the namespace is
    /// gone).
    pub fn sockets_in(&self, rooms: Vec<String>) -> Vec<SocketRef<A>> {
        self.io
            .of(events::SUBSCRIBER_NAMESPACE)
            .map(|ns| ns.to(rooms).sockets())
            .unwrap_or_default()
    }

    /// The sockets of this hub in a room.
    pub fn room_sockets(&self, room: String) -> Vec<SocketRef<A>> {
        self.sockets_in(vec![room])
    }

    /// This node's sockets of `user` whose token allows `topic` and that are not in its
    /// room yet.
    pub(crate) fn outside_topic(&self, user: &str, topic: &str) -> Vec<SocketRef<A>> {
        let topic_room = rooms::topic(topic);
        self.room_sockets(rooms::user(user))
            .into_iter()
            .filter(|s| {
                s.extensions
                    .get::<Arc<Session>>()
                    .is_some_and(|session| session.allowed.allows(topic))
            })
            .filter(|s| !s.rooms().iter().any(|r| *r == topic_room))
            .collect()
    }

    /// Joins this node's sockets of `user` whose token allows `topic` to its room; returns
    /// those that were not in it yet.
    fn join_topic(&self, user: &str, topic: &str) -> Vec<SocketRef<A>> {
        let joined = self.outside_topic(user, topic);
        for s in &joined {
            s.join(rooms::topic(topic));
        }
        joined
    }

    /// Subscribes `claims.sub` to `topic`: checks the token allows it, joins every
    /// connected device whose own token allows it, stores it, and tells the other devices.
    pub async fn subscribe(
        &self,
        claims: &UserClaims,
        topic: &str,
        from: Option<Sid>,
    ) -> Result<bool, ErrorBody> {
        check_topic(claims, topic)?;
        let _user = self.user_lock(&claims.sub).lock().await;
        // Join before storing, so nothing published in between is missed live. (Other
        // nodes hear of it from the store's commit and catch their devices up: see
        // cluster.rs.)
        let joined = self.join_topic(&claims.sub, topic);
        let max = self.config.limits.max_subscriptions;
        match self.store.writer().subscribe(&claims.sub, topic, max).await {
            Ok(new) => {
                if new {
                    self.tell_devices(&claims.sub, from, events::SUBSCRIBED, topic)
                        .await;
                }
                Ok(new)
            }
            Err(e) => {
                let topic_room = rooms::topic(topic);
                for s in &joined {
                    s.leave(topic_room.clone());
                }
                Err(e.into())
            }
        }
    }

    /// Unsubscribes `user` from `topic` on every device.
    pub async fn unsubscribe(
        &self,
        user: &str,
        topic: &str,
        from: Option<Sid>,
    ) -> Result<bool, ErrorBody> {
        validate_topic(topic).map_err(|e| ErrorBody::field(ErrorCode::InvalidField, "topic", e))?;
        let _user = self.user_lock(user).lock().await;
        let removed = self.store.writer().unsubscribe(user, topic).await?;
        self.leave_topic(user, topic);
        if removed {
            self.tell_devices(user, from, events::UNSUBSCRIBED, topic)
                .await;
        }
        Ok(removed)
    }

    /// Takes this node's sockets of `user` out of the room of `topic`.
    pub(crate) fn leave_topic(&self, user: &str, topic: &str) {
        let topic_room = rooms::topic(topic);
        for s in self.room_sockets(rooms::user(user)) {
            s.leave(topic_room.clone());
        }
    }

    async fn tell_devices(&self, user: &str, except: Option<Sid>, event: &str, topic: &str) {
        let payload = TopicRequest {
            topic: topic.to_owned(),
        };
        self.emit_to_devices(user, except, event, &payload).await;
    }

    /// Emits to the user's devices on every node; while the other nodes cannot be
    /// reached, to this node's (the others catch up once the link is back).
    async fn emit_to_devices<T: serde::Serialize + ?Sized>(
        &self,
        user: &str,
        except: Option<Sid>,
        event: &str,
        payload: &T,
    ) {
        let Some(devices) = self.user_devices(user, except) else {
            return;
        };
        if let Err(e) = devices.emit(event, payload).await {
            tracing::debug!(error = %e, event, "cannot reach the other nodes; telling this node's devices");
            if let Some(devices) = self.user_devices(user, except)
                && let Err(e) = devices.local().emit(event, payload).await
            {
                tracing::debug!(error = %e, event, "telling the user's devices");
            }
        }
    }

    /// Marks notifications read for `claims.sub` and tells the user's other devices.
    pub async fn mark_read(
        &self,
        claims: &UserClaims,
        request: ReadRequest,
        from: Option<Sid>,
    ) -> Result<u64, ErrorBody> {
        request.validate()?;
        let selection = match &request {
            ReadRequest::Ids { ids } => ReadSelection::Ids(ids.clone()),
            ReadRequest::UpTo { up_to } => ReadSelection::UpTo(*up_to),
        };
        let viewer = self.viewer(&claims.sub, &claims.allowed_topics()).await?;
        let marked = self.store.writer().read(viewer, selection).await?;
        if marked > 0 {
            self.emit_to_devices(&claims.sub, from, events::READ, &request)
                .await;
        }
        Ok(marked)
    }

    /// The user's connected devices, except the socket the change came from (a broadcast
    /// from that socket leaves the sender out).
    fn user_devices(&self, user: &str, except: Option<Sid>) -> Option<BroadcastOperators<A>> {
        let room = rooms::user(user);
        let ns = self.io.of(events::SUBSCRIBER_NAMESPACE)?;
        Some(match except.and_then(|sid| ns.get_socket(sid)) {
            Some(sender) => sender.to(room),
            None => ns.to(room),
        })
    }

    /// How many devices of `user` are connected, on every node (on this one only while
    /// the others cannot be reached).
    pub async fn devices(&self, user: &str) -> usize {
        let room = rooms::user(user);
        if let Some(ns) = self.io.of(events::SUBSCRIBER_NAMESPACE) {
            match ns.to(room.clone()).fetch_sockets().await {
                Ok(sockets) => return sockets.len(),
                Err(e) => tracing::debug!(error = %e, "cannot count devices on other nodes"),
            }
        }
        self.room_sockets(room).len()
    }

    /// Counts a publisher event in flight; `None` once shutdown has begun.
    pub fn begin_publishing(self: &Arc<Self>) -> Option<PublishingGuard<A>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.publishing.fetch_add(1, SeqCst);
        let guard = PublishingGuard(self.clone());
        // Dropping the guard un-counts the refused event.
        (!self.shutting_down.load(SeqCst)).then_some(guard)
    }

    /// Refuses new publisher events and waits (up to `limit`) for those in flight.
    pub async fn drain_publishers(&self, limit: Duration) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shutting_down.store(true, SeqCst);
        let _ = tokio::time::timeout(limit, async {
            loop {
                let done = self.publishing_done.notified();
                if self.publishing.load(SeqCst) == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
    }

    /// Starts delivering what the writer commits: returns the sender the writer uses.
    pub(crate) fn spawn_delivery(
        self: &Arc<Self>,
    ) -> (
        tokio::sync::mpsc::Sender<Vec<crate::store::Committed>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(delivery::run(self.clone(), rx));
        (tx, task)
    }
}

/// A short, stable fingerprint of a publish key (never the key itself).
fn key_fingerprint(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A publisher event in flight; dropping it lets shutdown proceed.
#[derive(Debug)]
pub struct PublishingGuard<A: Adapter>(Arc<AppState<A>>);

impl<A: Adapter> Drop for PublishingGuard<A> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.0.publishing.fetch_sub(1, SeqCst) == 1 {
            self.0.publishing_done.notify_waiters();
        }
    }
}

/// Checks a topic name and that the token allows it.
pub fn check_topic(claims: &UserClaims, topic: &str) -> Result<(), ErrorBody> {
    validate_topic(topic).map_err(|e| ErrorBody::field(ErrorCode::InvalidField, "topic", e))?;
    if !claims.allowed_topics().allows(topic) {
        return Err(ErrorBody::new(
            ErrorCode::TopicNotAllowed,
            format!("this token does not allow topic {topic:?}"),
        ));
    }
    Ok(())
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The key's rate limit is exhausted; retry after this long.
    RateLimited(Duration),
    /// Anything else.
    Refused(ErrorBody),
}

impl From<ErrorBody> for PublishError {
    fn from(e: ErrorBody) -> Self {
        PublishError::Refused(e)
    }
}

impl From<PublishError> for crate::error::ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::RateLimited(after) => crate::error::ApiError::rate_limited(after),
            PublishError::Refused(body) => body.into(),
        }
    }
}

impl From<PublishError> for ErrorBody {
    fn from(e: PublishError) -> Self {
        crate::error::ApiError::from(e).body
    }
}
