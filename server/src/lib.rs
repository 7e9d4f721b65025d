//! The Belfry hub: authenticated, durable, real-time notification routing.
//!
//! Backends publish over HTTP or the `/publisher` Socket.IO namespace; the hub stores each
//! notification (SQLite or PostgreSQL, group commit), then delivers it live to the Socket.IO sockets of
//! the users allowed to see it; clients that were away catch up from their cursor.
//!
//! [`run`] is the whole server: tests call it on port 0, `main.rs` calls it with the
//! command line's configuration. [`Hub::start`] and [`app`] are its two halves.

pub mod auth;
pub mod catch_up;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod devices;
pub mod drain;
pub mod epoch_change;
pub mod error;
pub mod head;
pub mod health;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod publish;
pub mod rate_limit;
pub mod reads;
pub mod receipts;
mod retention;
pub mod secrets;
pub mod serve;
pub mod session;
pub mod socket;
pub mod state;
pub mod store;

pub use config::Config;
pub use state::{AppState, SharedState};

use cluster::{HubAdapter, RedisLink};
use socketioxide::adapter::LocalAdapter;
use socketioxide::{SocketIo, TransportType};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A started hub: its state, its Socket.IO layer and its background tasks. `A` is the
/// Socket.IO adapter: [`LocalAdapter`] alone, [`cluster::RedisAdapter`] with other nodes.
pub struct Hub<A: HubAdapter = LocalAdapter> {
    /// The shared state.
    pub state: SharedState<A>,
    layer: socketioxide::layer::SocketIoLayer<A>,
    tasks: Vec<JoinHandle<()>>,
    /// The receipts task and its stop signal (it writes the last acks before it ends).
    receipts: (JoinHandle<()>, Arc<tokio::sync::Notify>),
}

impl<A: HubAdapter> std::fmt::Debug for Hub<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// How often the metrics fold their recent samples in (see [`metrics::Metrics::upkeep`])
/// and the limits forget users and addresses whose limits are full again.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The WebSocket read buffer of each socket.
const WS_READ_BUFFER: usize = 512;

impl<A: HubAdapter> Hub<A> {
    /// Opens the store, starts the writer, delivery and retention tasks and registers the
    /// Socket.IO namespaces, on the adapter built from `adapter`; with `link`, the other
    /// nodes' Redis link.
    pub async fn start(
        config: Config,
        adapter: A::State,
        link: Option<RedisLink>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let secret = config
            .jwt_secret
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("no JWT secret configured"))?;
        secrets::check_secret(secret)?;
        secrets::check_keys(&config.publish_keys)?;
        tokio::fs::create_dir_all(&config.data_dir).await?;
        let (store, feed) =
            store::Store::open(&config.data_dir, config.database_url.as_deref()).await?;
        let (layer, io) = SocketIo::builder()
            .with_adapter::<A>(adapter)
            .transports([TransportType::Websocket, TransportType::Polling])
            .ping_interval(config.ping_interval)
            .ping_timeout(config.ping_timeout)
            .max_payload(2 * belfry_protocol::limits::MAX_BODY_BYTES as u64)
            // The same bound over WebSocket (max_payload covers polling only).
            .ws_max_message_size(2 * belfry_protocol::limits::MAX_BODY_BYTES)
            .ws_max_frame_size(2 * belfry_protocol::limits::MAX_BODY_BYTES)
            // Subscribers send small events (acks, reads: tens of bytes); a larger message
            // is read in more than one pass. Every idle socket holds this buffer (default
            // 4 KiB; 1 KiB before, measured in bench/NOTES.md).
            .ws_read_buffer_size(WS_READ_BUFFER)
            // Engine.IO's default, named: a catch-up's bound in memory depends on it.
            .max_buffer_size(catch_up::SOCKET_BUFFER)
            .build_layer();
        let state = Arc::new(AppState::new(store, io, config));
        A::ready(socket::subscriber::register(&state)).await?;
        A::ready(socket::publisher::register(&state)).await?;
        // The store's feed, connected: notifications to delivery, room changes to the
        // rooms of this node's sockets.
        state.head.raise(feed.head);
        let mut tasks = vec![
            tokio::spawn(delivery::run(state.clone(), feed.notifications)),
            tokio::spawn(cluster::follow_rooms(state.clone(), feed.rooms)),
            tokio::spawn(retention::run(
                state.config.clone(),
                state.store.writer().clone(),
            )),
        ];
        tasks.push(tokio::spawn({
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(UPKEEP);
                loop {
                    tick.tick().await;
                    state.metrics.upkeep();
                    state.limits.forget_idle();
                }
            }
        }));
        tasks.extend(cluster::start(&state, link.as_ref()));
        let receipts_stop = Arc::new(tokio::sync::Notify::new());
        let receipts = tokio::spawn(receipts::run(
            state.acks.clone(),
            state.store.writer().clone(),
            receipts_stop.clone(),
        ));
        Ok(Hub {
            state,
            layer,
            tasks,
            receipts: (receipts, receipts_stop),
        })
    }

    /// The router: HTTP routes plus the Socket.IO layer.
    pub fn router(&self) -> axum::Router {
        app(self.state.clone(), self.layer.clone())
    }

    /// Closes every socket (waiting up to a few seconds for them), finishes queued writes
    /// and closes the store.
    pub async fn shutdown(self) {
        // A socket whose client reads nothing may take until TCP_USER_TIMEOUT to close.
        let sockets = tokio::time::timeout(SOCKETS_CLOSE_WITHIN, self.state.io.close());
        if sockets.await.is_err() {
            tracing::warn!("some sockets are still closing; stopping without them");
        }
        for task in &self.tasks {
            task.abort();
        }
        // The sockets are closed: the receipts task writes the last acks and ends.
        let (receipts, stop) = self.receipts;
        stop.notify_one();
        if let Err(e) = receipts.await {
            tracing::error!(error = %e, "receipts task failed");
        }
        // Finishes the queued writes, then stops the writer and the feed.
        self.state.store.close().await;
        tracing::info!("hub stopped");
    }
}

