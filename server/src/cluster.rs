//! Several hub nodes: what crosses between them, and the Redis link that carries it.
//!
//! - **Notifications** do not cross through Redis: every node reads what any node
//!   committed from the shared PostgreSQL store, in id order (`store/feed.rs`). Redis
//!   failing can neither lose nor reorder one.
//! - **Events to a user's devices** (`read`, `subscribed`, `unsubscribed`) and **presence
//!   counts** go through socketioxide's Redis adapter: `to(room).emit` and
//!   `fetch_sockets` reach every node.
//! - **Room changes that depend on each socket's token** (a subscribe made on one node
//!   puts the user's devices on every node into the topic's room, but only those whose
//!   token allows the topic) go as [`Control`] messages on a channel of Belfry's own.
//!   Each node applies them to its own sockets and catches up the sockets it joined from
//!   where the subscribe began, so nothing published meanwhile is missed.
//! - **The link** ([`RedisLink`]): socketioxide's own Redis driver subscribes once on a
//!   plain connection and never again after Redis restarts. This one runs on redis-rs's
//!   `ConnectionManager`, which reconnects; a watchdog pings until Redis answers again,
//!   subscribes every channel again and reports the link up. While Redis is unreachable,
//!   each node keeps serving its own sockets (emits fall back to this node's devices).
//!   Once it is back, each node rebuilds its sockets' topic rooms from the store and
//!   catches every socket up from where the outage began (a catch-up started by the hub,
//!   PROTOCOL.md section 7 rule 4), so what an emit or a room change missed reaches them.

use crate::delivery::{self, rooms, session};
use crate::state::SharedState;
use belfry_protocol::events::{self, ReadRequest};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use socketioxide::adapter::{Adapter, Emitter, LocalAdapter};
use socketioxide_redis::CustomRedisAdapter;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The Socket.IO adapter of a hub linked to others through Redis.
pub type RedisAdapter = CustomRedisAdapter<Emitter, RedisLink>;

/// What the hub needs of a Socket.IO adapter beyond socketioxide's trait.
pub trait HubAdapter: Adapter + socketioxide_core::adapter::DefinedAdapter {
    /// Waits until a namespace registered with `io.ns` is ready (the Redis adapter
    /// subscribes its channels first).
    fn ready(init: Self::InitRes) -> impl Future<Output = anyhow::Result<()>> + Send;
}

impl HubAdapter for LocalAdapter {
    async fn ready((): ()) -> anyhow::Result<()> {
        Ok(())
    }
}

impl HubAdapter for RedisAdapter {
    async fn ready(init: Self::InitRes) -> anyhow::Result<()> {
        init.await
            .map_err(|e| anyhow::anyhow!("Redis adapter: {e}"))
    }
}

/// The channel of [`Control`] messages.
const CONTROL: &str = "belfry-control";
/// How long a request to the other nodes (presence) waits for their answers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages buffered per Redis channel before the reader drops them (it logs each).
pub const CHANNEL_BUFFER: usize = 8192;
/// The longest pause between two pings while Redis is unreachable.
const MAX_PING_PAUSE: Duration = Duration::from_secs(1);

type Handlers = RwLock<HashMap<String, mpsc::Sender<ChanItem>>>;

/// The connection to Redis shared by the adapter and the control channel: a socketioxide
/// [`Driver`] that survives Redis restarts (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct RedisLink(Arc<Link>);

struct Link {
    conn: ConnectionManager,
    handlers: Handlers,
    /// Whether Redis answers and every channel is subscribed.
    up: watch::Sender<bool>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("up", &*self.0.up.borrow())
            .finish_non_exhaustive()
    }
}

