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
use socketioxide::socket::Sid;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shared, cheap handles to everything a handler needs.
#[derive(Debug)]
pub struct AppState {
    /// The durable store.
    pub store: Store,
    /// The Socket.IO server handle.
    pub io: SocketIo,
    /// Signs and verifies user tokens.
    pub tokens: TokenSigner,
    /// Accepted publish keys.
    pub keys: PublishKeys,
    /// The configuration.
    pub config: Config,
    /// Metrics.
    pub metrics: Metrics,
    /// One bucket per publish key (indexed like `keys`). A std mutex: held for a few
    /// instructions, never across an await.
    publish_buckets: Mutex<Vec<TokenBucket>>,
}

/// The state as handlers hold it.
pub type SharedState = Arc<AppState>;

impl AppState {
    /// Builds the state.
    pub fn new(store: Store, io: SocketIo, config: Config) -> Self {
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
            config,
            metrics: Metrics::default(),
            publish_buckets: Mutex::new(buckets),
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
        let valid = req.validate()?;
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

    /// Subscribes `claims.sub` to `topic`: checks the token allows it, joins every
    /// connected device whose own token allows it, stores it, and tells the other devices.
    pub async fn subscribe(
        &self,
        claims: &UserClaims,
        topic: &str,
        from: Option<Sid>,
    ) -> Result<bool, ErrorBody> {
        check_topic(claims, topic)?;
        let user_room = rooms::user(&claims.sub);
        let topic_room = rooms::topic(topic);
        // Join before storing, so nothing published in between is missed live.
        let joined: Vec<_> = self
            .io
            .to(user_room.clone())
            .sockets()
            .into_iter()
            .filter(|s| {
                s.extensions
                    .get::<Arc<Session>>()
                    .is_some_and(|session| session.allowed.allows(topic))
            })
            .filter(|s| !s.rooms().iter().any(|r| *r == topic_room))
            .collect();
        for s in &joined {
            s.join(topic_room.clone());
        }
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
        let removed = self.store.writer().unsubscribe(user, topic).await?;
        let topic_room = rooms::topic(topic);
        for s in self.io.to(rooms::user(user)).sockets() {
            s.leave(topic_room.clone());
        }
        if removed {
            self.tell_devices(user, from, events::UNSUBSCRIBED, topic)
                .await;
        }
        Ok(removed)
    }

    async fn tell_devices(&self, user: &str, except: Option<Sid>, event: &str, topic: &str) {
        let payload = TopicRequest {
            topic: topic.to_owned(),
        };
        if let Err(e) = self.user_devices(user, except).emit(event, &payload).await {
            tracing::debug!(error = %e, "telling other devices about a subscription change");
        }
    }

    /// Marks notifications read for `claims.sub` and tells the user's other devices.
    pub async fn mark_read(
        &self,
        claims: &UserClaims,
        request: ReadRequest,
        from: Option<Sid>,
    ) -> Result<u64, ErrorBody> {
        let selection = match &request {
            ReadRequest::Ids { ids } => {
                if ids.len() > 1000 {
                    return Err(ErrorBody::field(
                        ErrorCode::InvalidField,
                        "ids",
                        "at most 1000 ids per request; use up_to for more",
                    ));
                }
                ReadSelection::Ids(ids.clone())
            }
            ReadRequest::UpTo { up_to } => ReadSelection::UpTo(*up_to),
        };
        let viewer = self.viewer(&claims.sub, &claims.allowed_topics()).await?;
        let marked = self.store.writer().read(viewer, selection).await?;
        if marked > 0 {
            let devices = self.user_devices(&claims.sub, from);
            if let Err(e) = devices.emit(events::READ, &request).await {
                tracing::debug!(error = %e, "telling other devices about a read");
            }
        }
        Ok(marked)
    }

    /// The user's connected devices, except the socket the change came from (a broadcast
    /// from that socket leaves the sender out).
    fn user_devices(
        &self,
        user: &str,
        except: Option<Sid>,
    ) -> socketioxide::operators::BroadcastOperators {
        let room = rooms::user(user);
        match except.and_then(|sid| self.io.get_socket(sid)) {
            Some(sender) => sender.to(room),
            None => self.io.to(room),
        }
    }

    /// How many devices of `user` are connected to this hub.
    pub fn devices(&self, user: &str) -> usize {
        self.io.to(rooms::user(user)).sockets().len()
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

fn check_topic(claims: &UserClaims, topic: &str) -> Result<(), ErrorBody> {
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
