//! The connection to the hub: one task that connects with the persisted cursor, stores
//! every catch-up batch and live notification (once, by id) before acknowledging it,
//! follows the cursor rule of `docs/PROTOCOL.md`, notices a dead connection by heartbeat,
//! and reconnects with backoff and jitter. A refused token is reported and retried only
//! slowly, never in a hot loop.

use crate::backoff::Backoff;
use crate::events::{ClientEvent, ConnectionState, ConnectionStatus};
use crate::settings::Settings;
use crate::store::LocalStore;
use belfry_protocol::Notification;
use belfry_protocol::events::{self, ReadRequest, SyncBatch, Synced};
use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Payload, TransportType};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Timings of the connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionConfig {
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How often the connection is checked end to end.
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may go unanswered before the connection counts as dead.
    pub heartbeat_timeout: Duration,
    /// Shortest reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long to wait before trying a refused token again (a new token or "Reconnect
    /// now" tries at once).
    pub auth_retry: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            auth_retry: Duration::from_secs(300),
        }
    }
}

/// Why a request over the connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not connected right now.
    #[error("not connected to the hub")]
    NotConnected,
    /// The hub did not answer in time.
    #[error("the hub did not answer")]
    Timeout,
    /// The hub refused it.
    #[error("{0}")]
    Refused(String),
}

enum Command {
    ReconnectNow,
    Request {
        event: &'static str,
        data: Value,
        reply: oneshot::Sender<Result<Value, RequestError>>,
    },
}

/// Controls the connection task. Dropping every handle stops it.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<ConnectionStatus>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::ReconnectNow => f.write_str("ReconnectNow"),
            Command::Request { event, .. } => write!(f, "Request({event})"),
        }
    }
}

impl ConnectionHandle {
    /// Drops the current connection (if any) and connects again at once.
    pub async fn reconnect_now(&self) {
        let _ = self.commands.send(Command::ReconnectNow).await;
    }

    /// The current status.
    pub fn status(&self) -> ConnectionStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch_status(&self) -> watch::Receiver<ConnectionStatus> {
        self.status.clone()
    }

    /// Sends a client event and waits for the hub's reply.
    pub async fn request(&self, event: &'static str, data: Value) -> Result<Value, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Request { event, data, reply })
            .await
            .map_err(|_| RequestError::NotConnected)?;
        rx.await.unwrap_or(Err(RequestError::NotConnected))
    }
}

/// Starts the connection task.
pub fn spawn(
    store: LocalStore,
    settings: watch::Receiver<Settings>,
    events: mpsc::Sender<ClientEvent>,
    config: ConnectionConfig,
) -> ConnectionHandle {
    let (commands_tx, commands) = mpsc::channel(64);
    let (status_tx, status) = watch::channel(ConnectionStatus::new(
        ConnectionState::Connecting,
        "Starting",
    ));
    let task = Connection {
        store,
        settings,
        events,
        commands,
        status: status_tx,
        config,
        backoff: Backoff::new(config.backoff_min, config.backoff_max),
    };
    tokio::spawn(task.run());
    ConnectionHandle {
        commands: commands_tx,
        status,
    }
}

/// What the rust_socketio callbacks forward (they must not do work themselves: they run
/// under the client's lock).
#[derive(Debug)]
enum Inbound {
    Open,
    Error(String),
    Closed,
    Event(String, Value),
}

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    AuthRejected(String),
    Failed(String),
    Restart,
    /// The hub's store is in another epoch: start over from 0, at once.
    StartOver(Option<String>),
    Shutdown,
}

struct Connection {
    store: LocalStore,
    settings: watch::Receiver<Settings>,
    events: mpsc::Sender<ClientEvent>,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<ConnectionStatus>,
    config: ConnectionConfig,
    backoff: Backoff,
}

fn first_arg(payload: Payload) -> Value {
    match payload {
        Payload::Text(mut args) if !args.is_empty() => args.swap_remove(0),
        #[allow(deprecated)]
        Payload::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        _ => Value::Null,
    }
}

/// An error with all its causes (rust_socketio's own message is just "EngineIO Error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if !text.contains(": ") {
        text = format!("{e:?}");
    }
    text
}

