//! The gRPC port, served in two lanes.
//!
//! Agents' report streams go to a runtime of their own (`--ingest-threads`,
//! one by default). Once it has handled every report it has, it waits
//! `--ingest-batch-delay` before reading its sockets again, so reports that
//! arrive meanwhile share one wake-up. Going idle and waking again is most of
//! what a report costs (BENCHMARKS.md).
//!
//! Peers' queries are on an API request's path and must not wait for that.
//! A replica's client offers the extra ALPN protocol [`PEER_ALPN`]. The
//! accept loop reads the ClientHello without consuming it, and such a
//! connection stays on the API's runtime; every other socket is handed to
//! the ingest lane before its handshake.
//!
//! Both lanes serve both services, so a connection in the other lane (a
//! peer of an older version, say) is still served, only with that lane's
//! latency.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_proto::PEER_ALPN;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::AggregatorMetrics;
use crate::server::{accept_loop, handshake, Admitted, Conn, ConnLimits, Refusals};

/// An agent's socket on its way to the ingest lane, not yet handshaken.
#[derive(Debug)]
pub struct Handoff {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
}

/// Connections ready for a gRPC server.
pub type Incoming = ReceiverStream<Result<Conn, std::io::Error>>;

/// Which lane serves a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Peer,
    Agent,
}

/// Bytes first read to find the lane: a ClientHello is usually well under
/// this; a longer one doubles the buffer up to [`MAX_HELLO`].
const FIRST_HELLO_READ: usize = 2048;

/// Largest ClientHello read to find the lane; a longer one is dropped.
const MAX_HELLO: usize = 32 * 1024;

/// The lane a ClientHello asks for, read without consuming it. `None`
/// when the socket closes, sends what is not TLS, or a hello larger than
/// [`MAX_HELLO`]. The caller bounds the wait.
async fn lane(tcp: &TcpStream) -> Option<Lane> {
    let mut buf = vec![0u8; FIRST_HELLO_READ];
    let mut wait = Duration::from_millis(2);
    loop {
        let n = tcp.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let mut acceptor = rustls::server::Acceptor::default();
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            if acceptor.read_tls(&mut rd).ok()? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let peer = accepted
                    .client_hello()
                    .alpn()
                    .is_some_and(|mut offered| offered.any(|p| p == PEER_ALPN));
                return Some(if peer { Lane::Peer } else { Lane::Agent });
            }
            Ok(None) if n < buf.len() => {
                // Part of the hello: peeking again returns at once with the
                // same bytes, so wait for the rest.
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(100));
            }
            Ok(None) if buf.len() < MAX_HELLO => buf.resize(buf.len() * 2, 0),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Accepts on the gRPC port within `limits` until `cancel` fires (on the
/// API's runtime). Peers' connections are handshaken here and returned;
/// every other socket is sent to `agents`.
pub fn accept(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnLimits,
    metrics: Arc<AggregatorMetrics>,
    cancel: CancellationToken,
    agents: mpsc::Sender<Handoff>,
) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    let refusals = Refusals::new(Arc::clone(&metrics), "grpc");
    tokio::spawn(async move {
        let read_idle = limits.read_idle;
        let on_accept = |tcp, peer, admitted| {
            let route = Route {
                peers: tx.clone(),
                agents: agents.clone(),
                acceptor: acceptor.clone(),
                metrics: Arc::clone(&metrics),
                read_idle,
            };
            tokio::spawn(route.send(tcp, peer, admitted));
        };
        accept_loop(listener, &limits, refusals, cancel, on_accept).await;
    });
    ReceiverStream::new(rx)
}

/// Where an accepted socket can go.
struct Route {
    peers: mpsc::Sender<Result<Conn, std::io::Error>>,
    agents: mpsc::Sender<Handoff>,
    acceptor: TlsAcceptor,
    metrics: Arc<AggregatorMetrics>,
    read_idle: Duration,
}

