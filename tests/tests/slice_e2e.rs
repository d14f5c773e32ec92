//! The whole path on 127.0.0.1: two fake kubelets → two real metrics-agent
//! processes → gRPC over TLS → one real metrics-aggregator → real kubectl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_e2e::fixtures::fixture;
use metrics_e2e::kubelet::{self, FakeContainer, FakeKubelet, FakeNode, FakePod};
use metrics_e2e::procs::{kubectl, start_agent, start_aggregator, AggregatorProc, Proc};
use metrics_e2e::{https, quantity};
use serde_json::Value;

const V1: &str = "/apis/metrics.k8s.io/v1beta1";
const MIB: u64 = 1024 * 1024;

fn c(name: &str, cores: f64, memory: u64) -> FakeContainer {
    FakeContainer {
        name: name.into(),
        id: kubelet::container_id(name),
        cores,
        memory,
    }
}

fn pod(ns: &str, name: &str, labels: &[(&str, &str)], containers: Vec<FakeContainer>) -> FakePod {
    FakePod {
        uid: kubelet::pod_uid(&format!("{ns}/{name}")),
        namespace: ns.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        containers,
    }
}

fn nodes() -> Vec<(&'static str, FakeNode)> {
    vec![
        (
            "node-a",
            FakeNode {
                cores: 1.5,
                memory: 2048 * MIB,
                extra_lines: vec![],
                pods: vec![
                    pod(
                        "team-a",
                        "web-1",
                        &[("app", "web"), ("tier", "frontend")],
                        // sidecar: a container listed after "app" in the payload but sorted by name
                        vec![
                            c("sidecar", 0.05, 20 * MIB + 123),
                            c("app", 0.25, 100 * MIB),
                        ],
                    ),
                    pod(
                        "team-a",
                        "db-0",
                        &[("app", "db")],
                        vec![c("postgres", 0.5, 512 * MIB)],
                    ),
                ],
            },
        ),
        (
            "node-b",
            FakeNode {
                cores: 0.75,
                memory: 1024 * MIB + 512,
                // Bad input must cost only itself.
                extra_lines: vec![
                    "container_cpu_usage_seconds_total{container=\"bad\",namespace=\"team-b\",pod=\"web-1\" 1".into(),
                    "container_memory_working_set_bytes{container=\"nolabels\"} 5".into(),
                    "container_cpu_usage_seconds_total{container=\"app\",namespace=\"team-b\",pod=\"nan\"} NaN".into(),
                ],
                pods: vec![
                    pod(
                        "team-b",
                        "web-1",
                        &[("app", "web"), ("canary", "true")],
                        vec![c("app", 0.125, 50 * MIB)],
                    ),
                    pod(
                        "kube-system",
                        "coredns-x",
                        &[("k8s-app", "kube-dns")],
                        vec![c("coredns", 0.01, 12_533_760)],
                    ),
                ],
            },
        ),
    ]
}

struct Cluster {
    agg: AggregatorProc,
    _agents: Vec<Proc>,
    _kubelets: Vec<FakeKubelet>,
    _dir: tempfile::TempDir,
    spec: Vec<(&'static str, FakeNode)>,
}

impl Cluster {
    async fn get(&self, path: &str) -> (u16, String) {
        let (status, _, body) =
            https::get(&format!("{}{path}", self.agg.api_url()), &self.agg.ca, &[])
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (status.as_u16(), body)
    }

    async fn raw(&self, path: &str) -> Value {
        let out = kubectl(&self.agg.kubeconfig, &["get", "--raw", path]).await;
        assert!(out.success, "kubectl get --raw {path}: {}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{path}: {e}: {}", out.stdout))
    }

    fn logs(&self) -> String {
        let mut s = self.agg.proc.log_text();
        for a in &self._agents {
            s.push_str(&a.log_text());
        }
        s
    }
}