/// Turns a rust_socketio connect failure into a sentence for people.
fn describe_connect_error(url: &str, error: &str) -> String {
    let lower = error.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("ssl")
        || lower.contains("handshake failure")
    {
        format!(
            "TLS error talking to {url}: the certificate is not trusted or the hub does not speak TLS ({error})"
        )
    } else if lower.contains("refused") {
        format!("Cannot reach the hub at {url}: connection refused (is it running?)")
    } else if lower.contains("dns") || lower.contains("resolve") || lower.contains("lookup") {
        format!("Cannot reach the hub at {url}: the host name does not resolve")
    } else if lower.contains("timed out") || lower.contains("timeout") {
        format!("Cannot reach the hub at {url}: it did not answer in time")
    } else {
        format!("Cannot reach the hub at {url}: {error}")
    }
}

/// Reads the hub's `connect_error` (`"<code>: <message>"`) into a sentence.
fn describe_refusal(raw: &str) -> (bool, String) {
    let json_part = raw.split_once(": ").map(|(_, rest)| rest).unwrap_or(raw);
    let message = serde_json::from_str::<Value>(json_part)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| json_part.trim_matches('"').to_owned());
    let (code, why) = message.split_once(": ").unwrap_or(("", message.as_str()));
    let auth = code.starts_with("token_") || code == "unauthorized";
    let sentence = match code {
        "token_expired" => format!("The token has expired ({why}). Paste a new one in Settings."),
        "token_bad_signature" => format!("The hub rejected the token: {why}. Is it from this hub?"),
        "token_malformed" => format!("The token is not valid: {why}. Paste the whole token."),
        "unauthorized" => format!("The hub wants a token: {why}"),
        _ => format!("The hub refused the connection: {message}"),
    };
    (auth, sentence)
}

impl Connection {
    fn set_status(&self, state: ConnectionState, detail: impl Into<String>) {
        let status = ConnectionStatus::new(state, detail);
        let changed = *self.status.borrow() != status;
        if changed {
            tracing::info!(state = ?status.state, detail = %status.detail, "connection");
            self.status.send_replace(status.clone());
            let _ = self.events.try_send(ClientEvent::Status(status));
        }
    }

