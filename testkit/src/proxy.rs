//! A TCP proxy on loopback between clients and a hub, for network-fault tests. It can cut
//! every open connection, stall them (they stay open and pass nothing, like a link whose
//! far end vanished: only a ping timeout notices), slow every byte down, and refuse new
//! connections (the network is down).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One proxied connection's switches.
#[derive(Debug, Default)]
struct Link {
    /// Set: pass nothing more, keep both sockets open.
    stalled: AtomicBool,
    /// Notified to close both sockets.
    cut: Notify,
}

#[derive(Debug, Default)]
struct Shared {
    links: Mutex<Vec<Arc<Link>>>,
    /// New connections are closed at once while set.
    down: AtomicBool,
    /// Each chunk waits this long before it is passed on.
    delay: Mutex<Duration>,
    /// The largest chunk passed at once while slowed (bytes); 0: no limit.
    chunk: AtomicUsize,
    accepted: AtomicUsize,
    /// Where new connections go.
    upstream: Mutex<Option<SocketAddr>>,
}

/// The proxy. Dropping it stops accepting; open connections end with their peers.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl FaultProxy {
    /// A proxy on a free 127.0.0.1 port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        *shared.upstream.lock().unwrap() = Some(upstream);
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    shared.accepted.fetch_add(1, SeqCst);
                    if shared.down.load(SeqCst) {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(proxy(client, shared.clone()));
                }
            }
        });
        FaultProxy {
            addr,
            shared,
            accept,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every open connection (both ends see the close).
    pub fn cut(&self) {
        for link in self.shared.links.lock().unwrap().drain(..) {
            link.cut.notify_one();
        }
    }

    /// Freezes every open connection: open, passing nothing, forever. New connections
    /// pass normally.
    pub fn stall(&self) {
        for link in self.shared.links.lock().unwrap().iter() {
            link.stalled.store(true, SeqCst);
        }
    }

    /// Sends new connections to `upstream` from now on (open ones stay where they are),
    /// as a load balancer would send a reconnecting client to another node.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = Some(upstream);
    }

    /// While `down`, new connections are closed as soon as they are accepted.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, SeqCst);
    }

    /// Slows every connection: each chunk of at most `chunk` bytes waits `delay`
    /// (`Duration::ZERO` and 0 restore full speed).
    pub fn slow(&self, delay: Duration, chunk: usize) {
        *self.shared.delay.lock().unwrap() = delay;
        self.shared.chunk.store(chunk, SeqCst);
    }

    /// Connections open now (not cut, possibly stalled).
    pub fn open(&self) -> usize {
        let mut links = self.shared.links.lock().unwrap();
        links.retain(|l| Arc::strong_count(l) > 1);
        links.len()
    }

    /// Connections accepted so far (including refused ones).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(SeqCst)
    }
}

async fn proxy(client: TcpStream, shared: Arc<Shared>) {
    // Registered before the upstream connect, so a cut or stall reaches it too.
    let link = Arc::new(Link::default());
    shared.links.lock().unwrap().push(link.clone());
    let upstream = shared.upstream.lock().unwrap().expect("set at start");
    let server = tokio::select! {
        () = link.cut.notified() => return,
        s = TcpStream::connect(upstream) => s,
    };
    let Ok(server) = server else {
        return; // the client sees its connection close, as with the hub down
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, &link, &shared);
    let down = pump(server_read, client_write, &link, &shared);
    tokio::select! {
        () = link.cut.notified() => {}
        // Both directions ended (each passes its close on to the other side).
        () = async { tokio::join!(up, down); } => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: &Link,
    shared: &Shared,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = from.read(&mut buf).await;
        if link.stalled.load(SeqCst) {
            // A dead path: bytes and closes go nowhere; the sockets stay open until cut.
            std::future::pending::<()>().await;
        }
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            if link.stalled.load(SeqCst) {
                std::future::pending::<()>().await;
            }
            let delay = *shared.delay.lock().unwrap();
            let chunk = match shared.chunk.load(SeqCst) {
                0 => data.len(),
                c => c.min(data.len()),
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if to.write_all(&data[..chunk]).await.is_err() {
                return;
            }
            data = &data[chunk..];
        }
    }
    let _ = to.shutdown().await;
}
