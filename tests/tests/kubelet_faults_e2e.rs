//! A kubelet that fails in each way kubelets fail (500, garbage, all
//! zeros, a body cut half-way, no answer at all): its node's point is
//! skipped and counted, its agent keeps running, another node is served
//! throughout, and the node is back on the first good cycle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;

use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeNode, Fault};
use metrics_e2e::procs::{
    agent_metrics_addr, http_get, start_agent, start_aggregator, AggregatorProc, Proc,
};
use metrics_e2e::wait::{eventually, until};

/// The served sample time of `node` (RFC 3339), if served.
async fn node_time(agg: &AggregatorProc, node: &str) -> Option<String> {
    let url = format!("{}/apis/metrics.k8s.io/v1beta1/nodes/{node}", agg.api_url());
    let (code, _, body) = https::get(&url, &agg.ca, &[]).await.ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| v["timestamp"].as_str().map(str::to_owned))?
}

/// Failed reads plus reads that yielded no node usage, from the agent's
/// own metrics.
async fn failures(agent: &Proc) -> u64 {
    let addr = agent_metrics_addr(&agent.log_text()).expect("agent metrics address");
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    [
        "metrics_agent_source_reads_total{result=\"error\"} ",
        "metrics_agent_dropped_total{reason=\"incomplete_node\"} ",
    ]
    .iter()
    .filter_map(|k| text.lines().find_map(|l| l.strip_prefix(k)))
    .filter_map(|v| v.trim().parse::<u64>().ok())
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kubelet_fault_costs_its_node_one_cycle_and_nothing_else() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let faulty = kubelet::start(FakeNode::one_pod("node-f"), "kt", d)
        .await
        .unwrap();
    let healthy = kubelet::start(FakeNode::one_pod("node-ok"), "kt", d)
        .await
        .unwrap();
    let token = d.join("kubelet-token");
    std::fs::write(&token, "kt").unwrap();
    let agg = start_aggregator(d, &[]).await.unwrap();
    let mut agents = Vec::new();
    for (node, k) in [("node-f", &faulty), ("node-ok", &healthy)] {
        let sub = d.join(node);
        std::fs::create_dir_all(&sub).unwrap();
        let args = [
            k.agent_flags(&token),
            agg.agent_flags(None),
            vec![
                "--metrics-bind-address=127.0.0.1:0".into(),
                "--kubelet-request-timeout=2s".into(),
            ],
        ]
        .concat();
        agents.push(start_agent(&sub, node, &args).unwrap());
    }
    for node in ["node-f", "node-ok"] {
        until(
            &format!("{node} served"),
            Duration::from_secs(30),
            async || node_time(&agg, node).await.is_some(),
        )
        .await;
    }

    for fault in [
        Fault::ServerError,
        Fault::Garbage,
        Fault::Zeros,
        Fault::CutBody,
        Fault::Hang,
    ] {
        let before = failures(&agents[0]).await;
        let ok_before = node_time(&agg, "node-ok").await;
        faulty.set_fault(fault);
        let counted = eventually(Duration::from_secs(20), async || {
            failures(&agents[0]).await > before
        })
        .await;
        assert!(counted, "{fault:?} not counted:\n{}", agents[0].log_text());
        // The other node kept being served with new samples.
        let moved = eventually(Duration::from_secs(10), async || {
            let now = node_time(&agg, "node-ok").await;
            now.is_some() && now != ok_before
        })
        .await;
        assert!(moved, "{fault:?}: node-ok stopped moving");
        for a in &mut agents {
            assert!(
                a.child.try_wait().unwrap().is_none(),
                "{fault:?}: an agent exited:\n{}",
                a.log_text()
            );
        }
        // Recovery: a sample taken after the fault ends is served.
        faulty.set_fault(Fault::None);
        let cleared = metrics_proto::time::unix_nanos(std::time::SystemTime::now());
        let back = eventually(Duration::from_secs(20), async || {
            node_time(&agg, "node-f")
                .await
                .and_then(|t| metrics_proto::time::parse_rfc3339(&t))
                .is_some_and(|t| t >= cleared - 1_000_000_000)
        })
        .await;
        assert!(
            back,
            "{fault:?}: node-f did not come back:\n{}",
            agents[0].log_text()
        );
    }
}

/// The agent does not ask its node's kubelet for gzip (compressing saves no
/// network there and costs both ends CPU), and still reads an answer that
/// comes compressed anyway, with the same values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_answer_is_read_though_never_asked_for() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = kubelet::start(FakeNode::one_pod("node-z"), "kt", d)
        .await
        .unwrap();
    k.set_gzip_always(true);
    let token = d.join("kubelet-token");
    std::fs::write(&token, "kt").unwrap();
    let agg = start_aggregator(d, &[]).await.unwrap();
    let args = [
        k.agent_flags(&token),
        agg.agent_flags(None),
        vec!["--metrics-bind-address=127.0.0.1:0".into()],
    ]
    .concat();
    let agent = start_agent(d, "node-z", &args).unwrap();
    until("node-z served", Duration::from_secs(30), async || {
        node_time(&agg, "node-z").await.is_some()
    })
    .await;
    assert!(k.scrapes() >= 2, "served before two scrapes");
    assert_eq!(k.gzip_asked(), 0, "the agent asked for gzip");
    // The pod's container carries the working set the kubelet sent.
    let url = format!(
        "{}/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods/pod-on-node-z",
        agg.api_url()
    );
    let mut pod = Value::Null;
    until(
        "pod served",
        Duration::from_secs(30),
        async || match https::get(&url, &agg.ca, &[]).await {
            Ok((code, _, body)) if code == 200 => {
                pod = serde_json::from_str(&body).unwrap_or_default();
                true
            }
            _ => false,
        },
    )
    .await;
    let memory = pod["containers"][0]["usage"]["memory"].as_str().unwrap();
    assert_eq!(metrics_e2e::quantity::bytes(memory), Some(1 << 20), "{pod}");
    let failed = failures(&agent).await;
    assert_eq!(failed, 0, "{}", agent.log_text());
}
