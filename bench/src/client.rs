//! One lean subscriber: the hub's real protocol (Engine.IO v4 over a WebSocket, the
//! Socket.IO handshake with a token and a cursor, catch-up, live notifications, acks,
//! pongs) with nothing else, so one process can hold thousands. It follows the client
//! cursor rule of docs/PROTOCOL.md section 7 and counts what it receives: every frame,
//! repeats (a repeat is dropped, as a real client's store drops it), and ids that
//! arrived out of order within one stream.

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Where and as whom a subscriber connects.
#[derive(Debug, Clone)]
pub struct Target {
    /// The hub's address.
    pub hub: SocketAddr,
    /// The user token.
    pub token: String,
    /// The local address to connect from (several loopback addresses pass the 64K
    /// ports of one).
    pub source: Option<IpAddr>,
}

/// Why a connection ended.
#[derive(Debug)]
pub enum Ended {
    /// The hub refused the handshake (`connect_error`): the message.
    Refused(String),
    /// The transport failed or closed.
    Closed(String),
    /// Asked to stop.
    Stopped,
}

/// What a subscriber received over all its connections.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Notifications received, repeats included.
    pub frames: u64,
    /// Notifications received that were already held (dropped).
    pub repeats: u64,
    /// Ids lower than the one before them in the same stream (catch-up or live) of one
    /// connection.
    pub out_of_order: u64,
    /// Successful handshakes.
    pub connects: u64,
    /// Every id held, when the subscriber keeps them (tests); empty otherwise.
    pub held: HashSet<u64>,
    /// Distinct notifications held.
    pub distinct: u64,
}

/// A subscriber's state across connections: the cursor and what it holds.
#[derive(Debug)]
pub struct Subscriber {
    /// The target.
    pub target: Target,
    /// The highest id it may resume from (the cursor rule).
    pub cursor: Option<u64>,
    /// Whether to keep every id held (tests compare them); otherwise only the cursor and
    /// the ids above it are kept, which counts repeats just as exactly.
    keep_ids: bool,
    /// What it received.
    pub tally: Tally,
    /// Counters shared with a pool (or its own).
    pub counters: std::sync::Arc<Counters>,
    /// Without `keep_ids`: the ids held above the cursor (live ones that arrived before
    /// a catch-up completed), so that their repeat in a later catch-up is known.
    above_cursor: std::collections::BTreeSet<u64>,
}

