//! `--source=auto`: while the kubelet's stats fail, the agent serves the
//! node from cgroups; when the kubelet recovers, it switches back. The two
//! sources are told apart by giving them different memory figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use metrics_e2e::wait::eventually;
use std::time::Duration;

use metrics_e2e::apiserver::FakeApiServer;
use metrics_e2e::cgroupfs::{Driver, FakeCgroups, Layout, Qos, Runtime};
use metrics_e2e::kubelet::{self, FakeContainer, FakeNode, FakePod};
use metrics_e2e::procs::{start_agent, start_aggregator, AggregatorProc};
use metrics_e2e::{https, quantity};

const KUBELET_MEM: u64 = 3 << 30;
const CGROUP_MEM: u64 = 5 << 30;

async fn node_memory(agg: &AggregatorProc) -> Option<u64> {
    let url = format!(
        "{}/apis/metrics.k8s.io/v1beta1/nodes/auto-node",
        agg.api_url()
    );
    let (code, _, body) = https::get(&url, &agg.ca, &[]).await.ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    quantity::bytes(v["usage"]["memory"].as_str()?)
}

async fn wait_for_memory(agg: &AggregatorProc, want: u64) -> bool {
    eventually(Duration::from_secs(15), async || {
        node_memory(agg).await == Some(want)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_cgroups_and_returns() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pod = FakePod {
        uid: kubelet::pod_uid("ns/web"),
        namespace: "ns".into(),
        name: "web".into(),
        labels: Default::default(),
        containers: vec![FakeContainer {
            name: "app".into(),
            id: kubelet::container_id("web/app"),
            cores: 0.1,
            memory: 64 << 20,
        }],
    };
    let spec = FakeNode {
        cores: 0.5,
        memory: KUBELET_MEM,
        pods: vec![pod.clone()],
        extra_lines: vec![],
    };
    let k = kubelet::start(spec.clone(), "tok", dir.path())
        .await
        .unwrap();
    k.set_failing(true);
    let tree = FakeCgroups::new(
        &dir.path().join("cg"),
        Layout::V2,
        Driver::Systemd,
        Runtime::Containerd,
    );
    tree.set_node(1_000_000_000_000, CGROUP_MEM);
    let pod_rel = tree.pod_rel(Qos::Burstable, &pod.uid);
    tree.set(
        &tree.container_rel(&pod_rel, &pod.containers[0].id),
        9_000_000_000,
        64 << 20,
    );

    let token = dir.path().join("token");
    std::fs::write(&token, "tok").unwrap();
    let api = FakeApiServer::start(dir.path()).await.unwrap();
    for pod in kubelet::api_pods(&spec, "auto-node", kubelet::now_secs()) {
        api.apply("pods", pod);
    }
    let kubeconfig = api.kubeconfig(dir.path(), "agent.kubeconfig").unwrap();
    let agg = start_aggregator(dir.path(), &[]).await.unwrap();
    let agent = start_agent(
        dir.path(),
        "auto-node",
        &[
            k.agent_flags(&token),
            vec![
                "--source=auto".into(),
                format!("--cgroup-root={}", tree.root.display()),
                format!("--aggregator={}", agg.grpc_url()),
                format!("--aggregator-ca-file={}", agg.ca.display()),
                "--metric-resolution=1s".into(),
                format!("--kubeconfig={}", kubeconfig.display()),
            ],
        ]
        .concat(),
    )
    .unwrap();

    assert!(
        wait_for_memory(&agg, CGROUP_MEM).await,
        "cgroup figures while the kubelet fails: {}",
        agent.log_text()
    );
    let pods_url = format!(
        "{}/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods/web",
        agg.api_url()
    );
    let mapped = eventually(Duration::from_secs(15), async || {
        matches!(https::get(&pods_url, &agg.ca, &[]).await, Ok((code, _, _)) if code == 200)
    })
    .await;
    assert!(
        mapped,
        "the pod is mapped through the API watch and served from its cgroup: {}",
        agent.log_text()
    );

    k.set_failing(false);
    assert!(
        wait_for_memory(&agg, KUBELET_MEM).await,
        "kubelet figures after recovery: {}",
        agent.log_text()
    );

    // With a healthy kubelet, windows are the kubelet's own sample times
    // apart, as with --source=kubelet: on a whole-second grid they are
    // whole seconds, never the agent's scrape times (1.013s, 0.987s).
    k.set_timestamp_grid_ms(1000);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let node_url = format!(
        "{}/apis/metrics.k8s.io/v1beta1/nodes/auto-node",
        agg.api_url()
    );
    let mut windows = Vec::new();
    for _ in 0..6 {
        for url in [&node_url, &pods_url] {
            let (_, _, body) = https::get(url, &agg.ca, &[]).await.unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            windows.push(v["window"].as_str().unwrap_or_default().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(
        windows
            .iter()
            .all(|w| w.ends_with('s') && !w.contains('.') && !w.ends_with("ms")),
        "windows: {windows:?}"
    );

    let log = agent.log_text();
    assert_eq!(
        log.matches("reading cgroups until it recovers").count(),
        1,
        "switch logged once: {log}"
    );
    assert_eq!(
        log.matches("switching back from cgroups").count(),
        1,
        "return logged once: {log}"
    );
}
