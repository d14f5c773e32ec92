//! The kubelet and cgroup sources, fed the same underlying numbers, give
//! the same metrics.k8s.io objects: one fake node whose kubelet payload and
//! cgroup tree advance in real time at the same rates, read by two agents
//! (one per source) that report to two aggregators. The kubelet agent takes
//! pods from the kubelet's `/pods`; the cgroup agent has no kubelet and maps
//! cgroups to pods through its watch on a stand-in API server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use metrics_e2e::apiserver::FakeApiServer;
use metrics_e2e::cgroupfs::{Driver, FakeCgroups, Layout, Qos, Runtime};
use metrics_e2e::kubelet::{self, now_secs, FakeContainer, FakeNode, FakePod};
use metrics_e2e::procs::{start_agent, start_aggregator, AggregatorProc};
use metrics_e2e::{https, quantity};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn node() -> FakeNode {
    let c = |name: &str, cores: f64, memory: u64| FakeContainer {
        name: name.into(),
        id: kubelet::container_id(name),
        cores,
        memory,
    };
    let pod = |ns: &str, name: &str, containers| FakePod {
        uid: kubelet::pod_uid(&format!("{ns}/{name}")),
        namespace: ns.into(),
        name: name.into(),
        labels: [("app".to_string(), name.to_string())].into(),
        containers,
    };
    FakeNode {
        cores: 1.25,
        memory: 2048 * MIB,
        pods: vec![
            pod(
                "ns-x",
                "web",
                vec![c("app", 0.3, 64 * MIB), c("side", 0.05, 16 * MIB + 4096)],
            ),
            pod("ns-y", "db", vec![c("pg", 0.2, 256 * MIB + 123)]),
        ],
        extra_lines: vec![],
    }
}

/// Writes the counters the fake kubelet would serve at `now`.
fn write_tree(tree: &FakeCgroups, node: &FakeNode, t0: f64, now: f64) {
    let elapsed = now - t0;
    tree.set_node(((5000.0 + node.cores * elapsed) * 1e9) as u64, node.memory);
    for p in &node.pods {
        let pod = tree.pod_rel(Qos::Burstable, &p.uid);
        for c in &p.containers {
            tree.set(
                &tree.container_rel(&pod, &c.id),
                ((1000.0 + c.cores * elapsed) * 1e9) as u64,
                c.memory,
            );
        }
    }
}

async fn get(agg: &AggregatorProc, path: &str) -> Value {
    let url = format!("{}/apis/metrics.k8s.io/v1beta1/{path}", agg.api_url());
    let (code, _, body) = https::get(&url, &agg.ca, &[]).await.unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Splits an object into (comparable skeleton, cpu values): times and
/// CPU strings removed, everything else (names, labels, memory, order) kept.
fn skeleton(v: &Value, cpus: &mut Vec<f64>) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "creationTimestamp" | "timestamp" | "window")
                })
                .map(|(k, v)| {
                    if k == "cpu" {
                        cpus.push(quantity::parse(v.as_str().unwrap()).unwrap());
                        (k.clone(), Value::Null)
                    } else {
                        (k.clone(), skeleton(v, cpus))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| skeleton(v, cpus)).collect()),
        other => other.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_and_cgroup_sources_serve_the_same_objects() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let spec = node();
    let t0 = now_secs();
    let k = kubelet::start_at(spec.clone(), "tok", dir.path(), t0)
        .await
        .unwrap();
    let tree = FakeCgroups::new(
        &dir.path().join("cg"),
        Layout::V2,
        Driver::Systemd,
        Runtime::Containerd,
    );
    write_tree(&tree, &spec, t0, now_secs());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let updater = {
        let (tree, spec, stop) = (tree.clone(), spec.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                write_tree(&tree, &spec, t0, now_secs());
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let token = dir.path().join("token");
    std::fs::write(&token, "tok").unwrap();
    for sub in ["a1", "a2"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let agg_kubelet = start_aggregator(&dir.path().join("a1"), &[]).await.unwrap();
    let agg_cgroup = start_aggregator(&dir.path().join("a2"), &[]).await.unwrap();
    let common = |agg: &AggregatorProc| {
        [
            k.agent_flags(&token),
            vec![
                format!("--aggregator={}", agg.grpc_url()),
                format!("--aggregator-ca-file={}", agg.ca.display()),
                // Two-second windows: the tree's writer thread can lag by a few
                // ms on a loaded machine, which a longer window dilutes.
                "--metric-resolution=2s".into(),
            ],
        ]
        .concat()
    };
    let mut a1 = common(&agg_kubelet);
    a1.extend(["--source=kubelet".into(), "--kubelet-pod-labels".into()]);
    // The cgroup agent has no kubelet at all: its pods come from its own
    // watch on the API.
    let api = FakeApiServer::start(dir.path()).await.unwrap();
    for pod in kubelet::api_pods(&spec, "shared-node", t0) {
        api.apply("pods", pod);
    }
    let kubeconfig = api.kubeconfig(dir.path(), "agent.kubeconfig").unwrap();
    let a2 = vec![
        format!("--aggregator={}", agg_cgroup.grpc_url()),
        format!("--aggregator-ca-file={}", agg_cgroup.ca.display()),
        "--metric-resolution=2s".into(),
        "--source=cgroup".into(),
        format!("--cgroup-root={}", tree.root.display()),
        format!("--kubeconfig={}", kubeconfig.display()),
    ];
    let _agents = [
        start_agent(&dir.path().join("a1"), "shared-node", &a1).unwrap(),
        start_agent(&dir.path().join("a2"), "shared-node", &a2).unwrap(),
    ];

    // Stop the writer even when an assertion below fails.
    struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _guard = StopOnDrop(stop.clone());
    let mut ready = false;
    for _ in 0..120 {
        let n1 = get(&agg_kubelet, "pods").await["items"]
            .as_array()
            .map_or(0, Vec::len);
        let n2 = get(&agg_cgroup, "pods").await["items"]
            .as_array()
            .map_or(0, Vec::len);
        if n1 == 2 && n2 == 2 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        ready,
        "both sources should serve both pods:\n{}\n{}",
        agg_kubelet.proc.log_text(),
        agg_cgroup.proc.log_text()
    );

    for path in ["nodes", "pods", "namespaces/ns-x/pods/web"] {
        let (mut c1, mut c2) = (Vec::new(), Vec::new());
        let s1 = skeleton(&get(&agg_kubelet, path).await, &mut c1);
        let s2 = skeleton(&get(&agg_cgroup, path).await, &mut c2);
        assert_eq!(s1, s2, "{path}: same objects, labels and memory");
        assert_eq!(c1.len(), c2.len());
        // Each source is within 1% of the true rate (the kubelet's exactly,
        // the tree's up to its writer's lag), so they agree within 2%.
        for (a, b) in c1.iter().zip(&c2) {
            assert!(
                (a - b).abs() <= a.max(*b) * 0.02,
                "{path}: cpu {a} (kubelet) vs {b} (cgroup)"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = updater.join();
}
