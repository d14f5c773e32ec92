//! The agent as the image ships it (`deploy/Dockerfile`): linked statically
//! and at a fixed address, then started as a pod runs it (no kubeconfig:
//! the service-account files at their in-cluster path, the API's address
//! in `KUBERNETES_SERVICE_HOST`), reaching its aggregator by a host name
//! (the C library's own `/etc/hosts` lookup, linked in). It must serve its
//! node's pods with the labels its pod watch read.
//!
//! Builds that agent once (`cargo build --target <host>` with the image's
//! flags, under `target/<host>/`). Starting it in a mount namespace of its
//! own needs root and util-linux's `unshare`: elsewhere the test says why
//! it did not run and passes, and under `CI=true` it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use metrics_e2e::apiserver::FakeApiServer;
use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_e2e::procs::{start_agent_in_cluster, start_aggregator, InCluster};

/// The agent's link flags in the image; the Dockerfile must say the same.
const SHIPPED_RUSTFLAGS: &str = "-C target-feature=+crt-static -C relocation-model=static";

const V1: &str = "/apis/metrics.k8s.io/v1beta1";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn host_triple() -> String {
    let out = std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("running rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names its host")
        .to_owned()
}

/// Builds the agent with the image's flags; returns its path.
fn build_shipped_agent() -> PathBuf {
    let host = host_triple();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "-q",
            "--locked",
            "-p",
            "metrics-agent",
            "--bin",
            "metrics-agent",
        ])
        .args(["--target", &host])
        .env("RUSTFLAGS", SHIPPED_RUSTFLAGS)
        .current_dir(workspace())
        .status()
        .expect("running cargo");
    assert!(status.success(), "building the shipped agent: {status}");
    // target/debug/deps/<this test> → target
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .find(|d| {
            d.file_name()
                .is_some_and(|n| n == "debug" || n == "release")
        })
        .and_then(Path::parent)
        .map_or_else(|| workspace().join("target"), Path::to_path_buf);
    target.join(host).join("debug").join("metrics-agent")
}

/// ELF type and program header types of `file`.
fn elf_kind(file: &Path) -> (u16, Vec<u32>) {
    let b = std::fs::read(file).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{}", file.display());
    assert_eq!(b[4], 2, "64-bit");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let e_type = u16_at(16);
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    let types = (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
        })
        .collect();
    (e_type, types)
}

/// Why this machine cannot start an agent in a mount namespace, if so.
fn cannot_unshare() -> Option<String> {
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run")
        .output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Some(format!("unshare: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_as_shipped_serves_its_node_from_a_pod() {
    // The image builds the agent with the flags measured here.
    let dockerfile = std::fs::read_to_string(workspace().join("deploy/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("RUSTFLAGS=\"{SHIPPED_RUSTFLAGS}\"")),
        "{dockerfile}"
    );
    if let Some(why) = cannot_unshare() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must start the agent as a pod: {why}"
        );
        eprintln!("SKIPPED: cannot start a process in a mount namespace of its own: {why}");
        return;
    }
    metrics_proto::tls::install_crypto_provider();
    let agent_bin = build_shipped_agent();
    // Static (no program interpreter, nothing to link at start) and at a
    // fixed address (an executable, not a shared object).
    let (e_type, headers) = elf_kind(&agent_bin);
    const ET_EXEC: u16 = 2;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    assert_eq!(e_type, ET_EXEC, "{}", agent_bin.display());
    assert!(
        !headers.contains(&PT_INTERP) && !headers.contains(&PT_DYNAMIC),
        "{headers:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let api = FakeApiServer::start(d).await.unwrap();
    let node = FakeNode::one_pod("node-s");
    for mut p in kubelet::api_pods(&node, "node-s", kubelet::now_secs()) {
        p["metadata"]["labels"] = json!({"app": "static"});
        api.apply("pods", p);
    }
    let agg = start_aggregator(d, &[]).await.unwrap();
    let k = kubelet::start(node, "kt", d).await.unwrap();
    let token = d.join("kubelet-token");
    std::fs::write(&token, "kt").unwrap();
    let mut flags = k.agent_flags(&token);
    flags.extend([
        // By name: resolved through /etc/hosts by the static C library.
        format!("--aggregator=https://localhost:{}", agg.grpc.port()),
        format!("--aggregator-ca-file={}", agg.ca.display()),
        "--metric-resolution=1s".into(),
        "--source=kubelet".into(),
    ]);
    let in_cluster = InCluster {
        api: api.addr,
        ca_file: &api.ca_file,
        token: &api.admin_token,
        agent: &agent_bin,
    };
    let agent = start_agent_in_cluster(d, "node-s", &flags, &in_cluster).unwrap();

    let url = format!(
        "{}{V1}/namespaces/ns/pods?labelSelector=app%3Dstatic",
        agg.api_url()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, _, body) = https::get(&url, &agg.ca, &[]).await.unwrap();
        assert_eq!(code, 200, "{body}");
        let list: Value = serde_json::from_str(&body).unwrap();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if let Some(pod) = items.first() {
            assert_eq!(pod["metadata"]["name"], "pod-on-node-s", "{pod}");
            assert!(pod["containers"][0]["usage"]["cpu"].is_string(), "{pod}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shipped agent served no labelled pod: {body}\nagent log:\n{}\naggregator log:\n{}",
            agent.log_text(),
            agg.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // It watched its pods through the in-cluster address and token.
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("spec.nodeName%3Dnode-s")),
        "{requests:#?}"
    );
}
