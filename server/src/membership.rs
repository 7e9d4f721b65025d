//! Room membership: which rooms a subscriber socket is in, and the subscriptions that
//! decide it.
//!
//! A room is named like the target it serves (`user:<id>`, `topic:<name>`, `all`), so a
//! notification's targets are its rooms. A socket is in its user's room, `all`, and the
//! room of each topic its user subscribed to that its own token allows. Changes to one
//! user's rooms (a device connecting, a subscribe, an unsubscribe) are serialised by a
//! per-user lock: without it a subscribe racing a connect could leave a socket outside a
//! room its user subscribed to.

use crate::auth::UserClaims;
use crate::devices::Devices;
use crate::error::HubError;
use crate::session::{self, Session};
use crate::store::{Store, Subscribe, Unsubscribe, Viewer};
use belfry_protocol::events::{self, TopicRequest};
use belfry_protocol::{ErrorBody, ErrorCode, Target, validate_topic};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

/// Room names.
pub mod names {
    use belfry_protocol::Target;

    /// The room of one user's devices.
    pub fn user(id: &str) -> String {
        Target::User(id.to_owned()).to_string()
    }
    /// The room of a topic's subscribers.
    pub fn topic(name: &str) -> String {
        Target::Topic(name.to_owned()).to_string()
    }
    /// The room of every subscriber socket.
    pub const ALL: &str = "all";
}

/// Stripes of the per-user locks.
const USER_LOCK_STRIPES: usize = 64;

/// Joins and leaves rooms, and changes subscriptions.
pub struct Membership<A: Adapter> {
    io: SocketIo<A>,
    store: Store,
    devices: Devices<A>,
    max_subscriptions: u32,
    /// Per-user serialisation of room changes, striped by a hash of the user id.
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl<A: Adapter> Membership<A> {
    /// Membership on the subscribers' namespace of `io`, subscriptions kept in `store`,
    /// telling the user's `devices` of changes.
    pub fn new(io: SocketIo<A>, store: Store, devices: Devices<A>, max_subscriptions: u32) -> Self {
        Self {
            devices,
            io,
            store,
            max_subscriptions,
            locks: (0..USER_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// The lock that serialises room changes of one user.
    pub fn user_lock(&self, user: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        &self.locks[(h.finish() as usize) % self.locks.len()]
    }

    /// The sockets of this node in any of `rooms`, each once (none once the namespace is
    /// gone).
    pub fn sockets_in(&self, rooms: Vec<String>) -> Vec<SocketRef<A>> {
        self.io
            .of(events::SUBSCRIBER_NAMESPACE)
            .map(|ns| ns.to(rooms).sockets())
            .unwrap_or_default()
    }

    /// The sockets of this node a notification for `targets` goes to.
    pub fn sockets_for(&self, targets: &[Target]) -> Vec<SocketRef<A>> {
        self.sockets_in(targets.iter().map(Target::to_string).collect())
    }

    /// Every subscriber socket of this node.
    pub fn all_sockets(&self) -> Vec<SocketRef<A>> {
        self.io
            .of(events::SUBSCRIBER_NAMESPACE)
            .map(|ns| ns.sockets())
            .unwrap_or_default()
    }

    /// Puts a connecting socket in its rooms: its user's, `all`, and its topics'. Call it
    /// with the user's lock held, before the socket's catch-up reads the store, so that
    /// whatever commits after the read is delivered live (see `delivery.rs`).
    pub async fn join_on_connect(
        &self,
        socket: &SocketRef<A>,
        session: &Session,
    ) -> Result<(), HubError> {
        socket.join([names::user(&session.user), names::ALL.to_owned()]);
        let viewer = self.store.viewer(&session.user, &session.allowed).await?;
        socket.join(
            viewer
                .topics
                .iter()
                .map(|t| names::topic(t))
                .collect::<Vec<_>>(),
        );
        Ok(())
    }

    /// Puts a socket in exactly the topic rooms of `viewer` (after its node may have
    /// missed room changes).
    pub fn rejoin(&self, socket: &SocketRef<A>, viewer: &Viewer) {
        let wanted: Vec<String> = viewer.topics.iter().map(|t| names::topic(t)).collect();
        let stale: Vec<String> = socket
            .rooms()
            .into_iter()
            .map(|r| r.to_string())
            .filter(|r| r.starts_with("topic:") && !wanted.contains(r))
            .collect();
        socket.leave(stale);
        socket.join(wanted);
    }

    /// This node's sockets of `user` whose token allows `topic` and that are not in its
    /// room yet.
    pub fn outside_topic(&self, user: &str, topic: &str) -> Vec<SocketRef<A>> {
        let topic_room = names::topic(topic);
        self.sockets_in(vec![names::user(user)])
            .into_iter()
            .filter(|s| session::of(s).is_some_and(|session| session.allowed.allows(topic)))
            .filter(|s| !s.rooms().iter().any(|r| *r == topic_room))
            .collect()
    }

    /// Joins this node's sockets of `user` whose token allows `topic` to its room;
    /// returns those that were not in it yet.
    fn join_topic(&self, user: &str, topic: &str) -> Vec<SocketRef<A>> {
        let joined = self.outside_topic(user, topic);
        for s in &joined {
            s.join(names::topic(topic));
        }
        joined
    }

    /// Takes this node's sockets of `user` out of the room of `topic`.
    pub fn leave_topic(&self, user: &str, topic: &str) {
        let topic_room = names::topic(topic);
        for s in self.sockets_in(vec![names::user(user)]) {
            s.leave(topic_room.clone());
        }
    }

    /// Subscribes `claims.sub` to `topic`: checks the token allows it, joins every
    /// connected device whose own token allows it, stores it, and tells the other devices.
    pub async fn subscribe(
        &self,
        claims: &UserClaims,
        topic: &str,
        from: Option<Sid>,
    ) -> Result<bool, HubError> {
        check_topic(claims, topic)?;
        let _user = self.user_lock(&claims.sub).lock().await;
        // Join before storing, so nothing published in between is missed live. (Other
        // nodes hear of it from the store's feed and catch their devices up: see
        // cluster.rs.)
        let joined = self.join_topic(&claims.sub, topic);
        let subscribe = Subscribe {
            user: claims.sub.clone(),
            topic: topic.to_owned(),
            max: self.max_subscriptions,
        };
        match self.store.writer().submit(subscribe).await {
            Ok(new) => {
                if new {
                    self.tell_devices(&claims.sub, from, events::SUBSCRIBED, topic)
                        .await;
                }
                Ok(new)
            }
            Err(e) => {
                let topic_room = names::topic(topic);
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
    ) -> Result<bool, HubError> {
        validate_topic(topic).map_err(|e| ErrorBody::field(ErrorCode::InvalidField, "topic", e))?;
        let _user = self.user_lock(user).lock().await;
        let unsubscribe = Unsubscribe {
            user: user.to_owned(),
            topic: topic.to_owned(),
        };
        let removed = self.store.writer().submit(unsubscribe).await?;
        self.leave_topic(user, topic);
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
        self.devices.emit(user, except, event, &payload).await;
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

impl<A: Adapter> std::fmt::Debug for Membership<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").finish_non_exhaustive()
    }
}
