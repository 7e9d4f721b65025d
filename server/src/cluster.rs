//! Several nodes: what crosses between them, and the Redis link that carries part of it.
//!
//! - **Notifications** do not cross through Redis: every node reads what any node
//!   committed from the shared PostgreSQL store, in id order (`store/feed.rs`). Redis
//!   failing can neither lose nor reorder one.
//! - **Room changes** (a subscribe made on one node puts the user's devices on every node
//!   into the topic's room, but only those whose token allows the topic) do not cross
//!   through Redis either: the transaction that stores a subscription announces it, so
//!   every node hears it right after the commit, in commit order ([`follow_rooms`]). Each
//!   node holds back live delivery to the devices it joins, joins them, and catches them
//!   up from the head at the commit, so nothing published meanwhile is missed. A node
//!   that stopped hearing (its listening connection was lost) rebuilds every socket's
//!   rooms from the store once it hears again, and catches every socket up.
//! - **Events to a user's devices** (`read`, `subscribed`, `unsubscribed`) and **presence
//!   counts** go through socketioxide's Redis adapter: `to(room).emit` and
//!   `fetch_sockets` reach every node. While Redis is unreachable they reach this node's
//!   devices only; once it is back, each node catches its sockets up from where the
//!   outage began and re-sends the read marks made since ([`resync`]).
//! - **The link** ([`RedisLink`]): socketioxide's own Redis driver subscribes once on a
//!   plain connection and never again after Redis restarts. This one runs on redis-rs's
//!   `ConnectionManager`, which reconnects, and a health task that pings Redis every few
//!   seconds (an idle connection a NAT dropped is noticed too), subscribes every channel
//!   again once Redis answers, and reports each outage and each return.

use crate::catch_up;
use crate::membership::names;
use crate::session::{self, Session};
use crate::state::SharedState;
use crate::store::{RoomChange, RoomEvent};
use backon::{BackoffBuilder, ExponentialBuilder};
use belfry_protocol::events::{self, ReadRequest};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use socketioxide::adapter::{Adapter, Emitter, LocalAdapter};
use socketioxide_redis::CustomRedisAdapter;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

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

/// How long a request to the other nodes (presence) waits for their answers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages buffered per Redis channel before the reader drops them (it logs each).
pub const CHANNEL_BUFFER: usize = 8192;
/// The longest pause between two pings while Redis is unreachable.
const MAX_PING_PAUSE: Duration = Duration::from_secs(1);
/// How often Redis is pinged while the link is up.
const HEALTH_PING: Duration = Duration::from_secs(5);
/// How long Redis has to answer a command (a ping included).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The pauses between pings while Redis is unreachable: 50 ms, doubling up to
/// [`MAX_PING_PAUSE`].
const DOWN_PINGS: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(MAX_PING_PAUSE)
    .without_max_times();

type Handlers = RwLock<HashMap<String, mpsc::Sender<ChanItem>>>;

/// The connection to Redis the adapter runs on: a socketioxide
/// [`Driver`] that survives Redis restarts (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct RedisLink(Arc<Link>);

struct Link {
    conn: ConnectionManager,
    handlers: Handlers,
    /// Whether Redis answers and every channel is subscribed.
    up: AtomicBool,
    /// Counts connection losses, so a loss during a return is not mistaken for it.
    losses: AtomicU64,
    /// Wakes the health task at once (a lost connection).
    poke: Arc<Notify>,
    /// How often the health task pings while the link is up ([`HEALTH_PING`]).
    health_every: Duration,
    /// Each outage and each return, in order (never merged), for [`recover_after_outages`].
    events: mpsc::UnboundedSender<LinkEvent>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<LinkEvent>>>,
}

/// A change of the link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkEvent {
    Down,
    Up,
}

