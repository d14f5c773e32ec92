//! Pod and node labels come from the agent's own watches (pods with
//! `spec.nodeName`, its Node by name, metadata only) on a stand-in API server,
//! follow label changes, and survive the API going away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use metrics_e2e::apiserver::FakeApiServer;
use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_e2e::procs::{start_agent, start_aggregator, AggregatorProc};

const V1: &str = "/apis/metrics.k8s.io/v1beta1";

async fn get(agg: &AggregatorProc, path_and_query: &str) -> Value {
    let url = format!("{}{path_and_query}", agg.api_url());
    let (code, _, body) = https::get(&url, &agg.ca, &[]).await.unwrap();
    assert_eq!(code, 200, "{path_and_query}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_for_names(agg: &AggregatorProc, path: &str, want: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = names(&get(agg, path).await);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: got {got:?}, want {want:?}\n{}",
            agg.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn pod(name: &str, node: &str, app: &str) -> Value {
    json!({
        "metadata": {"namespace": "ns", "name": name, "labels": {"app": app, "tier": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_follow_the_api_and_outlive_it() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let api = FakeApiServer::start(d).await.unwrap();
    api.apply("pods", pod("pod-on-node-l", "node-l", "shop"));
    // A pod of another node must not be watched by this agent.
    api.apply("pods", pod("pod-elsewhere", "node-x", "shop"));
    api.apply(
        "nodes",
        json!({"metadata": {"name": "node-l", "labels": {
            "kubernetes.io/hostname": "node-l", "topology.kubernetes.io/zone": "z1"}}}),
    );
    api.apply(
        "nodes",
        json!({"metadata": {"name": "node-x", "labels": {"topology.kubernetes.io/zone": "z9"}}}),
    );
    let agg = start_aggregator(d, &[]).await.unwrap();
    let k = kubelet::start(FakeNode::one_pod("node-l"), "kt", d)
        .await
        .unwrap();
    let token = d.join("kubelet-token");
    std::fs::write(&token, "kt").unwrap();
    let kubeconfig = api.kubeconfig(d, "agent.kubeconfig").unwrap();
    let agent = start_agent(
        d,
        "node-l",
        &[
            k.agent_flags(&token),
            agg.agent_flags(None),
            vec![format!("--kubeconfig={}", kubeconfig.display())],
        ]
        .concat(),
    )
    .unwrap();

    let shop = format!("{V1}/namespaces/ns/pods?labelSelector=app%3Dshop");
    wait_for_names(&agg, &shop, &["pod-on-node-l"], Duration::from_secs(30)).await;
    let one = get(&agg, &format!("{V1}/namespaces/ns/pods/pod-on-node-l")).await;
    assert_eq!(
        one["metadata"]["labels"],
        json!({"app": "shop", "tier": "web"})
    );
    let zone = format!("{V1}/nodes?labelSelector=topology.kubernetes.io%2Fzone%3Dz1");
    wait_for_names(&agg, &zone, &["node-l"], Duration::from_secs(10)).await;
    let node = get(&agg, &format!("{V1}/nodes/node-l")).await;
    assert_eq!(
        node["metadata"]["labels"],
        json!({"kubernetes.io/hostname": "node-l", "topology.kubernetes.io/zone": "z1"})
    );

    // Only this node's pods (whole objects: the container statuses map
    // cgroups to pods) and only its Node (metadata only).
    let requests = api.requests();
    let pods_req = requests
        .iter()
        .find(|r| r.starts_with("GET /api/v1/pods?"))
        .unwrap_or_else(|| panic!("{requests:#?}"));
    assert!(
        pods_req.contains("fieldSelector=spec.nodeName%3Dnode-l"),
        "{pods_req}"
    );
    assert!(
        !pods_req.contains("as=PartialObjectMetadataList"),
        "{pods_req}"
    );
    let node_req = requests
        .iter()
        .find(|r| r.starts_with("GET /api/v1/nodes?"))
        .unwrap_or_else(|| panic!("{requests:#?}"));
    assert!(
        node_req.contains("fieldSelector=metadata.name%3Dnode-l"),
        "{node_req}"
    );
    assert!(
        node_req.contains("as=PartialObjectMetadataList"),
        "{node_req}"
    );

    // A label change reaches the API answers through the watch.
    api.apply("pods", pod("pod-on-node-l", "node-l", "checkout"));
    let checkout = format!("{V1}/namespaces/ns/pods?labelSelector=app%3Dcheckout");
    wait_for_names(&agg, &checkout, &["pod-on-node-l"], Duration::from_secs(10)).await;
    wait_for_names(&agg, &shop, &[], Duration::from_secs(5)).await;

    // The API goes away: reports continue with the last labels known.
    api.shut_down();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.log_text().contains("Kubernetes API unavailable") {
        assert!(
            Instant::now() < deadline,
            "outage not logged: {}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let before = get(&agg, &format!("{V1}/namespaces/ns/pods/pod-on-node-l")).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = get(&agg, &format!("{V1}/namespaces/ns/pods/pod-on-node-l")).await;
    assert_ne!(before["timestamp"], after["timestamp"], "reports stopped");
    assert_eq!(after["metadata"]["labels"]["app"], "checkout");
    assert_eq!(names(&get(&agg, &zone).await), vec!["node-l"]);
}
