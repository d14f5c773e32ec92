//! An agent survives its aggregator: after a SIGKILL and a restart on the
//! same port, the agent reconnects by itself and the node is served again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use metrics_e2e::wait::eventually;
use std::time::{Duration, Instant};

use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_e2e::procs::{start_agent, start_aggregator, AggregatorProc};

async fn node_served(agg: &AggregatorProc, within: Duration) -> bool {
    let url = format!("{}/apis/metrics.k8s.io/v1beta1/nodes/node-r", agg.api_url());
    eventually(
        within,
        async || matches!(https::get(&url, &agg.ca, &[]).await, Ok((code, _, _)) if code == 200),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_aggregator_restart() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut agg = start_aggregator(dir.path(), &[]).await.unwrap();
    let node = FakeNode::one_pod("node-r");
    let k = kubelet::start(node, "t", dir.path()).await.unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let _agent = start_agent(
        dir.path(),
        "node-r",
        &[
            k.agent_flags(&token),
            vec![
                format!("--aggregator={}", agg.grpc_url()),
                format!("--aggregator-ca-file={}", agg.ca.display()),
                "--metric-resolution=1s".into(),
            ],
        ]
        .concat(),
    )
    .unwrap();
    assert!(
        node_served(&agg, Duration::from_secs(30)).await,
        "{}",
        agg.proc.log_text()
    );

    let (api_port, grpc_port) = (agg.api.port(), agg.grpc.port());
    agg.proc.kill().await;
    // Same ports and certificate directory: the agent's URL and CA stay valid.
    let restarted = start_aggregator(
        dir.path(),
        &[
            &format!("--secure-port={api_port}"),
            &format!("--grpc-port={grpc_port}"),
        ],
    )
    .await
    .unwrap();
    let restart = Instant::now();
    assert!(
        node_served(&restarted, Duration::from_secs(30)).await,
        "agent did not come back: {}",
        restarted.proc.log_text()
    );
    // Backoff is capped; a few seconds of outage means a quick return.
    assert!(
        restart.elapsed() < Duration::from_secs(20),
        "took {:?}",
        restart.elapsed()
    );
}
