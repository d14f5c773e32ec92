//! `--source=cgroup` with no kubelet at all: the agent maps cgroups to pods
//! through its own watch on the pods of its node (a stand-in API server
//! speaking the real list/watch protocol), follows pods as they come and
//! go, and keeps the last pods known while the API is away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;

use metrics_e2e::apiserver::FakeApiServer;
use metrics_e2e::cgroupfs::{Driver, FakeCgroups, Layout, Qos, Runtime};
use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeContainer, FakeNode, FakePod};
use metrics_e2e::procs::{start_agent, start_aggregator, AggregatorProc};
use metrics_e2e::wait::eventually;

const NODE: &str = "cg-node";

fn pod(name: &str, app: &str) -> FakePod {
    FakePod {
        uid: kubelet::pod_uid(&format!("ns/{name}")),
        namespace: "ns".into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        containers: vec![FakeContainer {
            name: "app".into(),
            id: kubelet::container_id(&format!("{name}/app")),
            cores: 0.1,
            memory: 64 << 20,
        }],
    }
}

/// The pods the aggregator serves for the node: name → (app label, sample time).
async fn served(agg: &AggregatorProc) -> Vec<(String, String, String)> {
    let url = format!(
        "{}/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods",
        agg.api_url()
    );
    let Ok((code, _, body)) = https::get(&url, &agg.ca, &[]).await else {
        return vec![];
    };
    if code != 200 {
        return vec![];
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&i["metadata"]["name"]),
                s(&i["metadata"]["labels"]["app"]),
                s(&i["timestamp"]),
            )
        })
        .collect()
}

async fn wait_for(
    agg: &AggregatorProc,
    want: &[(&str, &str)],
    what: &str,
    log: &dyn Fn() -> String,
) {
    let ok = eventually(Duration::from_secs(30), async || {
        let got: Vec<(String, String)> = served(agg)
            .await
            .into_iter()
            .map(|(n, a, _)| (n, a))
            .collect();
        got.iter()
            .map(|(n, a)| (n.as_str(), a.as_str()))
            .eq(want.iter().copied())
    })
    .await;
    assert!(ok, "{what}: got {:?}\n{}", served(agg).await, log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroups_map_to_pods_through_the_api_without_a_kubelet() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (web, db) = (pod("web", "shop"), pod("db", "store"));
    let tree = FakeCgroups::new(
        &d.join("cg"),
        Layout::V2,
        Driver::Systemd,
        Runtime::Containerd,
    );
    tree.set_node(1_000_000_000_000, 2 << 30);
    for p in [&web, &db] {
        let rel = tree.pod_rel(Qos::Burstable, &p.uid);
        tree.set(
            &tree.container_rel(&rel, &p.containers[0].id),
            9_000_000_000,
            64 << 20,
        );
    }
    // Only web is known to the API at first; db's cgroup is unmapped.
    let api = FakeApiServer::start(d).await.unwrap();
    let node = |pods: Vec<FakePod>| FakeNode {
        cores: 0.5,
        memory: 2 << 30,
        pods,
        extra_lines: vec![],
    };
    let t0 = kubelet::now_secs();
    for o in kubelet::api_pods(&node(vec![web.clone()]), NODE, t0) {
        api.apply("pods", o);
    }
    // A pod of another node with db's name must not be watched here.
    let mut elsewhere = kubelet::api_pods(&node(vec![db.clone()]), "other-node", t0);
    elsewhere[0]["metadata"]["namespace"] = "other".into();
    api.apply("pods", elsewhere.remove(0));

    let agg = start_aggregator(d, &[]).await.unwrap();
    let kubeconfig = api.kubeconfig(d, "agent.kubeconfig").unwrap();
    let agent = start_agent(
        d,
        NODE,
        &[
            "--source=cgroup".into(),
            format!("--cgroup-root={}", tree.root.display()),
            format!("--aggregator={}", agg.grpc_url()),
            format!("--aggregator-ca-file={}", agg.ca.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            "--metric-resolution=1s".into(),
        ],
    )
    .unwrap();
    let log = || agent.log_text();

    wait_for(
        &agg,
        &[("web", "shop")],
        "web mapped and labelled from the API",
        &log,
    )
    .await;
    // Rates need two samples; keep the counters moving.
    let bump = |n: u64| {
        for p in [&web, &db] {
            let rel = tree.pod_rel(Qos::Burstable, &p.uid);
            tree.set(
                &tree.container_rel(&rel, &p.containers[0].id),
                9_000_000_000 + n * 100_000_000,
                64 << 20,
            );
        }
    };

    // db shows up in the API: its cgroup is mapped from the next read on.
    for o in kubelet::api_pods(&node(vec![db.clone()]), NODE, t0) {
        api.apply("pods", o);
    }
    bump(1);
    wait_for(
        &agg,
        &[("db", "store"), ("web", "shop")],
        "db mapped once the watch delivers it",
        &log,
    )
    .await;

    // web is deleted: its cgroup is no longer a pod of this node.
    api.delete("pods", "ns", "web");
    bump(2);
    wait_for(&agg, &[("db", "store")], "web gone with its pod", &log).await;

    // The API goes away: reports go on with the last pods known.
    let before = served(&agg).await;
    api.shut_down();
    let mut n = 3;
    let fresh = eventually(Duration::from_secs(30), async || {
        n += 1;
        bump(n);
        let now = served(&agg).await;
        now.len() == 1 && now[0].0 == "db" && now[0].2 > before[0].2
    })
    .await;
    assert!(fresh, "db still reported while the API is away\n{}", log());

    let text = log();
    assert!(
        !text.contains("kubelet"),
        "no kubelet was ever needed:\n{text}"
    );
}