/// The whole HTTP + Socket.IO application for a state and its Socket.IO layer.
pub fn app<A: HubAdapter>(
    state: SharedState<A>,
    io_layer: socketioxide::layer::SocketIoLayer<A>,
) -> axum::Router {
    let mut router = http::routes::<A>()
        .layer(io_layer)
        .layer(tower::util::MapRequestLayer::new(
            socket::detach_handshake::<axum::body::Body>,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    // Outside the Socket.IO layer, so polling responses carry CORS headers too.
    if let Some(cors) = http::cors(&state.config.cors_origins) {
        router = router.layer(cors);
    }
    router.with_state(state)
}

/// How long shutdown waits for the sockets to close.
const SOCKETS_CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(4);

/// The Socket.IO part of shutdown: publisher events in flight get their answers (up to a
/// few seconds), then every socket is closed (waiting up to [`SOCKETS_CLOSE_WITHIN`]).
async fn stop_sockets<A: HubAdapter>(state: &SharedState<A>, io: &SocketIo<A>) {
    state.drain.wait(std::time::Duration::from_secs(5)).await;
    let _ = tokio::time::timeout(SOCKETS_CLOSE_WITHIN, io.close()).await;
}

/// Makes the kernel abort a connection whose peer takes nothing for as long as the
/// heartbeat allows a silent client (ping interval + ping timeout). A client that stops
/// reading otherwise holds its connection forever: once its TCP window is closed, the
/// hub's writes wait without end, and Engine.IO's own close waits for that writer. The
/// option set on the listener is inherited by every accepted socket (Linux).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn drop_stuck_peers(listener: &TcpListener, config: &Config) {
    let limit = config.ping_interval + config.ping_timeout;
    if let Err(e) = socket2::SockRef::from(listener).set_tcp_user_timeout(Some(limit)) {
        tracing::warn!(error = %e, "cannot set TCP_USER_TIMEOUT; a client that stops reading may hold its connection");
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn drop_stuck_peers(_listener: &TcpListener, _config: &Config) {}

/// Serves the hub on `listener` until `shutdown` resolves, then stops accepting, closes
/// the sockets, lets in-flight requests finish and closes the store.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match config.redis_url.clone() {
        None => serve::<LocalAdapter>(listener, config, (), None, shutdown).await,
        Some(url) => {
            let link = cluster::RedisLink::connect(&url).await.map_err(|e| {
                let url = config::redact_url(&url);
                anyhow::anyhow!("cannot reach Redis at {url}: {e}")
            })?;
            let adapter = socketioxide_redis::RedisAdapterCtr::new_with_driver(
                link.clone(),
                socketioxide_redis::RedisAdapterConfig::new()
                    .with_prefix(config.redis_prefix.clone())
                    .with_request_timeout(cluster::REQUEST_TIMEOUT)
                    .with_stream_buffer(cluster::CHANNEL_BUFFER),
            );
            serve::<cluster::RedisAdapter>(listener, config, adapter, Some(link), shutdown).await
        }
    }
}

/// [`run`] on a given adapter.
async fn serve<A: HubAdapter>(
    listener: TcpListener,
    config: Config,
    adapter: A::State,
    link: Option<RedisLink>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The certificate first: a hub that cannot serve TLS should not open its store.
    let tls = match config.tls() {
        Some((cert, key)) => Some(Arc::new(serve::Certificate::load(cert, key)?)),
        None => None,
    };
    #[cfg(unix)]
    let sighup = serve::reload_on_sighup(tls.clone())?;
    let timeouts = serve::Timeouts {
        header_read: config.header_read_timeout,
        idle: config.idle_timeout,
    };
    drop_stuck_peers(&listener, &config);
    let hub = Hub::<A>::start(config, adapter, link).await?;
    let router = hub.router();
    let state = hub.state.clone();
    let addr = listener.local_addr()?;
    match tls {
        None => tracing::info!(%addr, "listening (http, ws)"),
        Some(_) => tracing::info!(%addr, "listening (https, wss)"),
    }
    serve::serve(listener, router, tls, timeouts, shutdown, async move {
        stop_sockets(&state, &state.io).await;
    })
    .await?;
    #[cfg(unix)]
    sighup.abort();
    hub.shutdown().await;
    Ok(())
}
