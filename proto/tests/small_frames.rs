//! A request sent through `SmallFrames` reaches a real HTTP/2 server in
//! DATA frames no larger than `MAX_FRAME_PAYLOAD`, whole and in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceExt;

use metrics_proto::channel::Dialer;
use metrics_proto::frames::{SmallFrames, MAX_FRAME_PAYLOAD};

/// Serves one connection; sends each request's data frame sizes and bytes.
async fn server() -> (u16, mpsc::UnboundedReceiver<(Vec<usize>, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let tx = tx.clone();
            async move {
                let mut body = req.into_body();
                let (mut sizes, mut data) = (Vec::new(), Vec::new());
                while let Some(frame) = body.frame().await {
                    if let Ok(d) = frame?.into_data() {
                        sizes.push(d.len());
                        data.extend_from_slice(&d);
                    }
                }
                let _ = tx.send((sizes, data));
                Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    });
    (port, rx)
}

#[tokio::test]
async fn a_large_request_crosses_in_small_frames() {
    let (port, mut received) = server().await;
    let channel = Dialer::new(&format!("http://127.0.0.1:{port}"), None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Larger than the 16 KiB frames HTTP/2 allows by default.
    let sent: Bytes = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let request = http::Request::post(format!("http://127.0.0.1:{port}/x"))
        .body(tonic::body::Body::new(Full::new(sent.clone())))
        .unwrap();
    let response = SmallFrames::new(channel).oneshot(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let (sizes, data) = received.recv().await.unwrap();
    assert_eq!(data, sent, "the body arrives whole and in order");
    assert!(
        sizes.iter().all(|&n| n <= MAX_FRAME_PAYLOAD),
        "DATA frames of {sizes:?} bytes"
    );
    assert!(sizes.len() >= sent.len().div_ceil(MAX_FRAME_PAYLOAD));
}