    async fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event).await;
    }

    async fn run(mut self) {
        loop {
            let settings = self.settings.borrow_and_update().clone();
            let ended = if settings.token.trim().is_empty() {
                self.set_status(
                    ConnectionState::NotConfigured,
                    "Paste a token in Settings to connect.",
                );
                self.pause(None).await
            } else {
                self.set_status(
                    ConnectionState::Connecting,
                    format!("Connecting to {}", settings.server_url.trim()),
                );
                self.connection(&settings).await
            };
            let delay = match ended {
                Ended::Shutdown => return,
                Ended::Restart => continue,
                Ended::StartOver(epoch) => match self.store.start_over(epoch.as_deref()).await {
                    Ok(()) => {
                        tracing::warn!(
                            "the hub's store started over (a new epoch); catching up from the start, keeping the history"
                        );
                        continue;
                    }
                    Err(e) => {
                        let delay = self.backoff.next_delay();
                        self.set_status(
                            ConnectionState::Reconnecting,
                            format!(
                                "Local store error: {e}. Trying again in {} s.",
                                delay.as_secs_f64().ceil()
                            ),
                        );
                        Some(delay)
                    }
                },
                Ended::AuthRejected(why) => {
                    self.set_status(ConnectionState::AuthFailed, why);
                    Some(self.config.auth_retry)
                }
                Ended::Failed(why) => {
                    let delay = self.backoff.next_delay();
                    self.set_status(
                        ConnectionState::Reconnecting,
                        format!("{why}. Trying again in {} s.", delay.as_secs_f64().ceil()),
                    );
                    Some(delay)
                }
            };
            if let Ended::Shutdown = self.pause(delay).await {
                return;
            }
        }
    }

    /// Waits for `delay` (forever when `None`), a settings change or "Reconnect now".
    /// Requests meanwhile are answered "not connected".
    async fn pause(&mut self, delay: Option<Duration>) -> Ended {
        let sleep = async {
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return Ended::Restart,
                changed = self.settings.changed() => {
                    if changed.is_err() {
                        return Ended::Shutdown;
                    }
                    self.backoff.reset();
                    return Ended::Restart;
                }
                command = self.commands.recv() => match command {
                    None => return Ended::Shutdown,
                    Some(Command::ReconnectNow) => {
                        self.backoff.reset();
                        return Ended::Restart;
                    }
                    Some(Command::Request { reply, .. }) => {
                        let _ = reply.send(Err(RequestError::NotConnected));
                    }
                },
            }
        }
    }

    /// One connection, from opening to its end.
    async fn connection(&mut self, settings: &Settings) -> Ended {
        let url = settings.server_url.trim().to_owned();
        let (cursor, epoch) = match (self.store.cursor().await, self.store.epoch().await) {
            (Ok(c), Ok(e)) => (c, e),
            (Err(e), _) | (_, Err(e)) => return Ended::Failed(format!("Local store error: {e}")),
        };
        let (tx, mut inbound) = mpsc::unbounded_channel();
        let client = match tokio::time::timeout(
            self.config.connect_timeout,
            open(&url, settings.token.trim(), cursor, epoch.as_deref(), tx),
        )
        .await
        {
            Err(_) => return Ended::Failed(describe_connect_error(&url, "timed out")),
            Ok(Err(e)) => return Ended::Failed(describe_connect_error(&url, &error_chain(&e))),
            Ok(Ok(client)) => client,
        };
        let ended = self.drive(&client, &mut inbound, settings).await;
        let _ = client.disconnect().await;
        ended
    }

    async fn drive(
        &mut self,
        client: &Client,
        inbound: &mut mpsc::UnboundedReceiver<Inbound>,
        opened_with: &Settings,
    ) -> Ended {
        // The namespace handshake: open, or the hub's refusal.
        let opened = tokio::time::timeout(self.config.connect_timeout, async {
            loop {
                match inbound.recv().await {
                    Some(Inbound::Open) => return Ok(()),
                    Some(Inbound::Error(e)) => return Err(e),
                    Some(Inbound::Closed) | None => {
                        return Err("the hub closed the connection".into());
                    }
                    Some(Inbound::Event(..)) => {}
                }
            }
        })
        .await;
        match opened {
            Err(_) => return Ended::Failed("The hub did not answer the handshake".into()),
            Ok(Err(e)) => {
                if e.contains("epoch_changed") {
                    return Ended::StartOver(None);
                }
                let (auth, sentence) = describe_refusal(&e);
                return if auth {
                    Ended::AuthRejected(sentence)
                } else {
                    Ended::Failed(sentence)
                };
            }
            Ok(Ok(())) => {}
        }
        self.set_status(
            ConnectionState::Syncing,
            "Receiving what arrived while away",
        );

        let mut state = Catching::default();
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let (beat_tx, mut beat_rx) = mpsc::unbounded_channel::<Result<Value, RequestError>>();
        // When the unanswered heartbeat counts as lost.
        let mut beat_deadline: Option<tokio::time::Instant> = None;
        let far_future = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        loop {
            tokio::select! {
                message = inbound.recv() => match message {
                    Some(Inbound::Event(name, value)) => {
                        if let Err(ended) = self.on_event(client, &mut state, &name, value).await {
                            return ended;
                        }
                    }
                    Some(Inbound::Error(e)) => return Ended::Failed(format!("Connection lost: {e}")),
                    Some(Inbound::Closed) | None => return Ended::Failed("The hub closed the connection".into()),
                    Some(Inbound::Open) => {}
                },
                _ = heartbeat.tick(), if beat_deadline.is_none() => {
                    beat_deadline = Some(tokio::time::Instant::now() + self.config.heartbeat_timeout);
                    let tx = beat_tx.clone();
                    // Writing to a transport the hub closed fails here at once.
                    if send_request(client, events::HEARTBEAT, json!({}), move |r| {
                        let _ = tx.send(r);
                    })
                    .await
                    .is_err()
                    {
                        return Ended::Failed("Connection lost".into());
                    }
                }
                () = tokio::time::sleep_until(beat_deadline.unwrap_or(far_future)), if beat_deadline.is_some() => {
                    return Ended::Failed("The hub stopped answering".into());
                }
                Some(_) = beat_rx.recv() => beat_deadline = None,
                changed = self.settings.changed() => {
                    if changed.is_err() {
                        return Ended::Shutdown;
                    }
                    // Only a new server or token needs a new connection.
                    if self.settings.borrow_and_update().connection_changed(opened_with) {
                        return Ended::Restart;
                    }
                }
                command = self.commands.recv() => match command {
                    None => return Ended::Shutdown,
                    Some(Command::ReconnectNow) => {
                        self.backoff.reset();
                        return Ended::Restart;
                    }
                    Some(Command::Request { event, data, reply }) => {
                        let sent = send_request(client, event, data, move |r| {
                            let _ = reply.send(r);
                        })
                        .await;
                        if sent.is_err() {
                            return Ended::Failed("Connection lost".into());
                        }
                    }
                },
            }
        }
    }

    /// Handles one server event. An error ends the connection (the next one resumes
    /// from the persisted cursor).
    async fn on_event(
        &mut self,
        client: &Client,
        state: &mut Catching,
        name: &str,
        value: Value,
    ) -> Result<(), Ended> {
        match name {
            events::SYNC => {
                let batch: SyncBatch = serde_json::from_value(value)
                    .map_err(|e| Ended::Failed(format!("Unreadable catch-up batch: {e}")))?;
                // A batch means a catch-up is running: live ones no longer move the cursor.
                state.synced = false;
                let advance = batch.notifications.iter().map(|n| n.id).max();
                let fresh = self
                    .store
                    .store(&batch.notifications, advance)
                    .await
                    .map_err(|e| Ended::Failed(format!("Local store error: {e}")))?;
                if advance.is_some() {
                    self.ack(client).await;
                }
                state.received += fresh.len();
                if !fresh.is_empty() {
                    self.emit(ClientEvent::Stored {
                        notifications: fresh,
                        catch_up: true,
                    })
                    .await;
                }
            }
            events::SYNCED => {
                let synced: Synced = serde_json::from_value(value)
                    .map_err(|e| Ended::Failed(format!("Unreadable catch-up end: {e}")))?;
                let held = self
                    .store
                    .epoch()
                    .await
                    .map_err(|e| Ended::Failed(format!("Local store error: {e}")))?;
                match (&synced.epoch, held) {
                    // The cursor counted another epoch's ids: none of this catch-up
                    // may move it. Start over (the hub left this client unchecked: it
                    // said no epoch when it connected).
                    (Some(theirs), Some(ours)) if *theirs != ours => {
                        return Err(Ended::StartOver(Some(theirs.clone())));
                    }
                    (Some(theirs), None) => self
                        .store
                        .adopt_epoch(theirs)
                        .await
                        .map_err(|e| Ended::Failed(format!("Local store error: {e}")))?,
                    _ => {}
                }
                self.store
                    .advance_cursor(synced.head)
                    .await
                    .map_err(|e| Ended::Failed(format!("Local store error: {e}")))?;
                state.synced = true;
                self.ack(client).await;
                self.backoff.reset();
                self.set_status(ConnectionState::Connected, "Connected and up to date");
                self.emit(ClientEvent::CaughtUp {
                    received: std::mem::take(&mut state.received),
                })
                .await;
                self.flush_pending_reads(client).await;
            }
            events::NOTIFICATION => {
                let n: Notification = serde_json::from_value(value)
                    .map_err(|e| Ended::Failed(format!("Unreadable notification: {e}")))?;
                // The cursor rule: a live one moves the cursor only after `synced`.
                let advance = state.synced.then_some(n.id);
                let fresh = self
                    .store
                    .store(std::slice::from_ref(&n), advance)
                    .await
                    .map_err(|e| Ended::Failed(format!("Local store error: {e}")))?;
                if state.synced {
                    self.ack(client).await;
                }
                if !fresh.is_empty() {
                    if !state.synced {
                        state.received += fresh.len();
                    }
                    self.emit(ClientEvent::Stored {
                        notifications: fresh,
                        catch_up: !state.synced,
                    })
                    .await;
                }
            }
            events::READ => {
                if let Ok(request) = serde_json::from_value::<ReadRequest>(value)
                    && self.store.mark_read(&request).await.is_ok()
                {
                    self.emit(ClientEvent::ReadChanged).await;
                }
            }
            events::SUBSCRIBED | events::UNSUBSCRIBED => {
                self.emit(ClientEvent::TopicsChanged).await;
            }
            other => tracing::debug!(event = other, "ignoring an unknown event"),
        }
        Ok(())
    }

    /// Acknowledges everything up to the persisted cursor (written before this call).
    async fn ack(&self, client: &Client) {
        if let Ok(Some(cursor)) = self.store.cursor().await {
            let _ = client.emit(events::ACK, json!({ "up_to": cursor })).await;
        }
    }

    /// Sends read marks made while offline, merged into as few requests as they fit (each
    /// request counts against the user's write limit on the hub); each is dropped once
    /// the hub confirmed it.
    async fn flush_pending_reads(&self, client: &Client) {
        let Ok(pending) = self.store.pending_reads().await else {
            return;
        };
        for (seqs, request) in merge_reads(pending) {
            let (tx, rx) = oneshot::channel();
            let data = serde_json::to_value(&request).unwrap_or_default();
            if send_request(client, events::READ, data, move |r| {
                let _ = tx.send(r);
            })
            .await
            .is_err()
            {
                return;
            }
            match tokio::time::timeout(self.config.heartbeat_timeout, rx).await {
                Ok(Ok(Ok(_))) => {
                    for seq in seqs {
                        let _ = self.store.drop_pending_read(seq).await;
                    }
                }
                _ => return,
            }
        }
    }
}