/// The Redis URL with RESP3 asked for, which the link needs (Redis 7 or later): added
/// when the URL names no protocol, lower-cased when it says `RESP3` (redis-rs knows only
/// `resp3` and `3`). A URL that asks for RESP2 is refused.
pub fn resp3_url(url: &str) -> Result<String, String> {
    // A fragment (`#insecure`: TLS without checking the certificate) stays last.
    let (url, fragment) = match url.split_once('#') {
        Some((url, fragment)) => (url, format!("#{fragment}")),
        None => (url, String::new()),
    };
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| format!("cannot read the query of the Redis URL: {e}"))?;
    match pairs.iter_mut().find(|(k, _)| k == "protocol") {
        Some((_, v)) if v == "3" || v.eq_ignore_ascii_case("resp3") => *v = "resp3".into(),
        Some((_, v)) => {
            return Err(format!(
                "the Redis URL asks for protocol {v}: Belfry needs RESP3 (protocol=resp3, Redis 7 or later)"
            ));
        }
        None => pairs.push(("protocol".into(), "resp3".into())),
    }
    let query = serde_urlencoded::to_string(&pairs).map_err(|e| e.to_string())?;
    Ok(format!("{base}?{query}{fragment}"))
}

impl RedisLink {
    /// Connects, with RESP3 (see [`resp3_url`]).
    pub async fn connect(url: &str) -> Result<RedisLink, redis::RedisError> {
        let url = resp3_url(url).map_err(|why| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad Redis URL", why))
        })?;
        let client = redis::Client::open(url)?;
        let (pushes, pushed) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(pushes)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            // A few quick tries; after them the watchdog below keeps pinging.
            .set_number_of_retries(3)
            .set_max_delay(MAX_PING_PAUSE);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        let link = Arc::new(Link {
            conn,
            handlers: RwLock::new(HashMap::new()),
            up: watch::Sender::new(true),
        });
        tokio::spawn(route_pushes(Arc::downgrade(&link), pushed));
        Ok(RedisLink(link))
    }

    /// Follows the link's state: `true` while Redis answers with every channel
    /// subscribed.
    pub fn status(&self) -> watch::Receiver<bool> {
        self.0.up.subscribe()
    }
}

/// Hands each message to its channel's reader; on a lost connection, marks the link down
/// and watches for Redis to come back.
async fn route_pushes(link: Weak<Link>, mut pushed: mpsc::UnboundedReceiver<redis::PushInfo>) {
    while let Some(push) = pushed.recv().await {
        let Some(link) = link.upgrade() else {
            return;
        };
        match push.kind {
            redis::PushKind::Message | redis::PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(chan), Some(msg)) = (data.next(), data.next()) else {
                    continue;
                };
                let (Ok(chan), Ok(msg)) = (
                    redis::from_redis_value::<String>(chan),
                    redis::from_redis_value::<Vec<u8>>(msg),
                ) else {
                    continue;
                };
                let handlers = link.handlers.read().unwrap_or_else(|p| p.into_inner());
                if let Some(tx) = handlers.get(&chan)
                    && tx.try_send((chan, msg)).is_err()
                {
                    tracing::warn!("a Redis channel's reader is behind; a message was dropped");
                }
            }
            // Only on the first loss: a watchdog is already running otherwise.
            redis::PushKind::Disconnection if link.up.send_replace(false) => {
                tracing::warn!("lost the connection to Redis; serving this node's sockets only");
                tokio::spawn(watch_for_redis(Arc::downgrade(&link)));
            }
            _ => {}
        }
    }
}

/// Pings until Redis answers, subscribes every channel again, then reports the link up.
async fn watch_for_redis(link: Weak<Link>) {
    let mut pause = Duration::from_millis(50);
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PING_PAUSE);
        let Some(link) = link.upgrade() else {
            return;
        };
        let mut conn = link.conn.clone();
        if redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_err()
        {
            continue;
        }
        // The manager resubscribes by itself, but ignores failures doing so: subscribe
        // again (it changes nothing for a channel already subscribed).
        let channels: Vec<String> = link
            .handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        if !channels.is_empty() && conn.subscribe(&channels).await.is_err() {
            continue;
        }
        link.up.send_replace(true);
        tracing::info!("Redis is back; every channel is subscribed again");
        return;
    }
}

impl Driver for RedisLink {
    type Error = redis::RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let mut conn = self.0.conn.clone();
        redis::cmd("PUBLISH")
            .arg(chan)
            .arg(val)
            .query_async::<redis::Value>(&mut conn)
            .await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size.max(CHANNEL_BUFFER));
        // The reader first, so no message arriving right after SUBSCRIBE is lost.
        self.0
            .handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chan.clone(), tx);
        if let Err(e) = self.0.conn.clone().subscribe(&chan).await {
            self.0
                .handlers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&chan);
            return Err(e);
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.0
            .handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chan);
        self.0.conn.clone().unsubscribe(chan).await
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let mut conn = self.0.conn.clone();
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut conn)
            .await?;
        Ok(count)
    }
}

