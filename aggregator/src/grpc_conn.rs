//! The gRPC port's connections, served by hyper's HTTP/2 server.
//!
//! Each agent holds one connection open for as long as it runs, so what a
//! connection costs while idle is paid once per node. tonic's server wraps
//! every connection in its own layers, a connection-age timer and hyper's
//! HTTP/1-or-2 detection, all held for the connection's life; here a
//! connection is hyper's HTTP/2 connection and nothing else. `Ingest`
//! report streams are answered by [`ingest_wire`] straight from hyper's
//! request body; every other path goes to tonic's router (the `Peer`
//! service, and `unimplemented` for what is not served).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use hyper::body::Incoming as IncomingBody;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::ServiceExt;

use metrics_proto::channel::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};

use crate::cluster::PeerService;
use crate::ingest::IngestService;
use crate::ingest_wire;

/// Streams one connection may have open: an agent needs one, a peer one
/// per query in flight.
const MAX_STREAMS: u32 = 8;

/// What a request on the gRPC port is answered by.
#[derive(Clone)]
struct GrpcService<C> {
    ingest: IngestService,
    peer: Routes,
    /// The connection's addresses (and client certificates, over TLS), as
    /// tonic's server gives them to a request (`Request::remote_addr`).
    info: C,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<C> hyper::service::Service<http::Request<IncomingBody>> for GrpcService<C>
where
    C: Clone + Send + Sync + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, mut req: http::Request<IncomingBody>) -> ResponseFuture {
        req.extensions_mut().insert(self.info.clone());
        if req.uri().path() == ingest_wire::REPORT_PATH {
            let ingest = self.ingest.clone();
            Box::pin(async move { Ok(ingest_wire::respond(ingest, req).await) })
        } else {
            Box::pin(self.peer.clone().oneshot(req.map(Body::new)))
        }
    }
}

/// Serves both services on `incoming` (the port's TLS connections; plain
/// TCP in tests) until `cancel` fires; then closes every connection
/// gracefully (streams in flight run to their end) and returns once all
/// have closed.
pub async fn serve<I, IO>(
    incoming: I,
    ingest: IngestService,
    peer: PeerService,
    cancel: CancellationToken,
) where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Send + Sync + 'static,
{
    // Boxed so that it can be dropped (the port closed) before the wait.
    let mut incoming = Box::pin(incoming);
    let peer = Routes::new(peer.into_server()).prepare();
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        // The keep-alive gRPC clients here use: a connection that sends
        // nothing is pinged, and closed when a ping goes unanswered.
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    // Every connection's task holds a sender; the receiver sees the end
    // of the channel once the last has finished.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let conn = tokio::select! {
            _ = cancel.cancelled() => break,
            next = incoming.next() => match next {
                Some(Ok(conn)) => conn,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "gRPC connection not accepted");
                    continue;
                }
                None => break,
            },
        };
        let service = GrpcService {
            ingest: ingest.clone(),
            peer: peer.clone(),
            info: conn.connect_info(),
        };
        // Boxed before the task takes it: moved into the task's future and
        // pinned there, the connection's state (about 2.9 KB) was held twice
        // for the connection's life.
        let mut served = Box::pin(http2.serve_connection(TokioIo::new(conn), service));
        let (cancel, open) = (cancel.clone(), open.clone());
        let task = async move {
            let _open = open;
            tokio::select! {
                result = served.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "gRPC connection ended");
                    }
                    return;
                }
                _ = cancel.cancelled() => {}
            }
            served.as_mut().graceful_shutdown();
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "gRPC connection ended while closing");
            }
        };
        tokio::spawn(task);
    }
    drop(incoming);
    drop(open);
    let _ = all_closed.recv().await;
}