/// Read marks merged: every `up_to` into the highest one, every id list into lists of at
/// most [`belfry_protocol::limits::MAX_READ_IDS`] ids, each with the marks it covers.
/// (Marking read is the same whatever order the marks go in.)
fn merge_reads(pending: Vec<(i64, ReadRequest)>) -> Vec<(Vec<i64>, ReadRequest)> {
    let mut up_to: Option<(Vec<i64>, u64)> = None;
    let mut ids: Vec<(Vec<i64>, std::collections::BTreeSet<u64>)> = Vec::new();
    for (seq, request) in pending {
        match request {
            ReadRequest::UpTo { up_to: id } => {
                let (seqs, highest) = up_to.get_or_insert_with(|| (Vec::new(), 0));
                seqs.push(seq);
                *highest = (*highest).max(id);
            }
            ReadRequest::Ids { ids: these } => {
                let fits = ids.last().is_some_and(|(_, held)| {
                    held.len() + these.len() <= belfry_protocol::limits::MAX_READ_IDS
                });
                if !fits {
                    ids.push((Vec::new(), std::collections::BTreeSet::new()));
                }
                if let Some((seqs, held)) = ids.last_mut() {
                    seqs.push(seq);
                    held.extend(these);
                }
            }
        }
    }
    up_to
        .map(|(seqs, up_to)| (seqs, ReadRequest::UpTo { up_to }))
        .into_iter()
        .chain(ids.into_iter().map(|(seqs, held)| {
            let ids = held.into_iter().collect();
            (seqs, ReadRequest::Ids { ids })
        }))
        .collect()
}