impl Route {
    /// Reads the socket's ClientHello and sends it to its lane: a peer's
    /// handshaken here, any other handed over as it is.
    async fn send(self, tcp: TcpStream, peer: SocketAddr, admitted: Admitted) {
        match tokio::time::timeout(crate::server::HANDSHAKE_TIMEOUT, lane(&tcp)).await {
            Ok(Some(Lane::Peer)) => {
                self.metrics.grpc_connection("peer");
                let conn = handshake(tcp, peer, admitted, self.read_idle, &self.acceptor).await;
                if let Some(s) = conn {
                    let _ = self.peers.send(Ok(s)).await;
                }
            }
            Ok(Some(Lane::Agent)) => match tcp.into_std() {
                Ok(tcp) => {
                    self.metrics.grpc_connection("ingest");
                    let handoff = Handoff {
                        tcp,
                        peer,
                        admitted,
                    };
                    let _ = self.agents.send(handoff).await;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "handing a socket over failed"),
            },
            Ok(None) => tracing::debug!(%peer, "no TLS ClientHello"),
            Err(_) => tracing::debug!(%peer, "TLS ClientHello timed out"),
        }
    }
}

/// On the ingest lane's runtime: handshakes the sockets handed over until
/// `cancel` fires, and returns them.
pub fn adopt(
    mut handoffs: mpsc::Receiver<Handoff>,
    tls: Arc<rustls::ServerConfig>,
    read_idle: Duration,
    handshaking: Handshaking,
    cancel: CancellationToken,
) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let h = tokio::select! {
                _ = cancel.cancelled() => break,
                h = handoffs.recv() => match h {
                    Some(h) => h,
                    None => break,
                },
            };
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            let counted = handshaking.start();
            tokio::spawn(async move {
                let _counted = counted;
                // Registers the socket with this runtime's reactor.
                let tcp = match TcpStream::from_std(h.tcp) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(peer = %h.peer, error = %e, "taking a socket over failed");
                        return;
                    }
                };
                if let Some(s) = handshake(tcp, h.peer, h.admitted, read_idle, &acceptor).await {
                    let _ = tx.send(Ok(s)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Handshakes in progress on the ingest lane. The lane does not wait
/// between batches while there are any: a handshake takes several round
/// trips, and when a fleet reconnects at once (a replica restarted, or
/// died and its agents moved) each would otherwise cost a wait.
#[derive(Debug, Clone, Default)]
pub struct Handshaking(Arc<AtomicUsize>);

impl Handshaking {
    /// Counts one handshake until the returned guard drops.
    fn start(&self) -> HandshakeGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        HandshakeGuard(Arc::clone(&self.0))
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

struct HandshakeGuard(Arc<AtomicUsize>);

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The ingest lane's runtime settings.
#[derive(Debug, Clone, Copy)]
pub struct IngestLane {
    pub threads: u16,
    pub batch_delay: Duration,
}

/// How long the runtime's blocking tasks get once `serve` has returned.
const THREAD_SHUTDOWN: Duration = Duration::from_secs(2);

/// Runs `serve` on the ingest lane's own runtime and threads, giving it
/// the lane's handshake count (for [`adopt`]); returns when it has
/// returned, or when the runtime could not start.
pub async fn run_ingest_lane<F, Fut>(lane: IngestLane, serve: F) -> std::io::Result<()>
where
    F: FnOnce(Handshaking) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("ingest".into())
        .spawn(move || {
            let mut builder = if lane.threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(usize::from(lane.threads))
                    .thread_name("ingest");
                b
            };
            builder.enable_all();
            let handshaking = Handshaking::default();
            let delay = lane.batch_delay;
            if !delay.is_zero() {
                // Runs only when the runtime has nothing left to do: a busy
                // lane never waits.
                let handshaking = handshaking.clone();
                builder.on_thread_park(move || {
                    if !handshaking.any() {
                        std::thread::sleep(delay);
                    }
                });
            }
            let result = builder.build().map(|rt| {
                rt.block_on(serve(handshaking));
                rt.shutdown_timeout(THREAD_SHUTDOWN);
            });
            let _ = done_tx.send(result);
        })?;
    done_rx.await.unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The bytes of a real ClientHello offering `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        metrics_proto::tls::install_crypto_provider();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Sends `parts` over a loopback connection, pausing between them, and
    /// returns the lane the server side reads.
    async fn lane_of(parts: Vec<Vec<u8>>) -> Option<Lane> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if parts.is_empty() {
                return;
            }
            for p in parts {
                s.write_all(&p).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            // Held open until the server has decided.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let found = tokio::time::timeout(Duration::from_secs(20), lane(&tcp))
            .await
            .expect("the lane is decided in time");
        client.abort();
        found
    }

    #[tokio::test]
    async fn a_peer_is_known_by_its_alpn_offer() {
        let peer = client_hello(&[b"h2", PEER_ALPN]);
        assert_eq!(lane_of(vec![peer]).await, Some(Lane::Peer));
        let agent = client_hello(&[b"h2"]);
        assert_eq!(lane_of(vec![agent]).await, Some(Lane::Agent));
        let none = client_hello(&[]);
        assert_eq!(lane_of(vec![none]).await, Some(Lane::Agent));
    }

    #[tokio::test]
    async fn a_hello_in_pieces_is_read_whole() {
        let hello = client_hello(&[b"h2", PEER_ALPN]);
        let (a, rest) = hello.split_at(3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let parts = vec![a.to_vec(), b.to_vec(), c.to_vec()];
        assert_eq!(lane_of(parts).await, Some(Lane::Peer));
    }

    #[tokio::test]
    async fn a_hello_longer_than_the_first_read_is_read_whole() {
        // Many offered protocols make a hello of several KiB.
        let long: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("proto-{i:04}").into_bytes())
            .collect();
        let mut alpn: Vec<&[u8]> = long.iter().map(Vec::as_slice).collect();
        alpn.push(PEER_ALPN);
        let hello = client_hello(&alpn);
        assert!(hello.len() > FIRST_HELLO_READ, "{} bytes", hello.len());
        assert_eq!(lane_of(vec![hello]).await, Some(Lane::Peer));
    }

    #[tokio::test]
    async fn what_is_not_tls_has_no_lane() {
        let http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(lane_of(vec![http]).await, None);
        assert_eq!(lane_of(vec![]).await, None, "closed without a byte");
    }
}

#[cfg(test)]
mod lane_runtime_tests {
    use super::*;

    /// The lane runs on its own thread and, with a batch delay, still runs
    /// spawned work to the end and returns.
    async fn runs_on_its_own_thread(threads: u16) {
        let lane = IngestLane {
            threads,
            batch_delay: Duration::from_millis(20),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let caller = std::thread::current().id();
        run_ingest_lane(lane, move |_| async move {
            let here = std::thread::current().id();
            let spawned = tokio::spawn(async {
                // Parks the runtime a few times on the way.
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                std::thread::current().name().map(str::to_owned)
            });
            let name = spawned.await.ok().flatten();
            let _ = tx.send((here, name));
        })
        .await
        .unwrap();
        let (here, name) = rx.await.unwrap();
        assert_ne!(here, caller);
        assert_eq!(name.as_deref(), Some("ingest"));
    }

    #[test]
    fn handshakes_are_counted_until_they_end() {
        let h = Handshaking::default();
        assert!(!h.any());
        let a = h.start();
        let b = h.clone().start();
        assert!(h.any());
        drop(a);
        assert!(h.any());
        drop(b);
        assert!(!h.any());
    }

    #[tokio::test]
    async fn one_thread() {
        runs_on_its_own_thread(1).await;
    }

    #[tokio::test]
    async fn several_threads() {
        runs_on_its_own_thread(2).await;
    }
}