async fn start_cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = start_aggregator(dir.path(), &[]).await.expect("aggregator");
    let spec = nodes();
    let mut kubelets = Vec::new();
    let mut agents = Vec::new();
    for (name, node) in &spec {
        let token = format!("token-{name}");
        let k = kubelet::start(node.clone(), &token, dir.path())
            .await
            .expect("kubelet");
        let token_file = dir.path().join(format!("{name}.token"));
        std::fs::write(&token_file, &token).expect("token");
        let args = [
            k.agent_flags(&token_file),
            vec![
                "--kubelet-pod-labels".into(),
                format!("--aggregator={}", agg.grpc_url()),
                format!("--aggregator-ca-file={}", agg.ca.display()),
                "--metric-resolution=1s".into(),
                "--metrics-bind-address=127.0.0.1:0".into(),
            ],
        ]
        .concat();
        agents.push(start_agent(dir.path(), name, &args).expect("agent"));
        kubelets.push(k);
    }
    // A third node whose kubelet refuses the agent's token: it must never
    // show up, and must not disturb the others.
    let broken = kubelet::start(nodes()[0].1.clone(), "right-token", dir.path())
        .await
        .expect("kubelet");
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "wrong-token").expect("token");
    let args = [
        broken.agent_flags(&wrong),
        vec![
            format!("--aggregator={}", agg.grpc_url()),
            format!("--aggregator-ca-file={}", agg.ca.display()),
            "--metric-resolution=1s".into(),
            "--metrics-bind-address=127.0.0.1:0".into(),
        ],
    ]
    .concat();
    agents.push(start_agent(dir.path(), "node-broken", &args).expect("agent"));
    kubelets.push(broken);
    Cluster {
        agg,
        _agents: agents,
        _kubelets: kubelets,
        _dir: dir,
        spec,
    }
}

