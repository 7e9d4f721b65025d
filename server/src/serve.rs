//! The listener: one accept loop for plain HTTP and for TLS, each connection served by
//! hyper under the hub's timeouts, and a graceful stop.
//!
//! - **Header read timeout** (hyper's): from the moment a connection waits for a request
//!   (just accepted, or idle between two keep-alive requests) until that request's
//!   headers are in. A client that connects and says nothing, or sends its headers a byte
//!   at a time, is closed after it.
//! - **Idle timeout**: no byte in either direction for this long closes a connection (a
//!   request body trickled slowly, a response never read). WebSocket connections leave
//!   this loop once upgraded: the Socket.IO heartbeat watches them.
//! - **TLS**: the certificate and key are read at start and again on SIGHUP
//!   ([`Certificate::reload`]); connections made before keep the certificate they were
//!   made with, so a renewal drops nobody.
//! - Every request carries the peer's address (`ConnectInfo`) and a [`ConnectionHandle`]
//!   for the connection it came on: how many bytes it wrote, and a way to close it.

use axum::Router;
use axum::extract::ConnectInfo;
use futures_util::task::AtomicWaker;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt as _;

/// The timeouts of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Until a request's headers are in (also the TLS handshake's limit).
    pub header_read: Duration,
    /// No byte either way for this long closes the connection.
    pub idle: Duration,
}

/// The connection a request came on (in every request's extensions), also once it
/// carries a WebSocket: how much it has written (a catch-up paces itself by that), and a
/// way to close it (for a socket that must go whatever its send buffer holds).
#[derive(Debug, Clone)]
pub struct ConnectionHandle(Arc<Link>);

impl ConnectionHandle {
    /// The connection that carries a socket opened by the request `parts`: only when the
    /// request opened it over WebSocket (the `websocket` transport, which Engine.IO only
    /// accepts as a real upgrade). A socket that began with long-polling keeps the parts
    /// of its first poll, whose connection carries other requests, or none, and not the
    /// socket; its headers are the client's to write, so an `Upgrade` header alone says
    /// nothing.
    pub fn carrying(parts: &axum::http::request::Parts) -> Option<ConnectionHandle> {
        let upgrade = parts
            .headers
            .get(axum::http::header::UPGRADE)
            .and_then(|v| v.to_str().ok());
        // Every `transport` named, and at least one, is `websocket` (whichever one the
        // Engine.IO layer reads).
        let mut transports = (parts.uri.query().unwrap_or_default().split('&'))
            .filter_map(|pair| pair.strip_prefix("transport="))
            .peekable();
        let over_websocket =
            transports.peek().is_some() && transports.all(|transport| transport == "websocket");
        if !(over_websocket && upgrade.is_some_and(|v| v.eq_ignore_ascii_case("websocket"))) {
            return None;
        }
        parts.extensions.get::<ConnectionHandle>().cloned()
    }

    /// Bytes written to the peer so far (what the kernel took).
    pub fn written(&self) -> u64 {
        self.0.written.load(Relaxed)
    }

    /// Closes the connection at once, without a goodbye: every read and write on it
    /// fails from now on, and whatever waits on it is woken to see that.
    pub fn close(&self) {
        self.0.closed.store(true, Relaxed);
        self.0.reader.wake();
        self.0.writer.wake();
    }
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the TLS certificate {cert} with key {key}: {why}")]
pub struct CertificateError {
    cert: PathBuf,
    key: PathBuf,
    why: String,
}

/// The certificate the TLS listener presents.
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    /// A std lock: read once per accepted connection, written on a reload.
    current: RwLock<Arc<ServerConfig>>,
}