/// A room change for other nodes to apply to their own sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// `user` subscribed to `topic`: devices whose token allows it join its room, and
    /// catch up from `from` (exclusive), the head when the subscribe began.
    Subscribed {
        /// The node the change was made on.
        node: String,
        /// The user.
        user: String,
        /// The topic.
        topic: String,
        /// Catch up the joined devices from after this id.
        from: u64,
    },
    /// `user` unsubscribed from `topic`: their devices leave its room.
    Unsubscribed {
        /// The node the change was made on.
        node: String,
        /// The user.
        user: String,
        /// The topic.
        topic: String,
    },
}

/// This node's side of the link to the others (nothing on a single node).
#[derive(Debug, Clone, Default)]
pub struct Peers(Option<(RedisLink, String)>);

impl Peers {
    /// No other nodes.
    pub fn none() -> Peers {
        Peers(None)
    }

    /// Linked to the other nodes through `link`, under a fresh node id.
    pub fn linked(link: RedisLink) -> Peers {
        let node = format!("{:016x}", rand::random::<u64>());
        Peers(Some((link, node)))
    }

    /// This node's id (empty on a single node).
    pub fn node(&self) -> &str {
        self.0.as_ref().map_or("", |(_, node)| node)
    }

    /// The link, when there are other nodes.
    pub fn link(&self) -> Option<&RedisLink> {
        self.0.as_ref().map(|(link, _)| link)
    }

    /// Tells the other nodes. A message lost while Redis is unreachable is made up for
    /// when the link is back (see the module documentation).
    pub async fn announce(&self, message: &Control) {
        let Some((link, _)) = &self.0 else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(message) else {
            return;
        };
        if let Err(e) = link.publish(CONTROL.to_owned(), bytes).await {
            tracing::debug!(error = %e, "cannot tell the other nodes; they resync when Redis is back");
        }
    }
}

/// Starts this node's cluster tasks: applying other nodes' [`Control`] messages and
/// recovering after a Redis outage. Nothing on a single node.
pub async fn start<A: Adapter>(
    state: &SharedState<A>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let Some(link) = state.peers.link() else {
        return Ok(Vec::new());
    };
    state.metrics.redis_linked.store(true, Relaxed);
    state
        .metrics
        .redis_up
        .store(*link.status().borrow(), Relaxed);
    let control = link
        .subscribe(CONTROL.to_owned(), CHANNEL_BUFFER)
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to the nodes' control channel: {e}"))?;
    Ok(vec![
        tokio::spawn(follow(state.clone(), control)),
        tokio::spawn(recover_after_outages(state.clone(), link.status())),
    ])
}

/// Applies the other nodes' control messages to this node's sockets.
async fn follow<A: Adapter>(state: SharedState<A>, mut control: MessageStream<ChanItem>) {
    use futures_util::StreamExt;
    while let Some((_, bytes)) = control.next().await {
        let message: Control = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed control message");
                continue;
            }
        };
        match message {
            Control::Subscribed { node, .. } | Control::Unsubscribed { node, .. }
                if node == state.peers.node() => {}
            Control::Subscribed {
                user, topic, from, ..
            } => {
                let _user = state.user_lock(&user).lock().await;
                for socket in state.join_topic(&user, &topic) {
                    if let Some(session) = session(&socket) {
                        delivery::recover_from(&state, &socket, &session, from + 1);
                    }
                }
            }
            Control::Unsubscribed { user, topic, .. } => {
                let _user = state.user_lock(&user).lock().await;
                state.leave_topic(&user, &topic);
            }
        }
    }
}

/// How long before Redis was found unreachable the outage is taken to have begun, for
/// the read marks re-sent after it (a connection can die some time before a node hears).
const OUTAGE_MARGIN_MS: i64 = 30_000;
/// The most read marks re-sent to one device after an outage.
const MAX_READ_MARKS_RESENT: u32 = 10_000;

