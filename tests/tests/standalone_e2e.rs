//! The README's first command: `metrics-aggregator --standalone` serves
//! this host's node metrics on 127.0.0.1 and prints how to query them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use metrics_e2e::cgroupfs::{Driver, FakeCgroups, Layout, Runtime};
use metrics_e2e::kubelet::{self, FakeContainer, FakeNode, FakePod};
use metrics_e2e::procs::{binary, kubectl};
use metrics_e2e::quantity;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `--standalone` with `extra` flags in `dir`; returns the process
/// and the kubeconfig path it printed.
async fn start_standalone(dir: &Path, extra: &[String]) -> (tokio::process::Child, PathBuf) {
    let mut child = tokio::process::Command::new(binary("metrics-aggregator"))
        .args([
            "--standalone",
            "--metric-resolution=1s",
            "--node-name=this-host",
        ])
        .args(extra)
        .env_remove("NODE_IP")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let kubeconfig: String = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.trim().strip_prefix("kubectl --kubeconfig ") {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("standalone exited without printing the kubectl command");
    })
    .await
    .expect("standalone printed its command");
    // Keep draining stdout so the server never writes into a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, PathBuf::from(kubeconfig))
}

/// GETs `path` through kubectl until it succeeds (at most ~10 s).
async fn raw_until_ok(
    kubeconfig: &Path,
    path: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = String::new();
    for _ in 0..40 {
        let out = kubectl(kubeconfig, &["get", "--raw", path]).await;
        if out.success {
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            if ready(&v) {
                return v;
            }
            last = out.stdout;
        } else {
            last = out.stderr;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{path} never ready: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_serves_this_host() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, kubeconfig) = start_standalone(dir.path(), &[]).await;
    assert!(kubeconfig.starts_with(dir.path().canonicalize().unwrap()));

    let v = raw_until_ok(
        &kubeconfig,
        "/apis/metrics.k8s.io/v1beta1/nodes/this-host",
        |_| true,
    )
    .await;
    assert_eq!(v["metadata"]["name"], "this-host");
    let mem = quantity::parse(v["usage"]["memory"].as_str().unwrap()).unwrap();
    let total = procfs_mem_total();
    assert!(mem > 0.0 && mem < total, "working set {mem} of {total}");
    let cpu = quantity::parse(v["usage"]["cpu"].as_str().unwrap()).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(
        (0.0..=cores * 1.05).contains(&cpu),
        "cpu {cpu} cores on {cores}"
    );

    // The real `kubectl top node`: it reads the core API's Nodes (this
    // host, with its capacity) beside the metrics and prints percentages.
    let out = kubectl(&kubeconfig, &["top", "node"]).await;
    assert!(out.success, "{}", out.stderr);
    let row: Vec<&str> = out
        .stdout
        .lines()
        .find(|l| l.starts_with("this-host "))
        .unwrap_or_else(|| panic!("no row for this-host:\n{}", out.stdout))
        .split_whitespace()
        .collect();
    let memory_pct: f64 = row[4].trim_end_matches('%').parse().unwrap();
    let want = mem / total * 100.0;
    assert!(
        (memory_pct - want).abs() < 5.0,
        "MEMORY% {memory_pct} for {mem} of {total}: {row:?}"
    );
    assert!(row[2].ends_with('%'), "{row:?}");
    let out = kubectl(&kubeconfig, &["get", "nodes", "-o", "json"]).await;
    assert!(out.success, "{}", out.stderr);
    let nodes: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(nodes["items"][0]["metadata"]["name"], "this-host");
    assert_eq!(
        quantity::parse(
            nodes["items"][0]["status"]["allocatable"]["cpu"]
                .as_str()
                .unwrap()
        ),
        Some(cores)
    );
    let out = kubectl(&kubeconfig, &["get", "node", "no-such-node"]).await;
    assert!(!out.success);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
}

/// MemTotal in bytes, read independently of the code under test.
fn procfs_mem_total() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_on_a_node_shows_its_pods() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let node = FakeNode {
        cores: 0.5,
        memory: 1 << 31,
        pods: vec![FakePod {
            uid: kubelet::pod_uid("kube-system/coredns"),
            namespace: "kube-system".into(),
            name: "coredns".into(),
            labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
            containers: vec![FakeContainer {
                name: "coredns".into(),
                id: kubelet::container_id("coredns"),
                cores: 0.02,
                memory: 12_533_760,
            }],
        }],
        extra_lines: vec![],
    };
    let k = kubelet::start(node, "tok", dir.path()).await.unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok").unwrap();
    let tree = FakeCgroups::new(
        &dir.path().join("cg"),
        Layout::V2,
        Driver::Systemd,
        Runtime::Containerd,
    );
    let (_child, kubeconfig) = start_standalone(
        dir.path(),
        &[
            k.agent_flags(&token),
            vec![format!("--cgroup-root={}", tree.root.display())],
        ]
        .concat(),
    )
    .await;
    let pods = raw_until_ok(&kubeconfig, "/apis/metrics.k8s.io/v1beta1/pods", |v| {
        v["items"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    assert_eq!(pods["items"][0]["metadata"]["name"], "coredns");
    assert_eq!(
        pods["items"][0]["metadata"]["labels"]["k8s-app"],
        "kube-dns"
    );
    assert_eq!(
        pods["items"][0]["containers"][0]["usage"]["memory"],
        "12240Ki"
    );

    // The real `kubectl top pod`, through the core API's Pods.
    let out = kubectl(&kubeconfig, &["top", "pod", "-n", "kube-system"]).await;
    assert!(out.success, "{}", out.stderr);
    let row: Vec<&str> = out
        .stdout
        .lines()
        .find(|l| l.starts_with("coredns "))
        .unwrap_or_else(|| panic!("no row for coredns:\n{}", out.stdout))
        .split_whitespace()
        .collect();
    assert_eq!(row[2], "11Mi", "{row:?}");
    // Across namespaces too.
    let out = kubectl(&kubeconfig, &["top", "pod", "-A"]).await;
    assert!(out.success, "{}", out.stderr);
    let row: Vec<&str> = out
        .stdout
        .lines()
        .find(|l| l.starts_with("kube-system "))
        .unwrap_or_else(|| panic!("no row for kube-system:\n{}", out.stdout))
        .split_whitespace()
        .collect();
    assert_eq!((row[1], row[3]), ("coredns", "11Mi"), "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_reads_the_cgroup_tree_without_a_kubelet() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FakeCgroups::new(
        &dir.path().join("cg"),
        Layout::V1,
        Driver::Cgroupfs,
        Runtime::Docker,
    );
    tree.set_node(10_000_000_000, 3 << 30);
    // The host's /proc, with 3 GiB of its 4 GiB swap free.
    let proc_root = dir.path().join("proc");
    std::fs::create_dir_all(&proc_root).unwrap();
    for f in ["stat", "cpuinfo"] {
        std::fs::copy(Path::new("/proc").join(f), proc_root.join(f)).unwrap();
    }
    let meminfo: String = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .map(|l| match l.split(':').next() {
            Some("SwapTotal") => "SwapTotal:       4194304 kB\n".to_owned(),
            Some("SwapFree") => "SwapFree:        3145728 kB\n".to_owned(),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(proc_root.join("meminfo"), meminfo).unwrap();
    let (_child, kubeconfig) = start_standalone(
        dir.path(),
        &[
            format!("--cgroup-root={}", tree.root.display()),
            format!("--proc-root={}", proc_root.display()),
            "--extra-resources=swap".to_owned(),
        ],
    )
    .await;
    // The counter does not move, so usage appears once two samples exist.
    let node = raw_until_ok(
        &kubeconfig,
        "/apis/metrics.k8s.io/v1beta1/nodes/this-host",
        |_| true,
    )
    .await;
    assert_eq!(
        node["usage"]["memory"], "3Gi",
        "the tree's root working set, not /proc's"
    );
    assert_eq!(node["usage"]["cpu"], "0");
    assert_eq!(
        node["usage"]["swap"], "1Gi",
        "the node's swap in use is the host's SwapTotal - SwapFree"
    );
}
