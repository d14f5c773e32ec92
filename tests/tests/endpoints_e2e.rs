//! Replica membership from the headless Service's EndpointSlices on a
//! stand-in API server: replicas follow slices being added and removed,
//! agents follow the resulting shard maps, and every node stays answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use metrics_e2e::apiserver::{endpoint_slice, FakeApiServer};
use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_e2e::procs::{free_port, shared_cert, start_agent, start_aggregator, AggregatorProc};
use metrics_e2e::wait::until;
use metrics_proto::ring;
use metrics_proto::v1::QueryRequest;

const SERVICE: &str = "metrics-aggregator-peers";

/// Nodes this replica holds itself (a peer query answers from its store).
async fn local_nodes(agg: &AggregatorProc) -> usize {
    agg.peer_query(QueryRequest::default(), None)
        .await
        .unwrap()
        .len()
}

async fn metric(agg: &AggregatorProc, name: &str) -> Option<String> {
    let url = format!("{}/metrics", agg.api_url());
    let (_, _, body) = https::get(&url, &agg.ca, &[]).await.ok()?;
    body.lines()
        .find(|l| l.starts_with(name))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_follows_endpoint_slices() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let api = FakeApiServer::start(d).await.unwrap();
    let kubeconfig = api.kubeconfig(d, "kubeconfig").unwrap();
    let (cert, key) = shared_cert(d);
    let ids = ["agg-0", "agg-1", "agg-2"];
    let grpc: Vec<u16> = ids.iter().map(|_| free_port()).collect();
    api.apply("endpointslices", endpoint_slice(SERVICE, ids[0], grpc[0]));
    api.apply("endpointslices", endpoint_slice(SERVICE, ids[1], grpc[1]));
    let mut aggs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let rd = d.join(id);
        std::fs::create_dir_all(&rd).unwrap();
        aggs.push(
            start_aggregator(
                &rd,
                &[
                    &format!("--kubeconfig={}", kubeconfig.display()),
                    &format!("--peers-service=kube-system/{SERVICE}"),
                    &format!("--shard-id={id}"),
                    "--replication-factor=1",
                    // Wide enough that a live peer on a loaded machine is
                    // never counted as missing.
                    "--peer-timeout=3s",
                    &format!("--grpc-port={}", grpc[i]),
                    &format!("--tls-cert-file={cert}"),
                    &format!("--tls-private-key-file={key}"),
                ],
            )
            .await
            .unwrap(),
        );
    }
    let nodes: Vec<String> = (0..6).map(|i| format!("node-{i}")).collect();
    let token = d.join("kubelet-token");
    std::fs::write(&token, "kt").unwrap();
    let (mut kubelets, mut agents) = (Vec::new(), Vec::new());
    for n in &nodes {
        let k = kubelet::start(FakeNode::one_pod(n), "kt", d).await.unwrap();
        agents.push(
            start_agent(
                d,
                n,
                &[
                    k.agent_flags(&token),
                    vec![
                        format!("--aggregator={}", aggs[0].grpc_url()),
                        format!("--aggregator-ca-file={cert}"),
                        "--metric-resolution=1s".into(),
                    ],
                ]
                .concat(),
            )
            .unwrap(),
        );
        kubelets.push(k);
    }

    // Two listed replicas; the third runs as a standby and still answers.
    for agg in &aggs {
        until(
            "every node from every replica",
            Duration::from_secs(40),
            async || agg.list_names("nodes").await.as_deref() == Some(&nodes[..]),
        )
        .await;
    }
    assert_eq!(
        metric(&aggs[0], "metrics_aggregator_shard_members")
            .await
            .as_deref(),
        Some("metrics_aggregator_shard_members 2")
    );
    assert_eq!(local_nodes(&aggs[2]).await, 0, "a standby owns nothing");

    // agg-2 joins: its nodes reach it, and no answer misses a node meanwhile.
    let three: Vec<&str> = ids.to_vec();
    let owned_by_2 = nodes
        .iter()
        .filter(|n| ring::owners(&three, n, 1) == vec!["agg-2"])
        .count();
    assert!(owned_by_2 > 0, "the test needs agg-2 to own a node");
    api.apply("endpointslices", endpoint_slice(SERVICE, ids[2], grpc[2]));
    let started = Instant::now();
    until(
        "agg-2 to hold its nodes",
        Duration::from_secs(30),
        async || {
            assert_eq!(
                aggs[0].list_names("nodes").await.as_deref(),
                Some(&nodes[..]),
                "a node went missing during the join"
            );
            local_nodes(&aggs[2]).await == owned_by_2
        },
    )
    .await;
    eprintln!("join took {:?}", started.elapsed());
    assert_eq!(
        metric(&aggs[1], "metrics_aggregator_shard_members")
            .await
            .as_deref(),
        Some("metrics_aggregator_shard_members 3")
    );

    // agg-1 leaves (its slice is deleted and it stops): its nodes move.
    api.delete("endpointslices", "kube-system", &format!("{SERVICE}-agg-1"));
    aggs[1].proc.kill().await;
    until(
        "every node after agg-1 left",
        Duration::from_secs(30),
        async || {
            let all = aggs[0].list_names("nodes").await.as_deref() == Some(&nodes[..]);
            all && local_nodes(&aggs[0]).await + local_nodes(&aggs[2]).await == nodes.len()
        },
    )
    .await;
    assert_eq!(
        metric(&aggs[2], "metrics_aggregator_shard_members")
            .await
            .as_deref(),
        Some("metrics_aggregator_shard_members 2")
    );
    drop((agents, kubelets));
}
