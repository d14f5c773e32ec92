//! Connections and requests are bounded on the real binary: connections
//! past `--max-connections` are closed on accept; sockets that never
//! finish TLS, never speak HTTP/2, or dribble headers are closed; requests
//! past `--max-requests-inflight` get kube-apiserver's 429 Status while
//! health checks still answer; a Report stream that stops reporting is
//! closed. Each refusal is counted in `metrics_aggregator_limits_hit_total`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use metrics_e2e::https::{get, get_as};
use metrics_e2e::procs::{free_port, start_aggregator, AggregatorProc};
use metrics_e2e::reports::{node_report, stream_end};
use metrics_e2e::wait::until;
use metrics_proto::v1::ingest_client::IngestClient;
use metrics_proto::v1::NodeReport;

/// Waits until the server closes `s` (EOF or an error), at most `within`.
async fn closed_within<S: AsyncReadExt + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn tls(
    agg: &AggregatorProc,
    port: u16,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in metrics_proto::tls::load_certs(&agg.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

async fn limit_count(agg: &AggregatorProc, limit: &str) -> u64 {
    let (_, body) = get_as(agg.api, &agg.ca, None, "/metrics", &[])
        .await
        .unwrap();
    let key = format!("metrics_aggregator_limits_hit_total{{limit=\"{limit}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_and_silent_ones_are_closed() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(
        dir.path(),
        &["--max-connections=8", "--idle-connection-timeout=3s"],
    )
    .await
    .unwrap();
    // Eight sockets that never start TLS take every place on the API port.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(agg.api).await.unwrap());
    }
    // The server counts them as they are accepted; the ninth is closed at once.
    let mut ninth = TcpStream::connect(agg.api).await.unwrap();
    assert!(
        closed_within(&mut ninth, Duration::from_secs(20)).await,
        "a connection past the cap was kept"
    );
    // The silent ones are closed by the read-idle deadline (3 s here),
    // well before the 10 s handshake deadline.
    let start = Instant::now();
    for s in &mut held {
        assert!(
            closed_within(s, Duration::from_secs(30)).await,
            "silent socket kept"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(30));
    // Places are given back: the API answers again, and counted the refusal.
    until("the API to answer", Duration::from_secs(20), async || {
        get_as(agg.api, &agg.ca, None, "/livez", &[]).await.is_ok()
    })
    .await;
    assert!(limit_count(&agg, "max_connections").await >= 1);

    // On the ingest port, a client that finishes TLS but never sends the
    // HTTP/2 preface is closed too.
    let mut quiet = tls(&agg, agg.grpc.port(), b"h2").await;
    assert!(
        closed_within(&mut quiet, Duration::from_secs(30)).await,
        "a gRPC connection that never spoke was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dribbled_headers_are_cut_off() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(dir.path(), &[]).await.unwrap();
    let mut s = tls(&agg, agg.api.port(), b"http/1.1").await;
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One header byte a second: never idle, never done. The header-read
    // deadline (30 s) ends it.
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(90) {
        if s.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            // hyper may answer 408 before closing.
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(!text.contains("200 OK"), "{text}");
            }
            Err(_) => {}
        }
    }
    assert!(closed, "a client dribbling headers was kept for 90 s");
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "cut before the header deadline: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_inflight_limit_get_429_and_health_checks_still_answer() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // A peer that accepts and never answers holds a list open for the
    // peer deadline: one request in flight, on demand.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = blackhole.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::channel::<TcpStream>(16);
    tokio::spawn(async move {
        while let Ok((s, _)) = blackhole.accept().await {
            let _ = seen_tx.send(s).await;
        }
    });
    let grpc = free_port();
    let agg = start_aggregator(
        dir.path(),
        &[
            "--max-requests-inflight=1",
            "--shard-id=a",
            &format!("--grpc-port={grpc}"),
            &format!("--peers=a=https://127.0.0.1:{grpc},b=https://{hole}"),
            "--replication-factor=1",
            "--peer-timeout=8s",
            "--peer-insecure-tls",
        ],
    )
    .await
    .unwrap();
    let (api, ca) = (agg.api, agg.ca.clone());
    let slow = tokio::spawn(async move {
        get_as(api, &ca, None, "/apis/metrics.k8s.io/v1beta1/nodes", &[])
            .await
            .unwrap()
    });
    // The list is in flight once it has reached the silent peer.
    let _held = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .expect("the list never reached the peer")
        .unwrap();
    assert!(!slow.is_finished());
    let (code, headers, body) = get(
        &format!("https://{}/apis/metrics.k8s.io/v1beta1/pods", agg.api),
        &agg.ca,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 429, "{body}");
    assert_eq!(headers["retry-after"], "1");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "TooManyRequests");
    assert_eq!(v["code"], 429);
    assert_eq!(v["details"]["retryAfterSeconds"], 1);
    // Liveness does not depend on load.
    let (code, _) = get_as(agg.api, &agg.ca, None, "/livez", &[]).await.unwrap();
    assert_eq!(code, 200);
    assert!(!slow.is_finished(), "the slow list ended before the checks");
    // Once the slow one is done, requests are served again.
    let (code, _) = slow.await.unwrap();
    assert_ne!(code, 429);
    let (code, body) = get_as(agg.api, &agg.ca, None, "/apis/metrics.k8s.io", &[])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(limit_count(&agg, "max_requests_inflight").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_reporting_is_closed() {
    use tokio_stream::StreamExt as _;
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(dir.path(), &[]).await.unwrap();
    let mut client = IngestClient::new(agg.grpc_channel().await.unwrap());
    // One report (1 s period), then silence with the stream left open.
    let req = tonic::Request::new(
        tokio_stream::iter(vec![node_report("node-quiet", 1000)]).chain(tokio_stream::pending()),
    );
    let mut inbound = client.report(req).await.unwrap().into_inner();
    let start = Instant::now();
    let ended = stream_end(&mut inbound, Duration::from_secs(60))
        .await
        .expect("a silent stream was kept for 60 s");
    let status = ended.expect("closed without saying why");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("no report for"), "{status:?}");
    // Not before its data would have expired (3 periods, 10 s at least).
    assert!(
        start.elapsed() >= Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
    assert!(limit_count(&agg, "silent_stream").await >= 1);
}

/// Sends `report` on a new stream and returns its Ack.
async fn ack_for(agg: &AggregatorProc, report: NodeReport) -> metrics_proto::v1::Ack {
    use tokio_stream::StreamExt as _;
    let mut client = IngestClient::new(agg.grpc_channel().await.unwrap());
    let req = tonic::Request::new(tokio_stream::iter(vec![report]).chain(tokio_stream::pending()));
    let mut inbound = client.report(req).await.unwrap().into_inner();
    loop {
        match inbound.message().await.unwrap() {
            Some(m) => {
                if let Some(metrics_proto::v1::aggregator_message::Kind::Ack(a)) = m.kind {
                    return a;
                }
            }
            None => panic!("stream ended without an Ack"),
        }
    }
}

fn gauge(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_past_the_memory_budget_are_refused_and_the_rest_kept() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // 2 MB in all, so one node may hold 62,500 bytes.
    let agg = start_aggregator(dir.path(), &["--max-stored-bytes=2000000"])
        .await
        .unwrap();
    let small = ack_for(&agg, node_report("node-small", 1000)).await;
    assert!(small.accepted, "{}", small.error);
    let mut big = node_report("node-big", 1000);
    let now = metrics_proto::time::unix_nanos(std::time::SystemTime::now());
    big.pods = (0..600)
        .map(|i| metrics_proto::v1::PodUsage {
            namespace: "default".into(),
            name: format!("a-rather-long-pod-name-{i:04}"),
            labels: (0..5)
                .map(|l| (format!("label-{l}"), format!("value-{l}-{i}")))
                .collect(),
            timestamp_unix_nanos: now,
            window_nanos: 1_000_000_000,
            containers: vec![metrics_proto::v1::ContainerUsage {
                name: "main".into(),
                cpu_nanocores: 1_000,
                memory_working_set_bytes: 1 << 20,
                swap_bytes: 0,
            }],
        })
        .collect();
    let refused = ack_for(&agg, big).await;
    assert!(!refused.accepted);
    assert!(
        refused.error.contains("--max-stored-bytes"),
        "{}",
        refused.error
    );
    // The small node is served, the big one is not, and what is held stays
    // within the bound.
    let (code, body) = get_as(
        agg.api,
        &agg.ca,
        None,
        "/apis/metrics.k8s.io/v1beta1/nodes",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("node-small") && !body.contains("node-big"),
        "{body}"
    );
    let (_, metrics) = get_as(agg.api, &agg.ca, None, "/metrics", &[])
        .await
        .unwrap();
    let held = gauge(&metrics, "metrics_aggregator_stored_bytes");
    assert!(held > 0 && held <= 2_000_000, "{held}");
    assert_eq!(gauge(&metrics, "metrics_aggregator_stored_pods"), 0);
    assert!(limit_count(&agg, "memory_budget").await >= 1);
}
