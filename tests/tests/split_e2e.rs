//! A list across the cluster takes each node's objects from one replica:
//! three real replicas with R=2 and simulated agents on 127.0.0.1. The
//! replica asked answers the nodes it holds itself, and its peers send only
//! the others, each once (counted by `metrics_aggregator_peer_objects`).
//! Before the split each peer sent every node it held, so every object
//! crossed twice. The answers stay complete and free of duplicates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use metrics_e2e::load::workload::Shape;
use metrics_e2e::procs::AggregatorProc;
use metrics_e2e::replicas::ReplicaSet;
use metrics_e2e::wait::eventually;
use metrics_proto::ring;

const SERIES: &str = "metrics_aggregator_peer_objects_total";

/// (namespace/name of every item, items) of a list, when it is a 200.
async fn list(agg: &AggregatorProc, path: &str) -> Option<(HashSet<String>, usize)> {
    let url = format!("{}/apis/metrics.k8s.io/v1beta1/{path}", agg.api_url());
    let (code, _, body) = metrics_e2e::https::get(&url, &agg.ca, &[]).await.ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let items = v["items"].as_array()?;
    let keys = items
        .iter()
        .map(|i| {
            let m = &i["metadata"];
            format!(
                "{}/{}",
                m["namespace"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    Some((keys, items.len()))
}

/// Objects received from peers while `path` was listed once, when the
/// list was whole: `want` distinct items and no copies.
async fn peer_objects_for(agg: &AggregatorProc, path: &str, want: usize) -> Option<u64> {
    let before = agg.metric(SERIES).await.unwrap_or(0.0);
    let (keys, items) = list(agg, path).await?;
    let after = agg.metric(SERIES).await?;
    (keys.len() == want && items == want).then_some((after - before) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nodes_objects_cross_once() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let set = ReplicaSet::new(dir.path(), 3, 2, &[]);
    let aggs = set.start_all().await.unwrap();
    let shape = Shape {
        nodes: 24,
        pods_per_node: 5,
        containers_per_pod: 1,
        namespaces: 4,
    };
    let _fleet = set.fleet(shape, Duration::from_secs(1)).unwrap();
    let names: Vec<String> = (0..shape.nodes).map(|n| shape.node_name(n)).collect();

    for (i, agg) in aggs.iter().enumerate() {
        let not_owned = names
            .iter()
            .filter(|n| !ring::owns(&set.ids, n, 2, &set.ids[i]))
            .count();
        assert!(not_owned > 0 && not_owned < shape.nodes, "{not_owned}");
        // Once the replica holds every node it owns, a list of every pod
        // takes from its peers exactly the pods of the nodes it does not
        // own, and a list of every node exactly those nodes.
        let pods = (not_owned * shape.pods_per_node) as u64;
        let mut last = None;
        let split = eventually(Duration::from_secs(60), async || {
            last = peer_objects_for(agg, "pods", shape.total_pods()).await;
            last == Some(pods)
        })
        .await;
        assert!(split, "agg-{i}: {last:?} objects from peers, want {pods}");
        let nodes = peer_objects_for(agg, "nodes", shape.nodes).await;
        assert_eq!(nodes, Some(not_owned as u64), "agg-{i}");
    }
}
