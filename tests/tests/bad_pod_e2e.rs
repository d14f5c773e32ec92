//! A pod the aggregator would refuse (here a name that is not a DNS
//! subdomain, and another with a label key that is not a label key) never
//! costs its node: the agent leaves that pod out of its reports, says so
//! once (not every period), and the node and its other pods are served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;

use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeContainer, FakeNode, FakePod};
use metrics_e2e::procs::{start_agent, start_aggregator};
use metrics_e2e::wait::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pod_is_left_out_and_its_node_served() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut node = FakeNode::one_pod("bp-node");
    node.pods.push(FakePod {
        uid: kubelet::pod_uid("ns/Bad_Pod"),
        namespace: "ns".into(),
        name: "Bad_Pod".into(),
        labels: Default::default(),
        containers: vec![FakeContainer {
            name: "c".into(),
            id: kubelet::container_id("Bad_Pod/c"),
            cores: 0.01,
            memory: 1 << 20,
        }],
    });
    node.pods.push(FakePod {
        uid: kubelet::pod_uid("ns/badly-labelled"),
        namespace: "ns".into(),
        name: "badly-labelled".into(),
        labels: [("bad key!".to_owned(), "v".to_owned())].into(),
        containers: vec![FakeContainer {
            name: "c".into(),
            id: kubelet::container_id("badly-labelled/c"),
            cores: 0.01,
            memory: 1 << 20,
        }],
    });
    let k = kubelet::start(node, "kt", d).await.unwrap();
    let token = d.join("kubelet-token");
    std::fs::write(&token, "kt").unwrap();
    let agg = start_aggregator(d, &[]).await.unwrap();
    let agent = start_agent(
        d,
        "bp-node",
        &[
            k.agent_flags(&token),
            agg.agent_flags(None),
            // Labels from the kubelet's `/pods` (no API in this test).
            vec!["--kubelet-pod-labels".into()],
        ]
        .concat(),
    )
    .unwrap();

    let url = format!(
        "{}/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods",
        agg.api_url()
    );
    let served = eventually(Duration::from_secs(30), async || {
        let Ok((code, _, body)) = https::get(&url, &agg.ca, &[]).await else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        let names: Vec<&str> = v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["metadata"]["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        code == 200 && names == ["pod-on-bp-node"]
    })
    .await;
    assert!(served, "{}", agent.log_text());
    let node_url = format!(
        "{}/apis/metrics.k8s.io/v1beta1/nodes/bp-node",
        agg.api_url()
    );
    assert_eq!(https::get(&node_url, &agg.ca, &[]).await.unwrap().0, 200);
    // Several periods (1 s each) later: still one line about the pod.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = agent.log_text();
    assert_eq!(log.matches("left out of reports").count(), 2, "{log}");
    assert!(
        log.contains("pod ns/Bad_Pod") && log.contains("invalid namespace or name"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("pod ns/badly-labelled") && l.contains("bad key!")),
        "{log}"
    );
    // The aggregator never had to drop it: the agent did.
    assert!(!agg
        .proc
        .log_text()
        .contains("left out of an accepted report"));
}
