//! Three aggregator replicas with R=2 and six agents on 127.0.0.1. Each
//! agent knows one replica and follows the shard map to its node's owners;
//! every replica answers for the whole cluster; after one is SIGKILLed
//! every survivor still answers every node, each request within the peer
//! deadline; after a restart the replica answers again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use metrics_e2e::wait::eventually;
use std::time::{Duration, Instant};

use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeKubelet, FakeNode};
use metrics_e2e::procs::{start_agent, AggregatorProc, Proc};
use metrics_e2e::replicas::ReplicaSet;
use metrics_proto::ring;

const REPLICAS: usize = 3;
const NODES: usize = 6;
const PEER_TIMEOUT_MS: u64 = 500;

async fn wait_full(agg: &AggregatorProc, want_nodes: &[String]) -> bool {
    eventually(Duration::from_secs(30), async || {
        let nodes = agg.list_names("nodes").await;
        let pods = agg.list_names("pods").await.map_or(0, |p| p.len());
        nodes.as_deref() == Some(want_nodes) && pods == want_nodes.len()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_answer_for_the_cluster_and_survive_a_kill() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let peer_timeout = format!("--peer-timeout={PEER_TIMEOUT_MS}ms");
    let replicas = ReplicaSet::new(dir.path(), REPLICAS, 2, &[&peer_timeout]);
    let mut aggs = replicas.start_all().await.unwrap();

    let node_names: Vec<String> = (0..NODES).map(|i| format!("node-{i}")).collect();
    let mut kubelets: Vec<FakeKubelet> = Vec::new();
    let mut agents: Vec<Proc> = Vec::new();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok").unwrap();
    for name in &node_names {
        let node = FakeNode::one_pod(name);
        let k = kubelet::start(node, "tok", dir.path()).await.unwrap();
        // Each agent knows one replica only; the shard map it gets there
        // sends it to its node's two owners.
        let args = [
            k.agent_flags(&token),
            vec![
                format!("--aggregator-ca-file={}", replicas.cert.0),
                format!("--aggregator=https://127.0.0.1:{}", replicas.grpc_ports[0]),
                "--metric-resolution=1s".into(),
            ],
        ]
        .concat();
        agents.push(start_agent(dir.path(), name, &args).unwrap());
        kubelets.push(k);
    }

    for agg in &aggs {
        let full = wait_full(agg, &node_names).await;
        assert!(
            full,
            "replica at {} lacks nodes: nodes {:?} pods {:?}\n{}",
            agg.api_url(),
            agg.list_names("nodes").await,
            agg.list_names("pods").await,
            agg.proc.log_text()
        );
    }
    // Each replica holds exactly the nodes it owns (the agents followed the
    // map), so the full lists above were gathered from peers.
    for (i, agg) in aggs.iter().enumerate() {
        let (_, metrics_body) = {
            let (c, _, b) = https::get(&format!("{}/metrics", agg.api_url()), &agg.ca, &[])
                .await
                .unwrap();
            (c, b)
        };
        let owned = node_names
            .iter()
            .filter(|n| ring::owns(&replicas.ids, n, 2, &replicas.ids[i]))
            .count();
        assert!(
            metrics_body.contains("metrics_aggregator_shard_members 3"),
            "{metrics_body}"
        );
        assert!(
            metrics_body.contains("metrics_aggregator_peer_query_duration_seconds_count"),
            "{metrics_body}"
        );
        assert!(
            metrics_body.contains(&format!("metrics_aggregator_nodes {owned}")),
            "{} should hold {owned} nodes: {metrics_body}",
            replicas.ids[i]
        );
        // Agents' streams are on the batched ingest lane; the other
        // replicas' queries, which the full lists above needed, are not.
        let lane = |l: &str| format!("metrics_aggregator_grpc_connections_total{{lane=\"{l}\"}}");
        let ingest = agg.metric(&lane("ingest")).await.unwrap_or(0.0);
        let peer = agg.metric(&lane("peer")).await.unwrap_or(0.0);
        assert!(
            ingest >= owned as f64,
            "{}: {ingest} ingest-lane connections for {owned} agents",
            replicas.ids[i]
        );
        assert!(peer >= 1.0, "{}: no peer-lane connection", replicas.ids[i]);
    }

    // SIGKILL one replica: every survivor answers every node at once, and
    // no request takes longer than the peer deadline plus slack.
    aggs[1].proc.kill().await;
    let deadline = Duration::from_millis(PEER_TIMEOUT_MS) + Duration::from_millis(1500);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for i in [0, 2] {
            for path in ["nodes", "pods"] {
                let t = Instant::now();
                let got = aggs[i].list_names(path).await.unwrap_or_default();
                assert!(
                    t.elapsed() < deadline,
                    "{path} on agg-{i} took {:?}",
                    t.elapsed()
                );
                assert_eq!(
                    got.len(),
                    NODES,
                    "{path} on agg-{i} after the kill: {got:?}"
                );
            }
            for n in &node_names {
                let url = format!(
                    "{}/apis/metrics.k8s.io/v1beta1/nodes/{n}",
                    aggs[i].api_url()
                );
                let (code, _, _) = https::get(&url, &aggs[i].ca, &[]).await.unwrap();
                assert_eq!(code, 200, "{n} on agg-{i} after the kill");
            }
        }
    }

    // Restart it on the same ports: agents reconnect, it holds its own
    // nodes again, and it answers for the cluster.
    aggs[1] = replicas.start(1).await.unwrap();
    assert!(
        wait_full(&aggs[1], &node_names).await,
        "restarted replica: {}",
        aggs[1].proc.log_text()
    );
    let owned = node_names
        .iter()
        .filter(|n| ring::owns(&replicas.ids, n, 2, &replicas.ids[1]))
        .count();
    let mut back = false;
    for _ in 0..60 {
        let url = format!("{}/metrics", aggs[1].api_url());
        let (_, _, body) = https::get(&url, &aggs[1].ca, &[]).await.unwrap();
        if body.contains(&format!("metrics_aggregator_nodes {owned}")) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        back,
        "ownership of {owned} nodes returns to the restarted replica"
    );
    drop(agents);
}
