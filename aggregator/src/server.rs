//! TLS accept loops for the API (HTTP/1.1 and HTTP/2 by ALPN, graceful
//! drain) and for gRPC: handshakes run off the accept path, and the client
//! certificate chain of each connection reaches the request handlers.
//!
//! Every connection is bounded: a cap on open connections and on
//! handshakes in progress per port (refused connections are closed at
//! once), a handshake deadline, a read-idle deadline (`read_idle.rs`), and
//! for the API a header-read deadline, HTTP/2 keep-alive pings and a cap on
//! streams per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::PeerCerts;
use crate::metrics::AggregatorMetrics;
use crate::read_idle::ReadIdle;
use metrics_proto::runtime::LogThrottle;

/// The stream every handler sees: TLS over a TCP socket that closes when
/// nothing is read for too long.
pub type Conn = TlsStream<ReadIdle<TcpStream>>;

/// Bounds on one port's connections.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Connections open at once (handshaking or not); more are closed on accept.
    pub max_connections: usize,
    /// TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// A connection nothing is read from for this long is closed.
    pub read_idle: Duration,
}

/// Most TLS handshakes in progress per port: enough for a whole fleet of
/// agents reconnecting, few enough that sockets which never finish one
/// cannot pile up.
pub const MAX_HANDSHAKES: usize = 512;

/// Connections each port takes when `--max-connections` is 0: what the
/// open-file limit leaves after a reserve, the ingest port getting most.
pub fn default_max_connections(ingest: bool) -> usize {
    let soft = procfs::process::Process::myself()
        .and_then(|p| p.limits())
        .ok()
        .and_then(|l| match l.max_open_files.soft_limit {
            procfs::process::LimitValue::Value(v) => usize::try_from(v).ok(),
            procfs::process::LimitValue::Unlimited => None,
        })
        .unwrap_or(65_536);
    let usable = soft.saturating_sub(512).max(256);
    if ingest {
        usable / 8 * 7
    } else {
        (usable / 8).max(128)
    }
}

/// A counter and a log line at most once a minute for refused connections.
#[derive(Debug)]
pub(crate) struct Refusals {
    metrics: Arc<AggregatorMetrics>,
    what: &'static str,
    log: LogThrottle,
}

impl Refusals {
    pub(crate) fn new(metrics: Arc<AggregatorMetrics>, what: &'static str) -> Self {
        Self {
            metrics,
            what,
            log: LogThrottle::new(Duration::from_secs(60)),
        }
    }

    fn refuse(&self, limit: &'static str, peer: SocketAddr) {
        self.metrics.limit(limit);
        if self.log.ready() {
            tracing::warn!(port = self.what, %peer, limit, "connection refused by a limit (logged at most once a minute; see metrics_aggregator_limits_hit_total)");
        }
    }
}

/// A client that has not finished its TLS handshake by then is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests get after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's places under its port's caps: open connections, and
/// handshakes in progress until the handshake ends. Dropping frees them.
#[derive(Debug)]
pub struct Admitted {
    open: tokio::sync::OwnedSemaphorePermit,
    handshaking: tokio::sync::OwnedSemaphorePermit,
}

/// Accepts TCP connections until `cancel` fires, within `limits`, and
/// hands each admitted one to `on_accept` (which must not block: it runs
/// on the accept path).
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    limits: &ConnLimits,
    refusals: Refusals,
    cancel: CancellationToken,
    mut on_accept: F,
) where
    F: FnMut(TcpStream, SocketAddr, Admitted),
{
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.max_handshakes));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(open) = Arc::clone(&connections).try_acquire_owned() else {
            refusals.refuse("max_connections", peer);
            continue;
        };
        let Ok(handshaking) = Arc::clone(&handshakes).try_acquire_owned() else {
            refusals.refuse("handshakes", peer);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        on_accept(tcp, peer, Admitted { open, handshaking });
    }
}

/// The TLS handshake of an admitted socket, within [`HANDSHAKE_TIMEOUT`];
/// `None` (logged at debug) when it fails or times out.
pub(crate) async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    read_idle: Duration,
    acceptor: &TlsAcceptor,
) -> Option<Conn> {
    let Admitted { open, handshaking } = admitted;
    // The place under the cap goes with the socket, wherever it ends.
    let io = ReadIdle::new(tcp, read_idle).holding(open);
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await;
    drop(handshaking);
    match accepted {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Accepts TCP connections until `cancel` fires, within `limits`. For
/// each, `prepare` runs on the accept path and its result runs in a new
/// task once the TLS handshake completes in time.
async fn accept_tls<F, H, Fut>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnLimits,
    refusals: Refusals,
    cancel: CancellationToken,
    mut prepare: F,
) where
    F: FnMut(SocketAddr) -> H,
    H: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let acceptor = TlsAcceptor::from(tls);
    let read_idle = limits.read_idle;
    accept_loop(
        listener,
        &limits,
        refusals,
        cancel,
        |tcp, peer, admitted| {
            let acceptor = acceptor.clone();
            let on_conn = prepare(peer);
            tokio::spawn(async move {
                if let Some(s) = handshake(tcp, peer, admitted, read_idle, &acceptor).await {
                    on_conn(s).await;
                }
            });
        },
    )
    .await;
}

/// The client's certificate chain, leaf first (empty without one).
pub fn peer_chain(tls: &Conn) -> PeerCerts {
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    PeerCerts(chain.into())
}

/// What a request's handler may do to its connection (a request
/// extension): mark it as streaming a response, or close it at once (a
/// watch whose client stopped reading).
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub streaming: Arc<std::sync::atomic::AtomicUsize>,
    pub close: CancellationToken,
}

/// HTTP settings of the API port.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Streams one HTTP/2 connection may have open.
    pub h2_max_streams: u32,
}

/// Serves `app` over TLS on `listener` until `cancel` fires, then drains.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnLimits,
    http: HttpLimits,
    metrics: Arc<AggregatorMetrics>,
    app: Router,
    cancel: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client gets 30 s to send a request's headers (hyper's default,
    // which needs a timer to apply).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // Above the router's own bounds, so those answer with a Status.
        .max_headers(crate::api::MAX_HEADERS * 2);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(http.h2_max_streams);
    let refusals = Refusals::new(metrics, "api");
    accept_tls(listener, tls, limits, refusals, cancel, |peer| {
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        move |tls| {
            let certs = peer_chain(&tls);
            let handle = ConnHandle {
                streaming: tls.get_ref().0.streaming(),
                close: CancellationToken::new(),
            };
            let close = handle.close.clone();
            let service = tower::ServiceBuilder::new()
                .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(certs.clone());
                    req.extensions_mut().insert(handle.clone());
                    req
                })
                .service(app);
            async move {
                let conn = builder.serve_connection_with_upgrades(
                    TokioIo::new(tls),
                    TowerToHyperService::new(service),
                );
                tokio::select! {
                    r = watcher.watch(conn.into_owned()) => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    },
                    _ = close.cancelled() => tracing::debug!(%peer, "connection closed by its handler"),
                }
            }
        }
    })
    .await;
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("drain timed out"),
    }
}