impl Certificate {
    /// Loads a PEM certificate chain and its private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Certificate, CertificateError> {
        Ok(Certificate {
            current: RwLock::new(Arc::new(server_config(cert, key)?)),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Reads the files again; on failure keeps the certificate it has.
    pub fn reload(&self) -> Result<(), CertificateError> {
        let config = Arc::new(server_config(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, CertificateError> {
    let fail = |why: String| CertificateError {
        cert: cert.to_owned(),
        key: key.to_owned(),
        why,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if chain.is_empty() {
        return Err(fail("the certificate file holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| fail(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| fail(e.to_string()))
}

/// Reloads `certificate` (if the hub serves TLS) on every SIGHUP until the process ends.
/// A hub without TLS takes SIGHUP too (`systemctl reload`), with nothing to reload,
/// instead of ending as the signal's default would have it.
#[cfg(unix)]
pub fn reload_on_sighup(
    certificate: Option<Arc<Certificate>>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match certificate.as_deref().map(Certificate::reload) {
                Some(Ok(())) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "SIGHUP: keeping the certificate in use");
                }
                None => tracing::info!("SIGHUP: nothing to reload (the hub serves no TLS)"),
            }
        }
    }))
}

/// How long shutdown waits for `closing` (the Socket.IO sockets). With the 10 s for
/// requests in flight and the store's close, the hub stops well within systemd's 30 s.
const CLOSING_WITHIN: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` resolves; then
/// stops accepting, runs `closing` (which closes the Socket.IO sockets, up to
/// [`CLOSING_WITHIN`]), lets requests in flight finish (up to 10 s) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<Certificate>>,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
    closing: impl Future<Output = ()>,
) -> io::Result<()> {
    // Dropped to tell every connection to finish; each holds a receiver until it ends.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // the listener itself is fine.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let tls = tls.as_ref().map(|c| c.acceptor());
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(tcp, peer, router, tls, timeouts, stop).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down");
    // Refused from now on (a client reconnecting tries another node, or waits), not left
    // in the backlog while the sockets close.
    drop(listener);
    if tokio::time::timeout(CLOSING_WITHIN, closing).await.is_err() {
        tracing::warn!("sockets still closing after {CLOSING_WITHIN:?}; stopping without them");
    }
    drop(stop_rx);
    stop_tx.send_replace(());
    // Every connection holds a receiver until it ends.
    let _ = tokio::time::timeout(Duration::from_secs(10), stop_tx.closed()).await;
    Ok(())
}

/// Serves one connection.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    timeouts: Timeouts,
    mut stop: watch::Receiver<()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let link = Link::new();
    let watched = Watched {
        inner: tcp,
        link: link.clone(),
    };
    let closer = ConnectionHandle(link.clone());
    let service = {
        let closer = closer.clone();
        router.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(closer.clone());
            req
        })
    };
    let service = TowerToHyperService::new(service);
    match tls {
        None => http(watched, service, timeouts, &link, &mut stop).await,
        Some(acceptor) => {
            let stream =
                tokio::time::timeout(timeouts.header_read, acceptor.accept(watched)).await??;
            http(stream, service, timeouts, &link, &mut stop).await
        }
    }
}

/// Speaks HTTP/1.1 (and WebSocket upgrades) on `io` until the connection ends, goes
/// idle, is closed, or shutdown asks it to finish its requests.
async fn http<I, S>(
    io: I,
    service: S,
    timeouts: Timeouts,
    link: &Link,
    stop: &mut watch::Receiver<()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = axum::body::Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return result.map_err(Into::into),
            () = link.idle_for(timeouts.idle) => {
                tracing::debug!("closing an idle connection");
                return Ok(());
            }
            changed = stop.changed(), if !stopping => {
                let _ = changed;
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// One connection's state as its stream and its watchers share it: when it last moved a
/// byte, and whether it was closed from outside.
#[derive(Debug)]
struct Link {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
    /// Bytes written.
    written: AtomicU64,
    closed: AtomicBool,
    /// The tasks waiting to read and to write, woken by a close.
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Link {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            written: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    fn wrote(&self, n: usize) {
        if n > 0 {
            self.written.fetch_add(n as u64, Relaxed);
            self.touch();
        }
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Relaxed));
            let quiet = last.elapsed();
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }

    fn closed(&self) -> io::Result<()> {
        if self.closed.load(Relaxed) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the hub",
            ))
        } else {
            Ok(())
        }
    }
}

/// A connection's stream, recording its activity and failing once it is closed.
struct Watched<T> {
    inner: T,
    link: Arc<Link>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.link.reader.register(cx.waker());
        self.link.closed()?;
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.link.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.link.writer.register(cx.waker());
        self.link.closed()?;
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result {
            self.link.wrote(n);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.link.writer.register(cx.waker());
        self.link.closed()?;
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.link.wrote(n);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.link.writer.register(cx.waker());
        self.link.closed()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of a request to `uri` with `upgrade` as its `Upgrade` header, on a
    /// connection the hub watches.
    fn handshake(uri: &str, upgrade: Option<&str>) -> axum::http::request::Parts {
        let mut request = axum::http::Request::builder().uri(uri);
        if let Some(upgrade) = upgrade {
            request = request.header(axum::http::header::UPGRADE, upgrade);
        }
        let (mut parts, ()) = request.body(()).expect("request").into_parts();
        parts.extensions.insert(ConnectionHandle(Link::new()));
        parts
    }

    #[test]
    fn only_a_websocket_handshake_carries_its_connection() {
        let ws = "/socket.io/?EIO=4&transport=websocket";
        assert!(ConnectionHandle::carrying(&handshake(ws, Some("websocket"))).is_some());
        assert!(ConnectionHandle::carrying(&handshake(ws, Some("WebSocket"))).is_some());
        // A polling handshake, whatever headers its client wrote.
        for (uri, upgrade) in [
            ("/socket.io/?EIO=4&transport=polling", Some("websocket")),
            ("/socket.io/?EIO=4&transport=polling", None),
            (
                "/socket.io/?EIO=4&transport=polling&transport=websocket",
                Some("websocket"),
            ),
            ("/socket.io/?EIO=4", Some("websocket")),
            (ws, None),
        ] {
            assert!(
                ConnectionHandle::carrying(&handshake(uri, upgrade)).is_none(),
                "{uri} {upgrade:?}"
            );
        }
    }
}