/// Where a connection stands in the cursor rule.
#[derive(Debug, Default)]
struct Catching {
    /// `synced` arrived and no catch-up has started since.
    synced: bool,
    /// New notifications in the running catch-up.
    received: usize,
}

/// Opens the Socket.IO connection with the cursor and the epoch it counts in; events
/// flow into `tx`.
async fn open(
    url: &str,
    token: &str,
    cursor: Option<u64>,
    epoch: Option<&str>,
    tx: mpsc::UnboundedSender<Inbound>,
) -> Result<Client, rust_socketio::Error> {
    let (on_open, on_error, on_close, on_any) = (tx.clone(), tx.clone(), tx.clone(), tx);
    ClientBuilder::new(url)
        .namespace(events::SUBSCRIBER_NAMESPACE)
        .auth(match epoch {
            Some(epoch) => json!({ "token": token, "cursor": cursor, "epoch": epoch }),
            None => json!({ "token": token, "cursor": cursor }),
        })
        .transport_type(TransportType::Websocket)
        // Reconnecting is this module's job: the cursor must be re-read every time.
        .reconnect(false)
        .on("open", move |_, _| {
            let _ = on_open.send(Inbound::Open);
            async {}.boxed()
        })
        .on("error", move |payload, _| {
            let text = match first_arg(payload) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let _ = on_error.send(Inbound::Error(text));
            async {}.boxed()
        })
        .on("close", move |_, _| {
            let _ = on_close.send(Inbound::Closed);
            async {}.boxed()
        })
        .on_any(move |event, payload, _| {
            let _ = on_any.send(Inbound::Event(String::from(event), first_arg(payload)));
            async {}.boxed()
        })
        .connect()
        .await
}