impl Link {
    /// Marks the link down (once per outage), saying `why`.
    fn lost(&self, why: &str) {
        self.losses.fetch_add(1, SeqCst);
        if self.up.swap(false, SeqCst) {
            tracing::warn!(
                why,
                "lost the connection to Redis; serving this node's devices only"
            );
            let _ = self.events.send(LinkEvent::Down);
        }
        self.poke.notify_one();
    }
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("up", &self.0.up.load(SeqCst))
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// Connects, with RESP3 (see [`resp3_url`]).
    pub async fn connect(url: &str) -> Result<RedisLink, redis::RedisError> {
        RedisLink::connect_pinging(url, HEALTH_PING).await
    }

    /// Connects, pinging every `health_every` while the link is up.
    async fn connect_pinging(
        url: &str,
        health_every: Duration,
    ) -> Result<RedisLink, redis::RedisError> {
        let url = crate::config::resp3_url(url).map_err(|why| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad Redis URL", why))
        })?;
        let client = redis::Client::open(url)?;
        let (pushes, pushed) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(pushes)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // A few quick tries; after them the watchdog below keeps pinging.
            .set_number_of_retries(3)
            .set_max_delay(MAX_PING_PAUSE);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        let (events, events_rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            conn,
            handlers: RwLock::new(HashMap::new()),
            up: AtomicBool::new(true),
            losses: AtomicU64::new(0),
            poke: Arc::new(Notify::new()),
            health_every,
            events,
            events_rx: Mutex::new(Some(events_rx)),
        });
        tokio::spawn(route_pushes(Arc::downgrade(&link), pushed));
        tokio::spawn(keep_healthy(Arc::downgrade(&link), link.poke.clone()));
        Ok(RedisLink(link))
    }

    /// The link's outages and returns (the first caller gets them).
    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<LinkEvent>> {
        self.0
            .events_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
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
            redis::PushKind::Disconnection => link.lost("the connection closed"),
            _ => {}
        }
    }
}

