//! No answer is silently partial. Three replicas with R=1 and 30 simulated
//! agents: with one replica down, lists still answer with a Warning header
//! naming it and the share of nodes that may be missing (and a counter);
//! a node GET whose owner is down is a 503, not a 404; with two down,
//! lists missing more than --max-missing-share fail with a 503 Status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use metrics_e2e::https;
use metrics_e2e::load::workload::Shape;
use metrics_e2e::procs::AggregatorProc;
use metrics_e2e::replicas::ReplicaSet;
use metrics_e2e::wait::until;
use metrics_proto::ring;

const NODES: usize = 30;

async fn get(agg: &AggregatorProc, path: &str) -> (u16, Option<String>, serde_json::Value) {
    let url = format!("{}/apis/metrics.k8s.io/v1beta1/{path}", agg.api_url());
    let (code, headers, body) = https::get(&url, &agg.ca, &[]).await.unwrap();
    let warning = headers
        .get("warning")
        .map(|w| w.to_str().unwrap().to_owned());
    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (code.as_u16(), warning, v)
}

fn items(v: &serde_json::Value) -> usize {
    v["items"].as_array().map_or(0, Vec::len)
}

async fn metrics(agg: &AggregatorProc) -> String {
    let url = format!("{}/metrics", agg.api_url());
    https::get(&url, &agg.ca, &[]).await.unwrap().2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_missing_a_replica_say_so() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // A killed replica refuses at once; the deadline only needs to be wide
    // enough that a live peer on a loaded machine is never counted as
    // missing, and six periods before expiry keep a stall of this process
    // (which also runs the simulated agents) from dropping nodes.
    let set = ReplicaSet::new(
        dir.path(),
        3,
        1,
        &["--peer-timeout=3s", "--node-expiry-periods=6"],
    );
    let mut aggs = set.start_all().await.unwrap();
    let shape = Shape {
        nodes: NODES,
        pods_per_node: 2,
        containers_per_pod: 1,
        namespaces: 3,
    };
    let fleet = set.fleet(shape, Duration::from_secs(1)).unwrap();
    until(
        "every node on replica 0",
        Duration::from_secs(60),
        async || {
            let (code, warning, v) = get(&aggs[0], "nodes").await;
            code == 200 && warning.is_none() && items(&v) == NODES
        },
    )
    .await;

    let owned_by = |i: usize| -> Vec<String> {
        (0..NODES)
            .map(|n| shape.node_name(n))
            .filter(|n| ring::owns(&set.ids, n, 1, &set.ids[i]))
            .collect()
    };
    let lost = owned_by(2);
    assert!(!lost.is_empty() && lost.len() < NODES, "{lost:?}");

    // One replica of three down with R=1: about a third of nodes missing.
    aggs[2].proc.kill().await;
    for path in ["nodes", "pods"] {
        let (code, warning, v) = get(&aggs[0], path).await;
        assert_eq!(code, 200, "{path}: {v}");
        let warning = warning.unwrap_or_else(|| panic!("{path}: no Warning header"));
        assert!(
            warning.starts_with("299 - \"") && warning.contains("agg-2") && warning.contains("33%"),
            "{path}: {warning}"
        );
        let want = (NODES - lost.len()) * if path == "nodes" { 1 } else { 2 };
        assert_eq!(items(&v), want, "{path}");
    }
    // The lost replica's node cannot be looked up: 503, never a 404.
    let (code, _, v) = get(&aggs[0], &format!("nodes/{}", lost[0])).await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "ServiceUnavailable");
    // A node the answering replica owns is found without a warning.
    let mine = owned_by(0);
    let (code, warning, _) = get(&aggs[0], &format!("nodes/{}", mine[0])).await;
    assert_eq!((code, warning), (200, None));
    let m = metrics(&aggs[0]).await;
    assert!(
        m.lines().any(|l| l
            .starts_with("metrics_aggregator_partial_answers_total{result=\"warned\"}")
            && !l.ends_with(" 0")),
        "{m}"
    );

    // Two of three down: two thirds missing, above the default 0.5.
    aggs[1].proc.kill().await;
    let (code, _, v) = get(&aggs[0], "pods").await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["reason"], "ServiceUnavailable");
    assert!(
        v["message"].as_str().unwrap().contains("agg-1, agg-2"),
        "{v}"
    );
    // Refused twice: the node GET above and this list.
    let m = metrics(&aggs[0]).await;
    assert!(
        m.contains("metrics_aggregator_partial_answers_total{result=\"refused\"} 2"),
        "{m}"
    );
    fleet.stop();
}
