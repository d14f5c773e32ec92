//! An agent that cannot verify its kubelet's serving certificate says so
//! once per outage, with the reason and the flags that fix it, and keeps
//! running; given the right CA (or told to skip verification, as the
//! kubelet-insecure overlay does) it reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_e2e::procs::{start_agent, start_aggregator, AggregatorProc};
use metrics_e2e::wait::eventually;

async fn node_served(agg: &AggregatorProc, node: &str) -> bool {
    let url = format!("{}/apis/metrics.k8s.io/v1beta1/nodes/{node}", agg.api_url());
    matches!(https::get(&url, &agg.ca, &[]).await, Ok((code, _, _)) if code == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_kubelet_certificate_names_the_fix() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = kubelet::start(FakeNode::one_pod("tls-node"), "kt", d)
        .await
        .unwrap();
    let token = d.join("kubelet-token");
    std::fs::write(&token, "kt").unwrap();
    let agg = start_aggregator(d, &[]).await.unwrap();
    // The aggregator's CA did not sign the kubelet's certificate.
    let agent = start_agent(
        d,
        "tls-node",
        &[
            format!("--kubelet-url={}", k.url()),
            format!("--kubelet-certificate-authority={}", agg.ca.display()),
            format!("--kubelet-token-file={}", token.display()),
        ]
        .into_iter()
        .chain(agg.agent_flags(None))
        .collect::<Vec<_>>(),
    )
    .unwrap();
    let hinted = eventually(Duration::from_secs(20), async || {
        agent.log_text().contains("--kubelet-insecure-tls")
    })
    .await;
    let log = agent.log_text();
    assert!(hinted, "{log}");
    assert!(log.contains("serving certificate is not trusted"), "{log}");
    assert!(log.contains("--kubelet-certificate-authority"), "{log}");
    assert!(!node_served(&agg, "tls-node").await);
    // Once per outage, not once per period (1 s here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = agent.log_text();
    assert_eq!(log.matches("--kubelet-insecure-tls").count(), 1, "{log}");

    // Skipping verification, as the kubelet-insecure overlay does, works.
    std::fs::create_dir_all(d.join("insecure")).unwrap();
    let insecure = start_agent(
        &d.join("insecure"),
        "tls-node-2",
        &[
            format!("--kubelet-url={}", k.url()),
            "--kubelet-insecure-tls".into(),
            format!("--kubelet-token-file={}", token.display()),
        ]
        .into_iter()
        .chain(agg.agent_flags(None))
        .collect::<Vec<_>>(),
    );
    let insecure = insecure.unwrap();
    let served = eventually(Duration::from_secs(20), async || {
        node_served(&agg, "tls-node-2").await
    })
    .await;
    assert!(served, "{}", insecure.log_text());
}