/// After each Redis outage: every socket of this node gets the topic rooms the store
/// says it should have, a catch-up from where the outage began, and the read marks its
/// user made since then (made on another node, they could not reach it).
async fn recover_after_outages<A: Adapter>(
    state: SharedState<A>,
    mut status: watch::Receiver<bool>,
) {
    let mut outage = None;
    while status.changed().await.is_ok() {
        let up = *status.borrow_and_update();
        state.metrics.redis_up.store(up, Relaxed);
        if !up {
            state.metrics.redis_outages_total.fetch_add(1, Relaxed);
            outage.get_or_insert((state.head(), crate::store::now_ms() - OUTAGE_MARGIN_MS));
            continue;
        }
        let Some((from, since)) = outage.take() else {
            continue;
        };
        let mut read_marks: HashMap<String, Vec<u64>> = HashMap::new();
        let sockets = state
            .io
            .of(events::SUBSCRIBER_NAMESPACE)
            .map(|ns| ns.sockets())
            .unwrap_or_default();
        tracing::info!(
            sockets = sockets.len(),
            from,
            "catching up this node's sockets after the Redis outage"
        );
        for socket in sockets {
            let Some(session) = session(&socket) else {
                continue;
            };
            let _user = state.user_lock(&session.user).lock().await;
            let viewer = match state.viewer(&session.user, &session.allowed).await {
                Ok(viewer) => viewer,
                Err(e) => {
                    // Its rooms may be stale: a reconnect rebuilds them.
                    tracing::warn!(error = %e, "cannot read subscriptions; disconnecting the socket");
                    let _ = socket.disconnect();
                    continue;
                }
            };
            let wanted: Vec<String> = viewer.topics.iter().map(|t| rooms::topic(t)).collect();
            let stale: Vec<String> = socket
                .rooms()
                .into_iter()
                .map(|r| r.to_string())
                .filter(|r| r.starts_with("topic:") && !wanted.contains(r))
                .collect();
            socket.leave(stale);
            socket.join(wanted);
            delivery::recover_from(&state, &socket, &session, from + 1);
            if !read_marks.contains_key(&session.user) {
                let ids = state
                    .store
                    .read_since(&session.user, since, MAX_READ_MARKS_RESENT)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "cannot read the read marks to re-send");
                        Vec::new()
                    });
                read_marks.insert(session.user.clone(), ids);
            }
            for ids in read_marks[&session.user].chunks(belfry_protocol::limits::MAX_READ_IDS) {
                let marks = ReadRequest::Ids { ids: ids.to_vec() };
                if let Err(e) = socket.emit(events::READ, &marks) {
                    tracing::debug!(error = %e, "re-sending read marks");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_url_always_asks_for_resp3() {
        let ok = |url| resp3_url(url).expect("accepted");
        assert_eq!(ok("redis://r:6379"), "redis://r:6379?protocol=resp3");
        assert_eq!(ok("redis://r:6379/"), "redis://r:6379/?protocol=resp3");
        assert_eq!(ok("redis://r/?protocol=RESP3"), "redis://r/?protocol=resp3");
        assert_eq!(ok("redis://r/0?protocol=3"), "redis://r/0?protocol=resp3");
        assert_eq!(
            ok("rediss://u:p@r/?insecure=1&protocol=resp3"),
            "rediss://u:p@r/?insecure=1&protocol=resp3"
        );
        assert_eq!(
            ok("rediss://r:6380/#insecure"),
            "rediss://r:6380/?protocol=resp3#insecure"
        );
        let refused = resp3_url("redis://r/?protocol=resp2").expect_err("refused");
        assert!(refused.contains("RESP3"), "{refused}");
    }

    #[test]
    fn control_messages_have_a_stable_wire_form() {
        let m = Control::Subscribed {
            node: "n1".into(),
            user: "ann".into(),
            topic: "ops".into(),
            from: 41,
        };
        let json = serde_json::to_string(&m).expect("serializes");
        assert_eq!(
            json,
            r#"{"op":"subscribed","node":"n1","user":"ann","topic":"ops","from":41}"#
        );
        assert_eq!(serde_json::from_str::<Control>(&json).expect("parses"), m);
    }
}
