//! The README's first command: `metrics-aggregator --standalone` serves
//! this host's node metrics on 127.0.0.1 and prints how to query them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use metrics_e2e::procs::{binary, kubectl};
use metrics_e2e::quantity;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_serves_this_host() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(binary("metrics-aggregator"))
        .args([
            "--standalone",
            "--metric-resolution=1s",
            "--node-name=this-host",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let kubeconfig = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.trim().strip_prefix("kubectl --kubeconfig ") {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("standalone exited without printing the kubectl command");
    })
    .await
    .expect("standalone printed its command");
    assert!(std::path::Path::new(&kubeconfig).starts_with(dir.path().canonicalize().unwrap()));

    let mut last = String::new();
    for _ in 0..40 {
        let out = kubectl(
            std::path::Path::new(&kubeconfig),
            &[
                "get",
                "--raw",
                "/apis/metrics.k8s.io/v1beta1/nodes/this-host",
            ],
        )
        .await;
        if out.success {
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
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
            return;
        }
        last = out.stderr;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no node metrics from standalone: {last}");
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
