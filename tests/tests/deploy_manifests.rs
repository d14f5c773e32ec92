//! The kustomize base in `deploy/` renders with the real kubectl, every flag
//! its containers pass exists in the binaries, and the pieces that must
//! agree (token audience, peers Service, ServiceAccounts, APIService) do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use metrics_e2e::deploy::kustomize;
use metrics_e2e::procs::binary;

fn render() -> String {
    kustomize("base")
}

/// The rendered document of `kind` named `name`.
fn doc<'a>(all: &'a str, kind: &str, name: &str) -> &'a str {
    all.split("\n---\n")
        .find(|d| {
            d.lines().any(|l| l == format!("kind: {kind}"))
                && d.lines().any(|l| l.trim() == format!("name: {name}"))
        })
        .unwrap_or_else(|| panic!("no {kind} {name} in\n{all}"))
}

/// `--flag=value` arguments of the document's containers.
fn args(d: &str) -> Vec<(String, String)> {
    d.lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|a| match a.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (a.to_owned(), String::new()),
        })
        .collect()
}

fn help(bin: &str) -> String {
    let out = Command::new(binary(bin)).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn manifests_render_and_agree_with_the_binaries() {
    let all = render();
    let sts = doc(&all, "StatefulSet", "metrics-aggregator");
    let ds = doc(&all, "DaemonSet", "metrics-agent");
    for (d, bin) in [(sts, "metrics-aggregator"), (ds, "metrics-agent")] {
        let text = help(bin);
        let flags = args(d);
        assert!(!flags.is_empty(), "{d}");
        for (flag, _) in &flags {
            assert!(text.contains(&format!("--{flag}")), "{bin} has no --{flag}");
        }
    }
    let agg: std::collections::HashMap<_, _> = args(sts).into_iter().collect();
    let agent: std::collections::HashMap<_, _> = args(ds).into_iter().collect();

    // Both projected tokens carry the audience the aggregator checks.
    let audience = &agg["agent-token-audience"];
    for d in [sts, ds] {
        assert!(d.contains(&format!("audience: {audience}")), "{d}");
    }
    // The peers Service is the StatefulSet's, headless, publishing
    // not-ready replicas, with the port name membership looks for.
    let peers = doc(&all, "Service", &agg["peers-service"]);
    assert!(sts.contains(&format!("serviceName: {}", agg["peers-service"])));
    assert!(peers.contains("clusterIP: None"), "{peers}");
    assert!(peers.contains("publishNotReadyAddresses: true"), "{peers}");
    assert!(peers.contains("name: grpc"), "{peers}");
    // Agents reach the aggregator Service's gRPC port.
    assert!(
        agent["aggregator"].starts_with("https://metrics-aggregator.kube-system.svc:10251"),
        "{}",
        agent["aggregator"]
    );
    let svc = doc(&all, "Service", "metrics-aggregator");
    assert!(svc.contains("port: 10251"), "{svc}");
    // The ServiceAccounts are the ones the aggregator accepts by default.
    assert!(ds.contains("serviceAccountName: metrics-agent"));
    assert!(sts.contains("serviceAccountName: metrics-aggregator"));
    let agg_help = help("metrics-aggregator");
    assert!(
        agg_help.contains("[default: kube-system/metrics-agent]"),
        "{agg_help}"
    );
    assert!(
        agg_help.contains("[default: kube-system/metrics-aggregator]"),
        "{agg_help}"
    );
    // The APIService points at the aggregator Service.
    let api = doc(&all, "APIService", "v1beta1.metrics.k8s.io");
    assert!(api.contains("name: metrics-aggregator"), "{api}");
    assert!(api.contains("namespace: kube-system"), "{api}");
    // The agent reads its kubelet's metrics and nothing else of it:
    // `nodes/proxy` would also reach the kubelet's exec and attach.
    let role = doc(&all, "ClusterRole", "metrics-agent");
    assert!(role.contains("nodes/metrics"), "{role}");
    assert!(!all.contains("nodes/proxy"), "{all}");
    // The aggregator can delegate: TokenReview/SAR and the auth ConfigMap.
    assert!(all.contains("name: system:auth-delegator"));
    assert!(all.contains("name: extension-apiserver-authentication-reader"));

    // The aggregator accepts the whole argument list: it gets past flag
    // parsing (exit 2), sees it runs in a cluster with no certificate
    // files, so goes for its own PKI through the in-cluster API, and stops
    // there (exit 64: no ServiceAccount token outside a Pod) before any
    // network use.
    let argv: Vec<String> = args(sts)
        .into_iter()
        .map(|(k, v)| format!("--{k}={v}"))
        .collect();
    let out = Command::new(binary("metrics-aggregator"))
        .args(&argv)
        .env("POD_NAME", "metrics-aggregator-0")
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("Kubernetes client"), "{stderr}");
}

/// The Dockerfile builds, from the locked sources, one image per binary the
/// manifests name, running as the uid they ask for, and the build context
/// leaves out build output and keys.
#[test]
fn dockerfile_builds_the_images_the_manifests_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    assert!(
        file.contains("cargo build --profile dist --locked"),
        "{file}"
    );
    // The profile it names is the workspace's.
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(cargo.contains("\n[profile.dist]\n"), "{cargo}");
    let all = render();
    for (kind, name) in [
        ("StatefulSet", "metrics-aggregator"),
        ("DaemonSet", "metrics-agent"),
    ] {
        let d = doc(&all, kind, name);
        // Each manifest runs the image of its binary, as the uid the image
        // sets.
        assert!(d.contains(&format!("/{name}:")), "{d}");
        assert!(d.contains("runAsUser: 65534"), "{d}");
        let stage = file
            .split("\nFROM ")
            .find(|s| s.starts_with(&format!("runtime AS {name}\n")))
            .unwrap_or_else(|| panic!("no stage {name} in\n{file}"));
        assert!(
            stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{name}\"]")),
            "{stage}"
        );
        // The binary is one the workspace builds.
        assert!(binary(name).exists(), "{name}");
    }
    assert!(file.contains("USER 65534:65534"), "{file}");
    // The aggregator from the host build, the agent from its own (linked
    // statically: `static_agent_e2e.rs` runs that build).
    assert!(
        file.contains(
            " -t /out target/dist/metrics-aggregator \"target/$host/dist/metrics-agent\""
        ),
        "{file}"
    );
    assert!(
        file.contains("cargo build --profile dist --locked -p metrics-agent --target \"$host\""),
        "{file}"
    );
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for line in ["target/", ".git/", "**/*.key"] {
        assert!(ignore.lines().any(|l| l == line), "{line} in {ignore}");
    }
}
