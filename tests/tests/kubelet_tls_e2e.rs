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

/// A kubelet that authenticates callers by client certificate (no token
/// webhook) is read with `--kubelet-client-certificate`/`--kubelet-client-key`;
/// without them the handshake fails and the node is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_that_wants_a_client_certificate_gets_one() {
    use metrics_e2e::pki::{Leaf, TestCa};
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let client_ca = TestCa::new(d, "kubelet-client-ca").unwrap();
    let client = client_ca
        .issue(
            d,
            "metrics-agent",
            Leaf::Client {
                cn: "system:metrics-agent",
                orgs: &[],
            },
            false,
        )
        .unwrap();
    let k = kubelet::start_with_client_ca(FakeNode::one_pod("cert-node"), d, &client_ca.file)
        .await
        .unwrap();
    let agg = start_aggregator(d, &[]).await.unwrap();
    let no_token = d.join("no-token");
    let base = || -> Vec<String> {
        [
            format!("--kubelet-url={}", k.url()),
            format!("--kubelet-certificate-authority={}", k.ca_file.display()),
            format!("--kubelet-token-file={}", no_token.display()),
        ]
        .into_iter()
        .chain(agg.agent_flags(None))
        .collect()
    };
    let mut with_cert = base();
    with_cert.push(format!(
        "--kubelet-client-certificate={}",
        client.cert.display()
    ));
    with_cert.push(format!("--kubelet-client-key={}", client.key.display()));
    std::fs::create_dir_all(d.join("with")).unwrap();
    let agent = start_agent(&d.join("with"), "cert-node", &with_cert).unwrap();
    let served = eventually(Duration::from_secs(30), async || {
        node_served(&agg, "cert-node").await
    })
    .await;
    assert!(served, "{}", agent.log_text());

    std::fs::create_dir_all(d.join("without")).unwrap();
    let without = start_agent(&d.join("without"), "cert-node-2", &base()).unwrap();
    let failed = eventually(Duration::from_secs(30), async || {
        without.log_text().contains("reading source failed")
    })
    .await;
    assert!(failed, "{}", without.log_text());
    assert!(!node_served(&agg, "cert-node-2").await);
}