/// Emits `event` asking for an ack; `done` gets the reply (or a timeout is up to the
/// caller). Fails at once when the transport is gone.
async fn send_request(
    client: &Client,
    event: &str,
    data: Value,
    done: impl FnOnce(Result<Value, RequestError>) + Send + 'static,
) -> Result<(), ()> {
    let done = Arc::new(Mutex::new(Some(done)));
    let result = client
        .emit_with_ack(
            event,
            data,
            Duration::from_secs(30),
            move |payload: Payload, _c: Client| {
                let done = done.lock().ok().and_then(|mut d| d.take());
                if let Some(done) = done {
                    // rust_socketio hands an ack's argument list as one array.
                    let reply = match first_arg(payload) {
                        Value::Array(mut args) if args.len() == 1 => args.swap_remove(0),
                        other => other,
                    };
                    let result = match reply.get("error") {
                        Some(e) => Err(RequestError::Refused(
                            e.get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("refused")
                                .to_owned(),
                        )),
                        None => Ok(reply),
                    };
                    done(result);
                }
                async {}.boxed()
            },
        )
        .await;
    result.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn offline_read_marks_go_in_as_few_requests_as_fit() {
        use super::merge_reads;
        use belfry_protocol::events::ReadRequest;
        use belfry_protocol::limits::MAX_READ_IDS;
        // Forty marks made offline: more than a user's write burst, one request each.
        let mut pending = Vec::new();
        for seq in 0..40 {
            let request = match seq % 4 {
                0 => ReadRequest::UpTo {
                    up_to: 100 + seq as u64,
                },
                _ => ReadRequest::Ids {
                    ids: vec![seq as u64, seq as u64 + 1],
                },
            };
            pending.push((seq, request));
        }
        // And one list as long as the hub takes.
        pending.push((
            40,
            ReadRequest::Ids {
                ids: (1000..1000 + MAX_READ_IDS as u64).collect(),
            },
        ));
        let merged = merge_reads(pending);
        assert_eq!(merged.len(), 3, "{merged:?}");
        assert_eq!(merged[0].1, ReadRequest::UpTo { up_to: 136 });
        assert_eq!(merged[0].0, (0..40).step_by(4).collect::<Vec<_>>());
        let ReadRequest::Ids { ids } = &merged[1].1 else {
            panic!("{merged:?}")
        };
        // 30 lists of two, overlapping: every id once.
        assert_eq!(ids, &(1..=40).collect::<Vec<u64>>());
        assert_eq!(merged[1].0.len(), 30);
        assert_eq!(merged[2].0, vec![40]);
        // Every mark is covered once.
        let mut seqs: Vec<i64> = merged.iter().flat_map(|(s, _)| s.clone()).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..=40).collect::<Vec<_>>());
    }

    use super::*;

    #[test]
    fn refusals_become_sentences() {
        let raw = r#"Received an ConnectError frame: {"message":"token_expired: token expired at 2026-01-01T00:00:00Z"}"#;
        let (auth, s) = describe_refusal(raw);
        assert!(auth);
        assert!(s.starts_with("The token has expired"), "{s}");
        let (auth, s) = describe_refusal(
            r#"Received an ConnectError frame: {"message":"token_bad_signature: token signature does not match this hub's secret"}"#,
        );
        assert!(auth);
        assert!(s.contains("Is it from this hub?"));
        let (auth, _) =
            describe_refusal(r#"Received an ConnectError frame: {"message":"unavailable: down"}"#);
        assert!(!auth);
    }

    #[test]
    fn connect_errors_become_sentences() {
        assert!(
            describe_connect_error("http://x", "Connection refused (os error 111)")
                .contains("connection refused")
        );
        assert!(
            describe_connect_error("https://x", "invalid peer certificate: UnknownIssuer")
                .starts_with("TLS error")
        );
        assert!(
            describe_connect_error("http://x", "failed to lookup address information")
                .contains("does not resolve")
        );
    }
}