/// Counters summed over many subscribers, readable while they run.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections handshaken and open now.
    pub connected: AtomicU64,
    /// Successful handshakes.
    pub connects: AtomicU64,
    /// Refused handshakes.
    pub refused: AtomicU64,
    /// Notifications received, repeats included.
    pub frames: AtomicU64,
    /// Distinct notifications held.
    pub distinct: AtomicU64,
    /// Connections open now whose first catch-up has completed (`synced` received).
    pub up_to_date: AtomicU64,
    /// Where live notifications with a due instant in their title record their latency.
    pub latency: Option<std::sync::Arc<crate::latency::Latencies>>,
    /// Why connections ended other than by a stop, and how often (to say why a step
    /// never completed).
    endings: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Counters {
    /// Counts a connection that ended (refused, or closed) for `why`.
    pub fn ended(&self, why: &str) {
        if let Ok(mut endings) = self.endings.lock() {
            *endings.entry(why.to_owned()).or_default() += 1;
        }
    }

    /// Why connections ended, the most frequent first: `reason (count)`, joined.
    pub fn endings(&self) -> String {
        let Ok(endings) = self.endings.lock() else {
            return String::new();
        };
        let mut all: Vec<(&String, &u64)> = endings.iter().collect();
        all.sort_by(|a, b| b.1.cmp(a.1));
        all.iter()
            .take(5)
            .map(|(why, n)| format!("{why} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Counters that also record latencies into `latency`.
    pub fn measuring(latency: std::sync::Arc<crate::latency::Latencies>) -> Self {
        Self {
            latency: Some(latency),
            ..Self::default()
        }
    }
}

#[derive(Deserialize)]
struct Live {
    id: u64,
    #[serde(default)]
    title: String,
}

#[derive(Deserialize)]
struct Batch {
    notifications: Vec<Live>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Open {
    ping_interval: u64,
    ping_timeout: u64,
}

#[derive(Deserialize)]
struct Head {
    head: u64,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One connection's streams.
#[derive(Default)]
struct Streams {
    /// Handshaken (counted in the connected gauge).
    connected: bool,
    /// The longest wait for the next message before the connection counts as dead.
    silence_limit: Duration,
    /// The hub's ping interval + timeout (+ slack), from its open packet.
    ping_limit: Duration,
    synced: bool,
    /// Whether this connection's first catch-up completed (counted once).
    synced_once: bool,
    last_batch: u64,
    last_live: u64,
    /// The highest id stored from batches of the running catch-up.
    batch_max: u64,
}

impl Subscriber {
    /// A subscriber that has never connected (`cursor`: where to start; `Some(0)` for
    /// everything the hub holds).
    pub fn new(target: Target, cursor: Option<u64>, keep_ids: bool) -> Self {
        Self {
            target,
            cursor,
            keep_ids,
            tally: Tally::default(),
            counters: std::sync::Arc::default(),
            above_cursor: std::collections::BTreeSet::new(),
        }
    }

    fn hold(&mut self, id: u64) -> bool {
        self.tally.frames += 1;
        let new = if self.keep_ids {
            self.tally.held.insert(id)
        } else {
            // Everything up to the cursor is held; above it, the ids received so far.
            id > self.cursor.unwrap_or(0) && self.above_cursor.insert(id)
        };
        self.counters.frames.fetch_add(1, Relaxed);
        if new {
            self.tally.distinct += 1;
            self.counters.distinct.fetch_add(1, Relaxed);
        } else {
            self.tally.repeats += 1;
        }
        new
    }

    /// Connects once and runs until the connection ends or `stop` resolves.
    pub async fn run_once(
        &mut self,
        connect_timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Ended {
        tokio::pin!(stop);
        let ws = tokio::select! {
            () = &mut stop => return Ended::Stopped,
            r = tokio::time::timeout(connect_timeout, self.open()) => match r {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => return Ended::Closed(e),
                Err(_) => return Ended::Closed("connect timed out".into()),
            },
        };
        let (mut tx, mut rx) = ws.split();
        // Until the Socket.IO handshake completes, the connect timeout bounds each wait;
        // then the hub's ping interval + timeout (a hub that stops pinging is gone).
        let mut s = Streams {
            silence_limit: connect_timeout,
            ..Streams::default()
        };
        let ended = self.pump(&mut tx, &mut rx, &mut s, stop).await;
        if s.connected {
            self.counters.connected.fetch_sub(1, Relaxed);
        }
        if s.synced_once {
            self.counters.up_to_date.fetch_sub(1, Relaxed);
        }
        ended
    }

    async fn pump(
        &mut self,
        tx: &mut futures_util::stream::SplitSink<Ws, Message>,
        rx: &mut futures_util::stream::SplitStream<Ws>,
        s: &mut Streams,
        mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Ended {
        loop {
            let msg = tokio::select! {
                () = &mut stop => {
                    let close = tx.send(Message::Close(None));
                    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                    return Ended::Stopped;
                }
                m = tokio::time::timeout(s.silence_limit, rx.next()) => match m {
                    Ok(m) => m,
                    Err(_) => return Ended::Closed("the hub went silent".into()),
                },
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => return Ended::Closed("closed".into()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Ended::Closed(e.to_string()),
            };
            let reply = match self.on_packet(text.as_str(), s) {
                Ok(reply) => reply,
                Err(ended) => return ended,
            };
            if let Some(reply) = reply
                && let Err(e) = tx.send(Message::text(reply)).await
            {
                return Ended::Closed(e.to_string());
            }
        }
    }

    async fn open(&self) -> Result<Ws, String> {
        let socket = match self.target.hub {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| e.to_string())?;
        if let Some(ip) = self.target.source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = socket
            .connect(self.target.hub)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let url = format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket",
            self.target.hub
        );
        // Small buffers: the defaults (128 KiB to read) would make the load generator,
        // not the hub, the memory limit of a run with tens of thousands of clients.
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }

    /// Handles one Engine.IO packet; returns the reply to send, if any.
    fn on_packet(&mut self, text: &str, s: &mut Streams) -> Result<Option<String>, Ended> {
        let Some(kind) = text.chars().next() else {
            return Ok(None);
        };
        match kind {
            // Engine.IO open: note the heartbeat, send the Socket.IO CONNECT with the auth.
            '0' => {
                if let Ok(open) = serde_json::from_str::<Open>(&text[1..]) {
                    s.ping_limit = Duration::from_millis(open.ping_interval + open.ping_timeout)
                        + Duration::from_secs(5);
                }
                let auth = serde_json::json!({"token": self.target.token, "cursor": self.cursor});
                Ok(Some(format!("40{auth}")))
            }
            // Engine.IO ping: pong.
            '2' => Ok(Some("3".into())),
            '1' => Err(Ended::Closed("engine.io close".into())),
            '4' => self.on_socket_io(&text[1..], s),
            _ => Ok(None),
        }
    }

    fn on_socket_io(&mut self, p: &str, s: &mut Streams) -> Result<Option<String>, Ended> {
        match p.as_bytes().first() {
            Some(b'0') => {
                if !s.ping_limit.is_zero() {
                    s.silence_limit = s.ping_limit;
                }
                self.tally.connects += 1;
                self.counters.connects.fetch_add(1, Relaxed);
                self.counters.connected.fetch_add(1, Relaxed);
                s.connected = true;
                Ok(None)
            }
            Some(b'1') => Err(Ended::Closed("disconnected by the hub".into())),
            Some(b'4') => {
                self.counters.refused.fetch_add(1, Relaxed);
                Err(Ended::Refused(p[1..].to_owned()))
            }
            Some(b'2') => {
                // An event without an ack id: `2["name",data]`.
                let Some(start) = p.find('[') else {
                    return Ok(None);
                };
                let Ok((name, data)) =
                    serde_json::from_str::<(String, serde_json::Value)>(&p[start..])
                else {
                    return Ok(None);
                };
                Ok(self.on_event(&name, data, s))
            }
            _ => Ok(None),
        }
    }

    fn on_event(&mut self, name: &str, data: serde_json::Value, s: &mut Streams) -> Option<String> {
        use belfry_protocol::events;
        match name {
            events::NOTIFICATION => {
                let live = serde_json::from_value::<Live>(data).ok()?;
                let id = live.id;
                if id <= s.last_live {
                    self.tally.out_of_order += 1;
                }
                s.last_live = id;
                if self.hold(id) {
                    self.timed(&live.title);
                }
                // The cursor moves with live notifications only once this connection's
                // catch-up is complete.
                if s.synced && id > self.cursor.unwrap_or(0) {
                    self.advance(id);
                    return Some(ack(id));
                }
                None
            }
            events::SYNC => {
                let batch = serde_json::from_value::<Batch>(data).ok()?;
                // Any batch (re)opens a catch-up: live no longer moves the cursor.
                s.synced = false;
                for n in &batch.notifications {
                    if n.id <= s.last_batch {
                        self.tally.out_of_order += 1;
                    }
                    s.last_batch = n.id;
                    if self.hold(n.id) {
                        // Held for the first time, from the store (after a recovery, say).
                        self.timed(&n.title);
                    }
                    s.batch_max = s.batch_max.max(n.id);
                }
                if s.batch_max > self.cursor.unwrap_or(0) {
                    self.advance(s.batch_max);
                    return Some(ack(s.batch_max));
                }
                None
            }
            events::SYNCED => {
                let head = serde_json::from_value::<Head>(data).ok()?.head;
                if !s.synced_once {
                    s.synced_once = true;
                    self.counters.up_to_date.fetch_add(1, Relaxed);
                }
                s.synced = true;
                s.last_batch = 0;
                s.batch_max = 0;
                self.advance(head);
                None
            }
            _ => None,
        }
    }
}

impl Subscriber {
    /// Records the latency of a notification just held for the first time, if it is a
    /// timed one and the subscriber measures.
    fn timed(&self, title: &str) {
        if let Some(latency) = &self.counters.latency
            && let Some(due) = crate::latency::due(title)
        {
            latency.record_since(due);
        }
    }

    /// Moves the cursor up to `to` (never down).
    fn advance(&mut self, to: u64) {
        let cursor = self.cursor.unwrap_or(0).max(to);
        self.cursor = Some(cursor);
        if self.above_cursor.first().is_some_and(|&low| low <= cursor) {
            self.above_cursor = self.above_cursor.split_off(&(cursor + 1));
        }
    }
}

fn ack(up_to: u64) -> String {
    format!("42[\"ack\",{{\"up_to\":{up_to}}}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(keep_ids: bool) -> Subscriber {
        let target = Target {
            hub: SocketAddr::from(([127, 0, 0, 1], 9)),
            token: "t".into(),
            source: None,
        };
        Subscriber::new(target, Some(0), keep_ids)
    }

    #[test]
    fn repeats_and_order_are_counted_alike_with_and_without_the_ids() {
        for keep_ids in [true, false] {
            let mut sub = subscriber(keep_ids);
            let mut s = Streams::default();
            let acks: Vec<_> = [
                // Live before the catch-up completes, then again in the catch-up.
                r#"42["notification",{"id":5}]"#,
                r#"42["sync",{"notifications":[{"id":3},{"id":4},{"id":5}],"more":false}]"#,
                r#"42["synced",{"head":5}]"#,
                r#"42["notification",{"id":6}]"#,
                // A repeat in the live stream (also out of order).
                r#"42["notification",{"id":6}]"#,
                // A recovery catch-up repeating 6.
                r#"42["sync",{"notifications":[],"more":true}]"#,
                r#"42["sync",{"notifications":[{"id":6},{"id":7}],"more":false}]"#,
                r#"42["synced",{"head":7}]"#,
            ]
            .iter()
            .filter_map(|p| sub.on_packet(p, &mut s).ok().flatten())
            .collect();
            assert_eq!(sub.tally.frames, 8, "keep_ids {keep_ids}");
            assert_eq!(sub.tally.distinct, 5, "keep_ids {keep_ids}");
            assert_eq!(sub.tally.repeats, 3, "keep_ids {keep_ids}");
            assert_eq!(sub.tally.out_of_order, 1, "keep_ids {keep_ids}");
            assert_eq!(sub.cursor, Some(7));
            // The live 5 before `synced` moved nothing; the batches and later live did.
            assert_eq!(acks, [ack(5), ack(6), ack(7)], "keep_ids {keep_ids}");
        }
    }

    #[test]
    fn a_timed_notification_counts_once_however_it_arrives() {
        let mut sub = subscriber(false);
        let latency = std::sync::Arc::new(crate::latency::Latencies::new());
        sub.counters = std::sync::Arc::new(Counters::measuring(latency.clone()));
        let mut s = Streams::default();
        let due = crate::latency::title(crate::latency::now_micros());
        for p in [
            // From a catch-up first, then live again, then a plain one live.
            format!(r#"42["sync",{{"notifications":[{{"id":1,"title":"{due}"}}],"more":false}}]"#),
            r#"42["synced",{"head":1}]"#.to_owned(),
            format!(r#"42["notification",{{"id":1,"title":"{due}"}}]"#),
            format!(r#"42["notification",{{"id":2,"title":"{due}"}}]"#),
            r#"42["notification",{"id":3,"title":"untimed"}]"#.to_owned(),
        ] {
            let _ = sub.on_packet(&p, &mut s);
        }
        assert_eq!(
            latency.count(),
            2,
            "1 from the catch-up, 2 live; the repeat of 1 not"
        );
    }

    #[test]
    fn the_handshake_sends_the_token_and_cursor_and_answers_pings() {
        let mut sub = subscriber(false);
        let mut s = Streams::default();
        let connect = sub
            .on_packet(
                r#"0{"sid":"x","pingInterval":25000,"pingTimeout":20000}"#,
                &mut s,
            )
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(connect, r#"40{"cursor":0,"token":"t"}"#);
        assert_eq!(s.ping_limit, Duration::from_secs(50));
        assert!(sub.on_packet("40{\"sid\":\"y\"}", &mut s).is_ok());
        assert_eq!(s.silence_limit, Duration::from_secs(50));
        assert_eq!(sub.counters.connected.load(Relaxed), 1);
        assert_eq!(
            sub.on_packet("2", &mut s).ok().flatten().as_deref(),
            Some("3")
        );
        assert!(matches!(
            sub.on_packet(r#"44{"message":"token_expired: x"}"#, &mut s),
            Err(Ended::Refused(_))
        ));
    }
}