/// Pings Redis every [`HEALTH_PING`] while the link is up (and at once when a lost
/// connection pokes it); while it is down, pings more often until Redis answers, then
/// subscribes every channel again and reports the link up, unless the connection was
/// lost again meanwhile. Ends when the link is dropped.
///
/// A ping shares the one connection with everything else the node sends, so under a
/// heavy fan-out it can wait behind that traffic for longer than [`RESPONSE_TIMEOUT`]
/// while Redis is fine. A ping that timed out is therefore sent once more at once, and
/// only a second timeout marks the link lost: a Redis that hangs is noticed after two
/// timeouts, one that closes the connection at once (as before, through the push of
/// its disconnection).
async fn keep_healthy(link: Weak<Link>, poke: Arc<Notify>) {
    let mut pauses = DOWN_PINGS.build();
    loop {
        let wait = match link.upgrade() {
            Some(link) if link.up.load(SeqCst) => link.health_every,
            Some(_) => pauses.next().unwrap_or(MAX_PING_PAUSE),
            None => return,
        };
        let poked = tokio::select! {
            () = poke.notified() => true,
            () = tokio::time::sleep(wait) => false,
        };
        if poked {
            pauses = DOWN_PINGS.build();
            continue;
        }
        let Some(link) = link.upgrade() else {
            return;
        };
        let losses = link.losses.load(SeqCst);
        let mut conn = link.conn.clone();
        let mut ping = ping_once(&mut conn).await;
        if link.up.load(SeqCst) && ping.as_ref().is_err_and(redis::RedisError::is_timeout) {
            tracing::debug!("a health ping timed out; sending another");
            ping = ping_once(&mut conn).await;
        }
        let answered = ping.is_ok();
        if link.up.load(SeqCst) {
            if let Err(e) = ping {
                link.lost(&format!("a health ping failed: {e}"));
            }
            continue;
        }
        if !answered {
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
        if link.losses.load(SeqCst) == losses && !link.up.swap(true, SeqCst) {
            pauses = DOWN_PINGS.build();
            tracing::info!("Redis is back; every channel is subscribed again");
            let _ = link.events.send(LinkEvent::Up);
        }
    }
}

/// One PING, answered or not within [`RESPONSE_TIMEOUT`].
async fn ping_once(conn: &mut ConnectionManager) -> Result<String, redis::RedisError> {
    redis::cmd("PING").query_async::<String>(conn).await
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

/// Starts following the Redis link: recovery after each outage. Nothing on a single
/// node.
pub fn start<A: Adapter>(
    state: &SharedState<A>,
    link: Option<&RedisLink>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(events) = link.and_then(RedisLink::take_events) else {
        return Vec::new();
    };
    let gauges = LinkGauges {
        up: state.metrics.gauge(
            "belfry_redis_link_up",
            "1 while Redis, which links the hub nodes, answers with every channel subscribed; 0 otherwise.",
        ),
        outages: state
            .metrics
            .counter("belfry_redis_outages_total", "Times the link to Redis was lost."),
    };
    gauges.up.set(1.0);
    vec![tokio::spawn(recover_after_outages(
        state.clone(),
        events,
        gauges,
    ))]
}

/// The link's own metrics (only a linked hub has them).
struct LinkGauges {
    up: metrics::Gauge,
    outages: metrics::Counter,
}

/// Applies the room changes every node's transactions announce (see `store/feed.rs`) to
/// this node's sockets, and resyncs them after announcements may have gone unheard.
pub async fn follow_rooms<A: Adapter>(
    state: SharedState<A>,
    mut changes: mpsc::UnboundedReceiver<RoomEvent>,
) {
    let mut unheard_since = None;
    while let Some(event) = changes.recv().await {
        match event {
            RoomEvent::Change(RoomChange::Subscribed { user, topic, from }) => {
                let _user = state.membership.user_lock(&user).lock().await;
                for socket in state.membership.outside_topic(&user, &topic) {
                    let Some(session) = session::of(&socket) else {
                        continue;
                    };
                    // Held back first: nothing published after `from` may reach it live
                    // before the catch-up has sent what it missed.
                    session.hold_live_from(from + 1);
                    socket.join(names::topic(&topic));
                    catch_up::recover(&state, &socket, Duration::ZERO);
                }
            }
            RoomEvent::Change(RoomChange::Unsubscribed { user, topic }) => {
                let _user = state.membership.user_lock(&user).lock().await;
                state.membership.leave_topic(&user, &topic);
            }
            RoomEvent::Lost => {
                unheard_since.get_or_insert_with(|| Outage::began(&state));
            }
            RoomEvent::Resumed => {
                if let Some(outage) = unheard_since.take() {
                    resync(&state, outage).await;
                }
            }
        }
    }
}

/// Where an outage began: the head, and the time less a margin (a connection can die
/// some time before its node hears of it).
#[derive(Debug, Clone)]
struct Outage {
    /// The epoch delivery was in (the head counts in it).
    epoch: Arc<str>,
    head: u64,
    since_ms: i64,
}

impl Outage {
    fn began<A: Adapter>(state: &SharedState<A>) -> Outage {
        // The epoch first: the head read after it counts in it (see `head.rs`).
        let epoch = state.head.epoch();
        Outage {
            epoch,
            head: state.head.get(),
            since_ms: crate::store::now_ms() - OUTAGE_MARGIN_MS,
        }
    }

    /// Where a socket's live notifications may have stopped: after the head at the
    /// outage, for a socket of the epoch it counts in; for one let in under a later
    /// epoch, after where delivery entered that epoch (or, for an epoch delivery has
    /// not reached yet, anywhere: from the first id).
    fn missed_from<A: Adapter>(&self, state: &SharedState<A>, session: &Session) -> u64 {
        if *session.epoch == *self.epoch {
            return self.head + 1;
        }
        match state.head.epoch_began() {
            (epoch, since) if *epoch == *session.epoch => since + 1,
            _ => 1,
        }
    }
}

/// How long before a node noticed an outage it is taken to have begun.
const OUTAGE_MARGIN_MS: i64 = 30_000;
/// The most read marks re-sent to one device after an outage.
const MAX_READ_MARKS_RESENT: u32 = 10_000;

/// After each Redis outage, [`resync`] this node's sockets.
async fn recover_after_outages<A: Adapter>(
    state: SharedState<A>,
    mut events: mpsc::UnboundedReceiver<LinkEvent>,
    gauges: LinkGauges,
) {
    let mut outage = None;
    while let Some(event) = events.recv().await {
        match event {
            LinkEvent::Down => {
                gauges.up.set(0.0);
                gauges.outages.increment(1);
                outage.get_or_insert_with(|| Outage::began(&state));
            }
            LinkEvent::Up => {
                gauges.up.set(1.0);
                if let Some(outage) = outage.take() {
                    resync(&state, outage).await;
                }
            }
        }
    }
}

/// For every socket of this node, after an outage: the topic rooms the store says it
/// belongs in, a catch-up from where the outage began, and the read marks its user made
/// since (made on another node, they could not reach it).
async fn resync<A: Adapter>(state: &SharedState<A>, outage: Outage) {
    let sockets = state.membership.all_sockets();
    tracing::info!(
        sockets = sockets.len(),
        from = outage.head,
        "catching this node's sockets up after an outage"
    );
    let mut read_marks: HashMap<String, Vec<u64>> = HashMap::new();
    for socket in sockets {
        let Some(session) = session::of(&socket) else {
            continue;
        };
        let _user = state.membership.user_lock(&session.user).lock().await;
        let viewer = match state.store.viewer(&session.user, &session.allowed).await {
            Ok(viewer) => viewer,
            Err(e) => {
                // Its rooms may be stale: a reconnect rebuilds them.
                tracing::warn!(error = %e, "cannot read subscriptions; disconnecting the socket");
                let _ = socket.disconnect();
                continue;
            }
        };
        session.hold_live_from(outage.missed_from(state, &session));
        state.membership.rejoin(&socket, &viewer);
        catch_up::recover(state, &socket, Duration::ZERO);
        if !read_marks.contains_key(&session.user) {
            let ids = state
                .store
                .read_since(&session.user, outage.since_ms, MAX_READ_MARKS_RESENT)
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

#[cfg(test)]
mod tests {
    use super::*;
    use belfry_testkit::Redis;

    /// Holds back every command of every other client of `redis` for `pause`.
    async fn pause(redis: &Redis, pause: Duration) {
        let client = redis::Client::open(redis.url()).expect("the test's Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the test's Redis");
        let millis = u64::try_from(pause.as_millis()).expect("a short pause");
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(millis)
            .arg("ALL")
            .query_async::<()>(&mut conn)
            .await
            .expect("CLIENT PAUSE");
    }

    async fn next(events: &mut mpsc::UnboundedReceiver<LinkEvent>) -> Option<LinkEvent> {
        tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .expect("the link reported nothing in 15 s")
    }

    #[tokio::test]
    async fn a_ping_held_up_behind_traffic_is_no_outage_but_a_hung_redis_is() {
        let redis = Redis::start().await;
        let link = RedisLink::connect_pinging(&redis.url(), Duration::from_millis(100))
            .await
            .expect("the link connects");
        let mut events = link.take_events().expect("the link's events");

        // Held for 3 s: the ping in flight times out after 2 s, the one sent right after
        // it is answered when Redis goes on.
        pause(&redis, Duration::from_secs(3)).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(link.0.up.load(SeqCst), "the link stayed up");
        assert_eq!(link.0.losses.load(SeqCst), 0);
        assert!(events.try_recv().is_err(), "no outage was reported");

        // Held for 7 s: two pings in a row time out, so the link is lost; it is back as
        // soon as Redis answers again.
        pause(&redis, Duration::from_secs(7)).await;
        assert_eq!(next(&mut events).await, Some(LinkEvent::Down));
        assert_eq!(next(&mut events).await, Some(LinkEvent::Up));
        assert!(link.0.up.load(SeqCst));
        let mut conn = link.0.conn.clone();
        assert_eq!(ping_once(&mut conn).await.expect("a ping"), "PONG");
    }
}
