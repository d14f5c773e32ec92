//! SIGTERM with `--shutdown-delay-duration`: readiness fails at once while
//! the API keeps answering for the delay; then agents' streams end with
//! UNAVAILABLE (so they reconnect elsewhere, told why) and the process
//! exits. Open watches end cleanly at SIGTERM, so their clients watch
//! again through a replica that stays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use metrics_e2e::https::get_as;
use metrics_e2e::procs::start_aggregator;
use metrics_e2e::reports::{node_report, stream_end};
use metrics_proto::v1::ingest_client::IngestClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_serves_through_the_delay_then_moves_agents() {
    use tokio_stream::StreamExt as _;
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut agg = start_aggregator(dir.path(), &["--shutdown-delay-duration=5s"])
        .await
        .unwrap();
    let mut client = IngestClient::new(agg.grpc_channel().await.unwrap());
    let req = tonic::Request::new(
        tokio_stream::iter(vec![node_report("node-a", 15_000)]).chain(tokio_stream::pending()),
    );
    let mut inbound = client.report(req).await.unwrap().into_inner();
    // The first Ack: the stream is up.
    let first = inbound.message().await.unwrap();
    assert!(first.is_some());
    let (code, _) = get_as(agg.api, &agg.ca, None, "/readyz", &[])
        .await
        .unwrap();
    assert_eq!(code, 200);
    // List items carry no kind or apiVersion (clients take them from the
    // list, as from metrics-server); a single object does.
    let (_, body) = get_as(
        agg.api,
        &agg.ca,
        None,
        "/apis/metrics.k8s.io/v1beta1/nodes",
        &[],
    )
    .await
    .unwrap();
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "NodeMetricsList");
    assert_eq!(list["apiVersion"], "metrics.k8s.io/v1beta1");
    let first = &list["items"][0];
    assert_eq!(first["metadata"]["name"], "node-a", "{body}");
    assert!(
        first.get("kind").is_none() && first.get("apiVersion").is_none(),
        "{body}"
    );
    let (_, body) = get_as(
        agg.api,
        &agg.ca,
        None,
        "/apis/metrics.k8s.io/v1beta1/nodes/node-a",
        &[],
    )
    .await
    .unwrap();
    let one: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["kind"], "NodeMetrics", "{body}");
    assert_eq!(one["apiVersion"], "metrics.k8s.io/v1beta1", "{body}");

    let mut watch = metrics_e2e::https::stream(
        agg.api,
        &agg.ca,
        "/apis/metrics.k8s.io/v1beta1/nodes?watch=true",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(watch.status, 200);
    let added = watch.chunk(Duration::from_secs(30)).await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&added).contains("\"ADDED\""),
        "{added:?}"
    );

    let pid = agg.proc.child.id().unwrap();
    let sent = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Not ready at once, still live and still answering.
    let mut not_ready = false;
    while sent.elapsed() < Duration::from_secs(4) {
        let (code, body) = get_as(agg.api, &agg.ca, None, "/readyz", &[])
            .await
            .unwrap();
        if code == 500 {
            assert!(body.contains("shutting down"), "{body}");
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(not_ready, "readiness did not fail after SIGTERM");
    // The watch ended cleanly, within the delay.
    let end = loop {
        match watch.chunk(Duration::from_secs(4)).await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(matches!(end, Ok(None)), "{end:?}");
    let (code, _) = get_as(agg.api, &agg.ca, None, "/livez", &[]).await.unwrap();
    assert_eq!(code, 200);
    let (code, body) = get_as(
        agg.api,
        &agg.ca,
        None,
        "/apis/metrics.k8s.io/v1beta1/nodes",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("node-a"), "{body}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "checks ran past the delay"
    );

    // Then the agent is told to go, and the process exits.
    let ended = stream_end(&mut inbound, Duration::from_secs(60))
        .await
        .expect("the stream outlived the shutdown");
    let s = ended.expect("the stream ended without saying why");
    assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    assert!(s.message().contains("shutting down"), "{s:?}");
    assert!(
        sent.elapsed() >= Duration::from_secs(5),
        "left before the delay"
    );
    let exit = tokio::time::timeout(Duration::from_secs(60), agg.proc.child.wait())
        .await
        .expect("did not exit")
        .unwrap();
    assert!(exit.success(), "{exit:?}\n{}", agg.proc.log_text());
}
