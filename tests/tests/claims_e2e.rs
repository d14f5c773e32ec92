//! A node's reports speak only for pods the API says run on it: when two
//! nodes report the same pod, the aggregator asks the API (here the
//! stand-in kube-apiserver) where the pod runs and serves only that
//! node's copy, even when the other one is fresher; a pod the API does
//! not know is served from neither. A pod only one node reports costs no
//! lookup.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{json, Value};
use tokio_stream::StreamExt;

use metrics_e2e::apiserver::FakeApiServer;
use metrics_e2e::https;
use metrics_e2e::https::get_as;
use metrics_e2e::procs::start_aggregator;
use metrics_e2e::reports::node_report;
use metrics_e2e::wait::eventually;
use metrics_proto::v1::ingest_client::IngestClient;
use metrics_proto::v1::{ContainerUsage, NodeReport, PodUsage};

fn pod(ns: &str, name: &str, cpu_nanocores: u64, behind_ns: i64) -> PodUsage {
    let now = metrics_proto::time::unix_nanos(std::time::SystemTime::now());
    PodUsage {
        namespace: ns.into(),
        name: name.into(),
        timestamp_unix_nanos: now - behind_ns,
        window_nanos: 15_000_000_000,
        containers: vec![ContainerUsage {
            name: "c".into(),
            cpu_nanocores,
            memory_working_set_bytes: 1 << 20,
            swap_bytes: 0,
        }],
        ..Default::default()
    }
}

fn report(node: &str, pods: Vec<PodUsage>) -> NodeReport {
    NodeReport {
        pods,
        ..node_report(node, 15_000)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_is_served_only_from_the_node_it_runs_on() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let api = FakeApiServer::start(d).await.unwrap();
    api.apply(
        "pods",
        json!({
            "metadata": {"namespace": "kube-system", "name": "coredns"},
            "spec": {"nodeName": "node-y", "containers": [{"name": "c"}]},
        }),
    );
    let kubeconfig = api.kubeconfig(d, "aggregator.kubeconfig").unwrap();
    let agg = start_aggregator(d, &[&format!("--kubeconfig={}", kubeconfig.display())])
        .await
        .unwrap();

    // node-x claims coredns with a fresher sample than node-y's, and a
    // pod no node runs; node-y reports the real coredns and the same ghost.
    let reports = [
        report(
            "node-x",
            vec![
                pod("kube-system", "coredns", 999_000_000, 0),
                pod("kube-system", "ghost", 1_000_000, 0),
                pod("team-a", "solo", 7_000_000, 0),
            ],
        ),
        report(
            "node-y",
            vec![
                pod("kube-system", "coredns", 5_000_000, 2_000_000_000),
                pod("kube-system", "ghost", 1_000_000, 0),
            ],
        ),
    ];
    let mut streams = Vec::new();
    for r in reports {
        let mut client = IngestClient::new(agg.grpc_channel().await.unwrap());
        let outbound = tokio_stream::iter(vec![r]).chain(tokio_stream::pending());
        let mut inbound = client.report(outbound).await.unwrap().into_inner();
        // The shard map or ack arrives once the report is in.
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await;
        assert!(matches!(first, Ok(Ok(Some(_)))), "{first:?}");
        streams.push((client, inbound));
    }

    let base = format!("{}/apis/metrics.k8s.io/v1beta1", agg.api_url());
    let list = |path: &'static str| {
        let (url, ca) = (format!("{base}/{path}"), agg.ca.clone());
        async move {
            let (code, _, body) = https::get(&url, &ca, &[]).await.unwrap();
            assert_eq!(code, 200, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()
        }
    };
    let served = eventually(Duration::from_secs(20), async || {
        list("pods").await["items"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    let all = list("pods").await;
    assert!(served, "{all}");
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["coredns", "solo"], "ghost is served from no node");
    let coredns = list("namespaces/kube-system/pods/coredns").await;
    assert_eq!(
        coredns["containers"][0]["usage"]["cpu"], "5m",
        "node-y's copy, not node-x's fresher one"
    );
    let ns = list("namespaces/kube-system/pods").await;
    assert_eq!(ns["items"][0]["containers"][0]["usage"]["cpu"], "5m");

    // Only the contested pods were looked up, once each per verdict's life.
    let lookups: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces/") && r.contains("/pods/"))
        .collect();
    assert!(
        lookups.iter().any(|r| r.contains("/pods/coredns")),
        "{lookups:?}"
    );
    assert!(
        lookups.iter().any(|r| r.contains("/pods/ghost")),
        "{lookups:?}"
    );
    assert!(
        !lookups.iter().any(|r| r.contains("/pods/solo")),
        "a pod one node reports is not looked up: {lookups:?}"
    );
    assert!(lookups.len() <= 4, "verdicts are cached: {lookups:?}");

    let (_, metrics) = get_as(agg.api, &agg.ca, None, "/metrics", &[])
        .await
        .unwrap();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("metrics_aggregator_pod_claims_total{result=\"refused\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        refused >= 3,
        "node-x's coredns and both ghosts: {refused}\n{metrics}"
    );
    drop(streams);
}
