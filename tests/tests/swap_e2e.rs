//! `--extra-resources=swap`: the kubelet's swap series reach `usage` as
//! `swap` (and a Table column), with the real agent and aggregator; without
//! the flag the answers carry exactly cpu and memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;

use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_e2e::procs::{start_agent, start_aggregator, AggregatorProc};
use metrics_e2e::wait::eventually;

async fn get(agg: &AggregatorProc, path: &str, accept: &str) -> Value {
    let url = format!("{}/apis/metrics.k8s.io/v1beta1/{path}", agg.api_url());
    let (code, _, body) = https::get(&url, &agg.ca, &[("accept", accept)])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_is_served_only_when_asked_for() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut node = FakeNode::one_pod("node-s");
    node.extra_lines = vec![
        "node_swap_usage_bytes 1048576".into(),
        "container_swap_usage_bytes{container=\"c\",namespace=\"ns\",pod=\"pod-on-node-s\"} 2048"
            .into(),
    ];
    let k = kubelet::start(node, "kt", d).await.unwrap();
    let token = d.join("kubelet-token");
    std::fs::write(&token, "kt").unwrap();
    for sub in ["with", "without"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let with = start_aggregator(&d.join("with"), &["--extra-resources=swap"])
        .await
        .unwrap();
    let without = start_aggregator(&d.join("without"), &[]).await.unwrap();
    let mut agents = Vec::new();
    for (agg, name) in [(&with, "with"), (&without, "without")] {
        let args = [k.agent_flags(&token), agg.agent_flags(None)].concat();
        agents.push(start_agent(&d.join(name), "node-s", &args).unwrap());
    }
    for agg in [&with, &without] {
        let ready = eventually(Duration::from_secs(30), async || {
            let url = format!(
                "{}/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods",
                agg.api_url()
            );
            let Ok((code, _, body)) = https::get(&url, &agg.ca, &[]).await else {
                return false;
            };
            code == 200 && body.contains("pod-on-node-s")
        })
        .await;
        assert!(ready, "{}", agents[0].log_text());
    }

    let node = get(&with, "nodes/node-s", "application/json").await;
    assert_eq!(node["usage"]["swap"], "1Mi", "{node}");
    let pod = get(
        &with,
        "namespaces/ns/pods/pod-on-node-s",
        "application/json",
    )
    .await;
    assert_eq!(pod["containers"][0]["usage"]["swap"], "2Ki", "{pod}");
    let table = get(
        &with,
        "namespaces/ns/pods",
        "application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    .await;
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Name", "cpu", "memory", "swap", "Window"]);
    assert_eq!(table["rows"][0]["cells"][3], "2Ki");

    let node = get(&without, "nodes/node-s", "application/json").await;
    let keys: Vec<&String> = node["usage"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["cpu", "memory"], "{node}");
    let pod = get(
        &without,
        "namespaces/ns/pods/pod-on-node-s",
        "application/json",
    )
    .await;
    assert!(pod["containers"][0]["usage"].get("swap").is_none(), "{pod}");
}
