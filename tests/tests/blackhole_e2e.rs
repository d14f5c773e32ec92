//! A path between the real agent and one of its node's two owners that
//! starts dropping every byte (a loopback proxy that blackholes, no reset,
//! no close): the agent gives the stalled stream up within its answer
//! deadline (3 periods, at least 5 s), no answer from either replica
//! misses the node meanwhile (R=2: the other owner has it, and the cut
//! replica asks it), and once the path heals the agent streams to that
//! owner again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_e2e::procs::{free_port, start_agent, AggregatorProc};
use metrics_e2e::proxy::Proxy;
use metrics_e2e::replicas::ReplicaSet;
use metrics_e2e::wait::eventually;

async fn accepted(agg: &AggregatorProc) -> f64 {
    let Ok((_, _, body)) = https::get(&format!("{}/metrics", agg.api_url()), &agg.ca, &[]).await
    else {
        return 0.0;
    };
    body.lines()
        .find(|l| l.starts_with("metrics_aggregator_reports_total{result=\"accepted\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The node names of `agg`'s node list (its own and its peer's, merged).
async fn nodes(agg: &AggregatorProc) -> Vec<String> {
    let url = format!("{}/apis/metrics.k8s.io/v1beta1/nodes", agg.api_url());
    let (code, _, body) = https::get(&url, &agg.ca, &[]).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_path_is_detected_and_rebuilt_with_no_node_missing() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Replica 1 is listed (to the agent and to replica 0) behind the proxy.
    let mut set = ReplicaSet::new(d, 2, 2, &[]);
    let proxy_port = free_port();
    set.grpc_advertised[1] = proxy_port;
    let proxy = Proxy::start(
        SocketAddr::from(([127, 0, 0, 1], proxy_port)),
        SocketAddr::from(([127, 0, 0, 1], set.grpc_ports[1])),
    )
    .await
    .unwrap();
    let aggs = set.start_all().await.unwrap();
    let k = kubelet::start(FakeNode::one_pod("bh-node"), "kt", d)
        .await
        .unwrap();
    let token = d.join("kubelet-token");
    std::fs::write(&token, "kt").unwrap();
    let agent = start_agent(
        d,
        "bh-node",
        &[k.agent_flags(&token), aggs[0].agent_flags(None)].concat(),
    )
    .unwrap();

    // Both owners receive reports, replica 1 through the proxy.
    let both = eventually(Duration::from_secs(60), async || {
        accepted(&aggs[0]).await > 0.0 && accepted(&aggs[1]).await > 1.0
    })
    .await;
    assert!(both, "{}", agent.log_text());
    assert_eq!(nodes(&aggs[1]).await, ["bh-node"]);

    proxy.set_blackhole(true);
    let cut = Instant::now();
    let mut detected: Option<Duration> = None;
    let mut answers = 0;
    // Well past the deadline and replica 1's own copy's expiry (3 s).
    while cut.elapsed() < Duration::from_secs(15) {
        for agg in &aggs {
            assert_eq!(
                nodes(agg).await,
                ["bh-node"],
                "an answer missed the node {:?} into the blackhole",
                cut.elapsed()
            );
            answers += 1;
        }
        if detected.is_none() && agent.log_text().contains("stalled: no answer within 5s") {
            detected = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(answers >= 10, "{answers} answers checked");
    let detected = detected.unwrap_or_else(|| panic!("no stall noticed:\n{}", agent.log_text()));
    // The deadline is 5 s at a 1 s period; the rest is headroom for a
    // loaded machine.
    assert!(
        detected < Duration::from_secs(12),
        "noticed after {detected:?}"
    );

    // The path heals: the agent streams to replica 1 again.
    let before = accepted(&aggs[1]).await;
    proxy.set_blackhole(false);
    let back = eventually(Duration::from_secs(90), async || {
        accepted(&aggs[1]).await > before + 1.0
    })
    .await;
    assert!(back, "{}", agent.log_text());
    assert_eq!(nodes(&aggs[1]).await, ["bh-node"]);
}