/// Waits until every node and pod is served.
async fn wait_ready(cl: &Cluster) {
    let want_pods: usize = cl.spec.iter().map(|(_, n)| n.pods.len()).sum();
    for _ in 0..120 {
        let (s1, nodes) = cl.get(&format!("{V1}/nodes")).await;
        let (s2, pods) = cl.get(&format!("{V1}/pods")).await;
        if s1 == 200 && s2 == 200 {
            let n: Value = serde_json::from_str(&nodes).unwrap_or_default();
            let p: Value = serde_json::from_str(&pods).unwrap_or_default();
            let labelled = p["items"]
                .as_array()
                .is_some_and(|a| a.iter().all(|i| i["metadata"]["labels"].is_object()));
            if n["items"].as_array().map_or(0, Vec::len) == cl.spec.len()
                && p["items"].as_array().map_or(0, Vec::len) == want_pods
                && labelled
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("metrics never became complete; logs:\n{}", cl.logs());
}

fn assert_cpu(served: &Value, cores: f64, what: &str) {
    let q = served
        .as_str()
        .unwrap_or_else(|| panic!("{what}: cpu missing"));
    let got = quantity::parse(q).unwrap_or_else(|| panic!("{what}: bad quantity {q}"));
    let err = (got - cores).abs() / cores;
    assert!(
        err < 0.01,
        "{what}: cpu {q} = {got} cores, want {cores} within 1%"
    );
}

fn assert_mem(served: &Value, bytes: u64, what: &str) {
    let q = served
        .as_str()
        .unwrap_or_else(|| panic!("{what}: memory missing"));
    assert_eq!(quantity::bytes(q), Some(bytes), "{what}: memory {q}");
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    let m = &i["metadata"];
                    match m["namespace"].as_str() {
                        Some(ns) => format!("{ns}/{}", m["name"].as_str().unwrap_or("")),
                        None => m["name"].as_str().unwrap_or("").to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// metrics-server's resource list, with `watch` among the verbs.
fn with_watch(resource_list: &str) -> String {
    resource_list.replace(
        r#""verbs":["get","list"]"#,
        r#""verbs":["get","list","watch"]"#,
    )
}

fn status(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a Status: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_path_through_kubectl() {
    metrics_proto::tls::install_crypto_provider();
    let cl = start_cluster().await;
    wait_ready(&cl).await;

    // Discovery: byte-compatible resource list, and the group documents.
    let resources = kubectl(&cl.agg.kubeconfig, &["get", "--raw", V1]).await;
    assert!(resources.success, "{}", resources.stderr);
    let want = with_watch(&fixture(
        "metrics-api/discovery_apis_metrics.k8s.io_v1beta1.json",
    ));
    assert_eq!(resources.stdout.trim_end(), want.trim_end());
    let apis = cl.raw("/apis").await;
    assert_eq!(apis["groups"][0]["name"], "metrics.k8s.io");
    assert_eq!(
        cl.raw("/apis/metrics.k8s.io").await["preferredVersion"]["version"],
        "v1beta1"
    );

    // Nodes: sorted by name, rates within 1%, memory exact.
    let list = cl.raw(&format!("{V1}/nodes")).await;
    assert_eq!(list["kind"], "NodeMetricsList");
    assert_eq!(names(&list), ["node-a", "node-b"]);
    for (i, (name, spec)) in cl.spec.iter().enumerate() {
        let item = &list["items"][i];
        assert_cpu(&item["usage"]["cpu"], spec.cores, name);
        assert_mem(&item["usage"]["memory"], spec.memory, name);
        let window = item["window"].as_str().unwrap_or("");
        assert!(window.ends_with('s'), "window {window}");
        let one = cl.raw(&format!("{V1}/nodes/{name}")).await;
        assert_eq!(one["kind"], "NodeMetrics");
        assert_eq!(one["metadata"]["name"], *name);
    }
    assert_eq!(
        list["items"][1]["usage"]["memory"], "1073742336",
        "not a multiple of 1024: plain bytes"
    );

    // Pods: sorted by namespace then name, containers by name.
    let pods = cl.raw(&format!("{V1}/pods")).await;
    assert_eq!(pods["kind"], "PodMetricsList");
    assert_eq!(
        names(&pods),
        [
            "kube-system/coredns-x",
            "team-a/db-0",
            "team-a/web-1",
            "team-b/web-1"
        ]
    );
    let web = &pods["items"][2];
    assert_eq!(
        web["metadata"]["labels"],
        serde_json::json!({"app": "web", "tier": "frontend"})
    );
    let containers: Vec<&str> = web["containers"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(containers, ["app", "sidecar"]);
    let all: BTreeMap<String, (f64, u64)> = cl
        .spec
        .iter()
        .flat_map(|(_, n)| n.pods.iter())
        .flat_map(|p| {
            p.containers.iter().map(move |c| {
                (
                    format!("{}/{}/{}", p.namespace, p.name, c.name),
                    (c.cores, c.memory),
                )
            })
        })
        .collect();
    for item in pods["items"].as_array().into_iter().flatten() {
        let m = &item["metadata"];
        for c in item["containers"].as_array().into_iter().flatten() {
            let key = format!(
                "{}/{}/{}",
                m["namespace"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or("")
            );
            let (cores, mem) = all[&key];
            assert_cpu(&c["usage"]["cpu"], cores, &key);
            assert_mem(&c["usage"]["memory"], mem, &key);
        }
    }
    assert_eq!(web["containers"][1]["usage"]["memory"], "20971643");

    // Namespaced list and get.
    let ns = cl.raw(&format!("{V1}/namespaces/team-a/pods")).await;
    assert_eq!(names(&ns), ["team-a/db-0", "team-a/web-1"]);
    let one = cl.raw(&format!("{V1}/namespaces/team-b/pods/web-1")).await;
    assert_eq!(one["kind"], "PodMetrics");
    assert_eq!(one["metadata"]["namespace"], "team-b");

    // Label selectors, as kubectl and as the HPA sends them (form-encoded).
    let sel = |q: &str| format!("{V1}/pods?labelSelector={q}");
    assert_eq!(
        names(&cl.raw(&sel("app%3Dweb")).await),
        ["team-a/web-1", "team-b/web-1"]
    );
    assert_eq!(
        names(&cl.raw(&sel("app%3Dweb%2C%21canary")).await),
        ["team-a/web-1"]
    );
    assert_eq!(
        names(
            &cl.raw(&sel("app+in+%28db%2Cweb%29%2Ctier+notin+%28frontend%29"))
                .await
        ),
        ["team-a/db-0", "team-b/web-1"]
    );
    assert_eq!(
        names(&cl.raw(&format!("{V1}/namespaces/team-a/pods?labelSelector=app%3Ddemo2%2C%21canary%2Ctier+in+%28api%2Cweb%29")).await),
        Vec::<String>::new()
    );
    let kc = kubectl(
        &cl.agg.kubeconfig,
        &[
            "get",
            "--raw",
            &format!("{V1}/namespaces/team-a/pods?labelSelector=app!%3Dweb"),
        ],
    )
    .await;
    assert!(kc.success, "{}", kc.stderr);

    // Field selectors.
    assert_eq!(
        names(
            &cl.raw(&format!("{V1}/pods?fieldSelector=metadata.name%3Dweb-1"))
                .await
        ),
        ["team-a/web-1", "team-b/web-1"]
    );
    assert_eq!(
        names(
            &cl.raw(&format!(
                "{V1}/pods?fieldSelector=metadata.namespace!%3Dteam-a"
            ))
            .await
        ),
        ["kube-system/coredns-x", "team-b/web-1"]
    );
    assert_eq!(
        names(
            &cl.raw(&format!("{V1}/nodes?fieldSelector=metadata.name%3Dnode-b"))
                .await
        ),
        ["node-b"]
    );

    // Errors: 404, 400, 405 as kind: Status with metrics-server's messages.
    let (code, body) = cl.get(&format!("{V1}/namespaces/team-a/pods/nope")).await;
    assert_eq!(code, 404);
    let s = status(&body);
    assert_eq!(s["kind"], "Status");
    assert_eq!(
        s["message"],
        "podmetrics.metrics.k8s.io \"team-a/nope\" not found"
    );
    assert_eq!(s["details"]["kind"], "podmetrics");
    let (code, body) = cl.get(&format!("{V1}/nodes/nope")).await;
    assert_eq!(
        (code, status(&body)["reason"].clone()),
        (404, Value::from("NotFound"))
    );
    let (code, body) = cl
        .get(&format!("{V1}/pods?fieldSelector=spec.nodeName%3Dnode-a"))
        .await;
    assert_eq!(code, 400);
    assert_eq!(
        status(&body)["message"],
        "field label not supported: spec.nodeName"
    );
    let (code, body) = cl
        .get(&format!("{V1}/pods?labelSelector=a+in+%28%29"))
        .await;
    assert_eq!(
        (code, status(&body)["reason"].clone()),
        (400, Value::from("BadRequest"))
    );
    // A watch (which metrics-server refuses) starts with every node as
    // ADDED and ends cleanly at its timeout.
    let (code, body) = cl
        .get(&format!("{V1}/nodes?watch=true&timeoutSeconds=2"))
        .await;
    assert_eq!(code, 200, "{body}");
    let added: Vec<String> = body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|e| e["type"] == "ADDED")
        .map(|e| {
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(added, ["node-a", "node-b"], "{body}");
    let (code, _) = cl.get("/apis/other.k8s.io/v1").await;
    assert_eq!(code, 404);
    let kc = kubectl(
        &cl.agg.kubeconfig,
        &["get", "--raw", &format!("{V1}/nodes/nope")],
    )
    .await;
    assert!(!kc.success);
    assert!(
        kc.stderr
            .contains("nodemetrics.metrics.k8s.io \"nope\" not found"),
        "{}",
        kc.stderr
    );

    // The broken node is absent and its agent says why.
    let (code, _) = cl.get(&format!("{V1}/nodes/node-broken")).await;
    assert_eq!(code, 404);
    let broken_log = cl._agents[2].log_text();
    assert!(
        broken_log.contains("401"),
        "agent log should name the kubelet's 401: {broken_log}"
    );

    // Self-metrics: the aggregator counts accepted reports; node-b's agent
    // counts what it dropped; the broken agent counts failed reads.
    let (code, text) = cl.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(text.contains("metrics_aggregator_nodes 2"), "{text}");
    let accepted = text
        .lines()
        .find_map(|l| l.strip_prefix("metrics_aggregator_reports_total{result=\"accepted\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(accepted.is_some_and(|n| n >= 4), "{text}");
    let scrape = |i: usize| {
        let log = cl._agents[i].log_text();
        let addr = metrics_e2e::procs::agent_metrics_addr(&log)
            .unwrap_or_else(|| panic!("no metrics address in {log}"));
        async move {
            metrics_e2e::procs::http_get(addr, "/metrics")
                .await
                .expect("agent metrics")
        }
    };
    let b = scrape(1).await;
    assert!(
        b.contains("metrics_agent_dropped_total{reason=\"malformed_line\"}"),
        "{b}"
    );
    assert!(
        b.contains("metrics_agent_dropped_total{reason=\"invalid_sample\"}"),
        "{b}"
    );
    assert!(b.contains("metrics_agent_acks_total{aggregator="), "{b}");
    let broken = scrape(2).await;
    assert!(
        broken.contains("metrics_agent_source_reads_total{result=\"error\"}"),
        "{broken}"
    );

    // Health.
    for path in ["/livez", "/readyz", "/healthz"] {
        let (code, body) = cl.get(path).await;
        assert_eq!((code, body.as_str()), (200, "ok"), "{path}");
    }

    // kubectl top pod -A: every pod, CPU summed over containers.
    let top = kubectl(&cl.agg.kubeconfig, &["top", "pod", "-A", "--no-headers"]).await;
    assert!(top.success, "kubectl top: {}", top.stderr);
    let rows: BTreeMap<String, (String, String)> = top
        .stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| {
                (
                    format!("{}/{}", f[0], f[1]),
                    (f[2].to_string(), f[3].to_string()),
                )
            })
        })
        .collect();
    assert_eq!(rows.len(), 4, "{}", top.stdout);
    let (cpu, mem) = &rows["team-a/web-1"];
    let milli: f64 = cpu.trim_end_matches('m').parse().unwrap_or(-1.0);
    assert!((milli - 300.0).abs() <= 3.0, "team-a/web-1 cpu {cpu}");
    assert_eq!(mem, "120Mi");
    let (cpu, _) = &rows["team-a/db-0"];
    assert!(
        (cpu.trim_end_matches('m').parse::<f64>().unwrap_or(-1.0) - 500.0).abs() <= 5.0,
        "db-0 cpu {cpu}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_probe_answers_before_any_report() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = start_aggregator(dir.path(), &[]).await.expect("aggregator");
    let url = |p: &str| format!("{}{p}", agg.api_url());
    // kube-apiserver's availability probe: no Accept header, no data yet.
    let (code, _, body) = https::get(
        &url(V1),
        &agg.ca,
        &[("X-Remote-User", "system:kube-aggregator")],
    )
    .await
    .expect("probe");
    assert_eq!(code, 200);
    assert_eq!(
        body,
        with_watch(&fixture(
            "metrics-api/discovery_apis_metrics.k8s.io_v1beta1.json"
        ))
        .trim_end()
    );
    // Aggregated discovery when asked for it.
    let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    let (code, headers, body) = https::get(&url("/apis"), &agg.ca, &[("Accept", accept)])
        .await
        .expect("apis");
    assert_eq!(code, 200);
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    );
    let doc: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        doc["items"][0]["versions"][0]["resources"][1]["responseKind"]["kind"],
        "PodMetrics"
    );
    // Not ready and empty lists until reports arrive.
    let (code, _, _) = https::get(&url("/readyz"), &agg.ca, &[])
        .await
        .expect("readyz");
    assert_eq!(code, 500);
    let (code, _, body) = https::get(&url(&format!("{V1}/pods")), &agg.ca, &[])
        .await
        .expect("pods");
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["items"],
        serde_json::json!([])
    );
}

/// Runs the aggregator with `args` until it exits, outside any cluster
/// (no in-cluster API address inherited from the machine running tests).
async fn aggregator_exit(args: &[&str], cert_dir: &std::path::Path) -> std::process::Output {
    tokio::process::Command::new(metrics_e2e::procs::binary("metrics-aggregator"))
        .args(args)
        .args(["--secure-port=0", "--grpc-port=0"])
        .arg(format!("--cert-dir={}", cert_dir.display()))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .await
        .expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_refuses_anonymous_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = aggregator_exit(
        &["--insecure-allow-anonymous", "--bind-address=0.0.0.0"],
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires a loopback --bind-address"));
    let out = aggregator_exit(&["--bind-address=127.0.0.1"], dir.path()).await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "no auth and no anonymous flag must not serve"
    );
}
