//! TLS accept loops for the API (HTTP/1.1 and HTTP/2 by ALPN, graceful
//! drain) and for gRPC: handshakes run off the accept path, and the client
//! certificate chain of each connection reaches the request handlers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::PeerCerts;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections until `cancel` fires. For each, `prepare` runs
/// on the accept path and its result runs in a new task once the TLS
/// handshake completes in time.
async fn accept_tls<F, H, Fut>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cancel: CancellationToken,
    mut prepare: F,
) where
    F: FnMut(SocketAddr) -> H,
    H: FnOnce(TlsStream<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let acceptor = TlsAcceptor::from(tls);
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
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let on_conn = prepare(peer);
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => on_conn(s).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The client's certificate chain, leaf first (empty without one).
pub fn peer_chain(tls: &TlsStream<TcpStream>) -> PeerCerts {
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    PeerCerts(chain.into())
}

/// Serves `app` over TLS on `listener` until `cancel` fires, then drains.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    cancel: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    accept_tls(listener, tls, cancel, |peer| {
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        move |tls| {
            let certs = peer_chain(&tls);
            let service = tower::ServiceBuilder::new()
                .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(certs.clone());
                    req
                })
                .service(app);
            async move {
                let conn = builder.serve_connection_with_upgrades(
                    TokioIo::new(tls),
                    TowerToHyperService::new(service),
                );
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
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

/// TLS connections for tonic's `serve_with_incoming`: handshakes done here
/// with the reloading certificate.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cancel: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(accept_tls(listener, tls, cancel, move |_peer| {
        let tx = tx.clone();
        move |tls| async move {
            let _ = tx.send(Ok(tls)).await;
        }
    }));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
