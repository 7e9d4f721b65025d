//! The Belfry hub: authenticated, durable, real-time notification routing.
//!
//! Backends publish over HTTP or the `/publisher` Socket.IO namespace; the hub stores each
//! notification (SQLite or PostgreSQL, group commit), then delivers it live to the Socket.IO sockets of
//! the users allowed to see it; clients that were away catch up from their cursor.
//!
//! [`run`] is the whole server: tests call it on port 0, `main.rs` calls it with the
//! command line's configuration. [`Hub::start`] and [`app`] are its two halves.

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod error;
pub mod http;
pub mod metrics;
pub mod rate_limit;
pub mod receipts;
mod retention;
pub mod secrets;
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
    writer: JoinHandle<()>,
}

impl<A: HubAdapter> std::fmt::Debug for Hub<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The WebSocket read buffer of each socket.
const WS_READ_BUFFER: usize = 1024;

impl<A: HubAdapter> Hub<A> {
    /// Opens the store, starts the writer, delivery and retention tasks and registers the
    /// Socket.IO namespaces, on the adapter built from `adapter`; with `link`, the other
    /// nodes' Redis link.
    pub async fn start(
        config: Config,
        adapter: A::State,
        link: Option<RedisLink>,
    ) -> anyhow::Result<Self> {
        tokio::fs::create_dir_all(&config.data_dir).await?;
        let (store, writer) =
            store::Store::open(&config.data_dir, config.database_url.as_deref()).await?;
        let (layer, io) = SocketIo::builder()
            .with_adapter::<A>(adapter)
            .transports([TransportType::Websocket, TransportType::Polling])
            .ping_interval(config.heartbeat.interval)
            .ping_timeout(config.heartbeat.timeout)
            .max_payload(2 * belfry_protocol::limits::MAX_BODY_BYTES as u64)
            // The same bound over WebSocket (max_payload covers polling only).
            .ws_max_message_size(2 * belfry_protocol::limits::MAX_BODY_BYTES)
            .ws_max_frame_size(2 * belfry_protocol::limits::MAX_BODY_BYTES)
            // Subscribers send small events (acks, reads); a larger message is read in
            // more than one pass. Every idle socket holds this buffer (default 4 KiB).
            .ws_read_buffer_size(WS_READ_BUFFER)
            .build_layer();
        let state = Arc::new(AppState::new(store, io, config));
        A::ready(socket::subscriber::register(&state)).await?;
        A::ready(socket::publisher::register(&state)).await?;
        let (committed, delivery) = state.spawn_delivery();
        let head = state.store.head().await?;
        state.note_head(head);
        let mut tasks = vec![delivery];
        let committed = match state.store.dialect() {
            // One writer assigns every id: its commits go straight to delivery.
            store::Dialect::Sqlite => committed,
            // Several nodes may write: deliver what any of them committed, in id order.
            // Room changes come the same way, in commit order.
            store::Dialect::Postgres => {
                let (rooms, rooms_rx) = tokio::sync::mpsc::unbounded_channel();
                let listener = store::feed::Listener::start(&state.store, rooms)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no commit listener on PostgreSQL"))?;
                let (own, own_rx) = tokio::sync::mpsc::channel(64);
                let feed = store::feed::run(state.store.clone(), listener, own_rx, committed, head);
                tasks.push(tokio::spawn(feed));
                tasks.push(tokio::spawn(cluster::follow_rooms(state.clone(), rooms_rx)));
                own
            }
        };
        let writer = tokio::spawn(writer.run(committed));
        tasks.push(tokio::spawn(retention::run(state.clone())));
        tasks.extend(cluster::start(&state, link.as_ref()));
        let receipts_stop = Arc::new(tokio::sync::Notify::new());
        let receipts = tokio::spawn(receipts::run(state.clone(), receipts_stop.clone()));
        Ok(Hub {
            state,
            layer,
            tasks,
            receipts: (receipts, receipts_stop),
            writer,
        })
    }

    /// The router: HTTP routes plus the Socket.IO layer.
    pub fn router(&self) -> axum::Router {
        app(self.state.clone(), self.layer.clone())
    }

    /// Closes every socket, finishes queued writes and closes the store.
    pub async fn shutdown(self) {
        self.state.io.close().await;
        for task in &self.tasks {
            task.abort();
        }
        // The sockets are closed: the receipts task writes the last acks and ends.
        let (receipts, stop) = self.receipts;
        stop.notify_one();
        if let Err(e) = receipts.await {
            tracing::error!(error = %e, "receipts task failed");
        }
        self.state.store.writer().close().await;
        if let Err(e) = self.writer.await {
            tracing::error!(error = %e, "store writer task failed");
        }
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

/// The Socket.IO part of shutdown: publisher events in flight get their answers (up to a
/// few seconds), then every socket is closed.
async fn stop_sockets<A: HubAdapter>(state: &SharedState<A>, io: &SocketIo<A>) {
    state
        .drain_publishers(std::time::Duration::from_secs(5))
        .await;
    io.close().await;
}

/// Makes the kernel abort a connection whose peer takes nothing for as long as the
/// heartbeat allows a silent client (ping interval + ping timeout). A client that stops
/// reading otherwise holds its connection forever: once its TCP window is closed, the
/// hub's writes wait without end, and Engine.IO's own close waits for that writer. The
/// option set on the listener is inherited by every accepted socket (Linux).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn drop_stuck_peers(listener: &TcpListener, heartbeat: &config::Heartbeat) {
    let limit = heartbeat.interval + heartbeat.timeout;
    if let Err(e) = socket2::SockRef::from(listener).set_tcp_user_timeout(Some(limit)) {
        tracing::warn!(error = %e, "cannot set TCP_USER_TIMEOUT; a client that stops reading may hold its connection");
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn drop_stuck_peers(_listener: &TcpListener, _heartbeat: &config::Heartbeat) {}

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
            let link = cluster::RedisLink::connect(&url)
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach Redis at {url}: {e}"))?;
            let adapter = socketioxide_redis::RedisAdapterCtr::new_with_driver(
                link.clone(),
                socketioxide_redis::RedisAdapterConfig::new()
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
    let tls = config.tls.clone();
    drop_stuck_peers(&listener, &config.heartbeat);
    let hub = Hub::<A>::start(config, adapter, link).await?;
    let router = hub.router();
    let io = hub.state.io.clone();
    let state = hub.state.clone();
    let addr = listener.local_addr()?;
    match tls {
        None => {
            tracing::info!(%addr, "listening (http, ws)");
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    shutdown.await;
                    tracing::info!("shutting down");
                    stop_sockets(&state, &io).await;
                })
                .await?;
        }
        Some(files) => {
            rustls::crypto::ring::default_provider()
                .install_default()
                .ok();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
                .await
                .map_err(|e| anyhow::anyhow!("cannot load TLS certificate or key: {e}"))?;
            tracing::info!(%addr, "listening (https, wss)");
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutting down");
                stop_sockets(&state, &io).await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            axum_server::from_tcp_rustls(listener.into_std()?, tls)?
                .handle(handle)
                .serve(router.into_make_service())
                .await?;
        }
    }
    hub.shutdown().await;
    Ok(())
}
