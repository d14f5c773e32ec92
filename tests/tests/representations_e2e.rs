//! Every metrics endpoint in every representation clients ask for, from a
//! replica that merges its peers' answers (3 replicas, R=2, simulated
//! agents over real gRPC+TLS): protobuf in Kubernetes' envelope decoded by
//! an independent decoder (k8s-pb) and compared field by field with the
//! JSON answer; server-side Tables as kubectl reads them (and the real
//! kubectl prints them); YAML read back by an independent parser; 406 for
//! what the server cannot write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::metrics::pkg::apis::metrics::v1beta1 as pb;
use prost::Message;
use serde_json::Value;

use metrics_e2e::https;
use metrics_e2e::load::fleet::Fleet;
use metrics_e2e::load::workload::Shape;
use metrics_e2e::procs::{kubectl, AggregatorProc};
use metrics_e2e::quantity;
use metrics_e2e::replicas::ReplicaSet;

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf, */*";
const KUBECTL_GET: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

struct Cluster {
    _dir: tempfile::TempDir,
    _fleet: Fleet,
    aggs: Vec<AggregatorProc>,
    ca: PathBuf,
    shape: Shape,
}

impl Cluster {
    async fn start() -> Self {
        metrics_proto::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let set = ReplicaSet::new(dir.path(), 3, 2, &[]);
        let aggs = set.start_all().await.unwrap();
        let ca = PathBuf::from(&set.cert.0);
        let shape = Shape {
            nodes: 5,
            pods_per_node: 6,
            containers_per_pod: 2,
            namespaces: 2,
        };
        let fleet = set.fleet(shape, Duration::from_secs(3)).unwrap();
        let c = Cluster {
            _dir: dir,
            _fleet: fleet,
            aggs,
            ca,
            shape,
        };
        metrics_e2e::wait::until(
            "every node and pod listed",
            Duration::from_secs(90),
            async || {
                let nodes = c.json("nodes").await;
                let pods = c.json("pods").await;
                nodes["items"].as_array().map(Vec::len) == Some(shape.nodes)
                    && pods["items"].as_array().map(Vec::len) == Some(shape.total_pods())
            },
        )
        .await;
        c
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/apis/metrics.k8s.io/v1beta1/{path}",
            self.aggs[0].api_url()
        )
    }

    async fn fetch(&self, path: &str, accept: Option<&str>) -> (u16, http::HeaderMap, Bytes) {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let (code, h, body) = https::get_bytes(&self.url(path), &self.ca, &headers)
            .await
            .unwrap();
        (code.as_u16(), h, body)
    }

    async fn json(&self, path: &str) -> Value {
        let (code, _, body) = self.fetch(path, Some("application/json")).await;
        assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// The JSON answer and the answer in `accept`, taken while no report
    /// changed the data in between (JSON fetched before and after agree).
    async fn pair(&self, path: &str, accept: &str) -> (Value, http::HeaderMap, Bytes) {
        for _ in 0..20 {
            let before = self.json(path).await;
            let (code, h, body) = self.fetch(path, Some(accept)).await;
            assert_eq!(
                code,
                200,
                "{path} as {accept}: {}",
                String::from_utf8_lossy(&body)
            );
            let after = self.json(path).await;
            if without_created(&before) == without_created(&after) {
                return (after, h, body);
            }
        }
        panic!("{path}: the data never held still between two JSON answers");
    }

    /// Paths covering every endpoint, with selectors: (path, single object).
    fn paths(&self) -> Vec<(String, bool)> {
        let (ns, pod) = self.shape.pod_key(0);
        let app = self.shape.app_name(0);
        vec![
            ("nodes".into(), false),
            (format!("nodes/{}", self.shape.node_name(1)), true),
            ("pods".into(), false),
            (format!("namespaces/{ns}/pods"), false),
            (
                format!("namespaces/{ns}/pods?labelSelector=app%3D{app}"),
                false,
            ),
            (
                format!("namespaces/{ns}/pods?fieldSelector=metadata.name%3D{pod}"),
                false,
            ),
            (format!("namespaces/{ns}/pods/{pod}"), true),
        ]
    }
}

/// `v` with every creationTimestamp (the response time) removed.
fn without_created(v: &Value) -> Value {
    let mut v = v.clone();
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("creationTimestamp");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// A list's items, or a single object without its kind and apiVersion
/// (which list items do not carry).
fn items(v: &Value) -> Vec<Value> {
    match v.get("items") {
        Some(Value::Array(a)) => a.clone(),
        _ => {
            let mut o = v.clone();
            if let Some(m) = o.as_object_mut() {
                assert!(m.remove("kind").is_some() && m.remove("apiVersion").is_some());
            }
            vec![o]
        }
    }
}

/// Seconds of an RFC 3339 time with whole seconds, as the JSON has it.
fn unix_seconds(s: &str) -> i64 {
    let t: k8s_openapi::jiff::Timestamp = s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"));
    t.as_second()
}

/// Nanoseconds of a Go duration string as metrics windows are written
/// (`15s`, `10.5s`, `1m0s`).
fn window_nanos(s: &str) -> i64 {
    let (minutes, rest) = match s.split_once('m') {
        Some((m, r)) => (m.parse::<i64>().unwrap(), r),
        None => (0, s),
    };
    let secs: f64 = rest.strip_suffix('s').unwrap().parse().unwrap();
    minutes * 60_000_000_000 + (secs * 1e9).round() as i64
}

fn same_meta(what: &str, p: &Option<ObjectMeta>, j: &Value) {
    let p = p.as_ref().unwrap_or_else(|| panic!("{what}: no metadata"));
    let m = &j["metadata"];
    assert_eq!(p.name.as_deref(), m["name"].as_str(), "{what}: name");
    assert_eq!(
        p.namespace.as_deref(),
        m["namespace"].as_str(),
        "{what}: namespace"
    );
    let labels: BTreeMap<String, String> = p.labels.clone().into_iter().collect();
    let want: BTreeMap<String, String> = serde_json::from_value(
        m.get("labels")
            .cloned()
            .unwrap_or(Value::Object(Default::default())),
    )
    .unwrap();
    assert_eq!(labels, want, "{what}: labels");
    let created = p.creation_timestamp.as_ref().and_then(|t| t.seconds);
    assert!(
        created.is_some_and(|s| s > 1_600_000_000),
        "{what}: creationTimestamp {created:?}"
    );
}

fn same_times(
    what: &str,
    ts: &Option<k8s_pb::apimachinery::pkg::apis::meta::v1::Time>,
    window: &Option<k8s_pb::apimachinery::pkg::apis::meta::v1::Duration>,
    j: &Value,
) {
    let seconds = ts.as_ref().and_then(|t| t.seconds);
    assert_eq!(
        seconds,
        Some(unix_seconds(j["timestamp"].as_str().unwrap())),
        "{what}: timestamp"
    );
    let nanos = ts.as_ref().and_then(|t| t.nanos).unwrap_or(0);
    assert!((0..1_000_000_000).contains(&nanos), "{what}: nanos {nanos}");
    assert_eq!(
        window.as_ref().and_then(|w| w.duration),
        Some(window_nanos(j["window"].as_str().unwrap())),
        "{what}: window"
    );
}

fn same_usage(
    what: &str,
    p: &BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>,
    j: &Value,
) {
    let got: BTreeMap<&str, &str> = p
        .iter()
        .map(|(k, q)| (k.as_str(), q.string.as_deref().unwrap_or("")))
        .collect();
    let want: BTreeMap<&str, &str> = j
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    assert_eq!(got, want, "{what}: usage");
}

fn same_node(p: &pb::NodeMetrics, j: &Value) {
    let what = j["metadata"]["name"].to_string();
    same_meta(&what, &p.metadata, j);
    same_times(&what, &p.timestamp, &p.window, j);
    same_usage(&what, &p.usage, &j["usage"]);
}

fn same_pod(p: &pb::PodMetrics, j: &Value) {
    let what = j["metadata"]["name"].to_string();
    same_meta(&what, &p.metadata, j);
    same_times(&what, &p.timestamp, &p.window, j);
    let containers = j["containers"].as_array().unwrap();
    assert_eq!(p.containers.len(), containers.len(), "{what}: containers");
    for (pc, jc) in p.containers.iter().zip(containers) {
        assert_eq!(
            pc.name.as_deref(),
            jc["name"].as_str(),
            "{what}: container name"
        );
        same_usage(&what, &pc.usage, &jc["usage"]);
    }
}

/// The envelope: magic, then a runtime.Unknown naming the type, with the
/// message in `raw` and no content encoding or type.
fn unwrap_envelope(body: &[u8], kind: &str) -> Vec<u8> {
    assert_eq!(&body[..4], b"k8s\0", "magic");
    let u = Unknown::decode(&body[4..]).expect("runtime.Unknown");
    let tm = u.type_meta.expect("typeMeta");
    assert_eq!(tm.api_version.as_deref(), Some("metrics.k8s.io/v1beta1"));
    assert_eq!(tm.kind.as_deref(), Some(kind));
    assert_eq!(u.content_encoding.as_deref().unwrap_or(""), "");
    assert_eq!(u.content_type.as_deref().unwrap_or(""), "");
    u.raw.expect("raw")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_representation_of_every_endpoint() {
    let c = Cluster::start().await;

    // Protobuf, as kubectl top and the HPA ask for it.
    for (path, single) in c.paths() {
        let (json, h, body) = c.pair(&path, PROTOBUF).await;
        assert_eq!(
            h["content-type"], "application/vnd.kubernetes.protobuf",
            "{path}"
        );
        let nodes = path.starts_with("nodes");
        let kind = match (nodes, single) {
            (true, true) => "NodeMetrics",
            (true, false) => "NodeMetricsList",
            (false, true) => "PodMetrics",
            (false, false) => "PodMetricsList",
        };
        let raw = unwrap_envelope(&body, kind);
        let want = items(&json);
        assert!(!want.is_empty(), "{path}: nothing to compare");
        match (nodes, single) {
            (true, true) => same_node(&pb::NodeMetrics::decode(&raw[..]).unwrap(), &want[0]),
            (false, true) => same_pod(&pb::PodMetrics::decode(&raw[..]).unwrap(), &want[0]),
            (true, false) => {
                let list = pb::NodeMetricsList::decode(&raw[..]).unwrap();
                assert_eq!(list.items.len(), want.len(), "{path}");
                for (p, j) in list.items.iter().zip(&want) {
                    same_node(p, j);
                }
            }
            (false, false) => {
                let list = pb::PodMetricsList::decode(&raw[..]).unwrap();
                assert_eq!(list.items.len(), want.len(), "{path}");
                for (p, j) in list.items.iter().zip(&want) {
                    same_pod(p, j);
                }
            }
        }
    }

    // YAML, read back by an independent parser, is the JSON answer.
    for (path, _) in c.paths() {
        let (json, h, body) = c.pair(&path, "application/yaml").await;
        assert_eq!(h["content-type"], "application/yaml", "{path}");
        let text = std::str::from_utf8(&body).unwrap();
        let yaml: Value =
            serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{path}: {e}\n{text}"));
        assert_eq!(
            without_created(&yaml),
            without_created(&json),
            "{path}\n{text}"
        );
    }

    // Tables, as kubectl get asks for them.
    for (path, _) in c.paths() {
        for include in ["", "None", "Metadata", "Object"] {
            let full = match (include, path.contains('?')) {
                ("", _) => path.clone(),
                (i, true) => format!("{path}&includeObject={i}"),
                (i, false) => format!("{path}?includeObject={i}"),
            };
            let (json, h, body) = c.pair(&full, KUBECTL_GET).await;
            assert_eq!(
                h["content-type"], "application/json;as=Table;v=v1;g=meta.k8s.io",
                "{full}"
            );
            let table: Value = serde_json::from_slice(&body).unwrap();
            check_table(&full, include, &table, &items(&json));
        }
    }
    // A v1beta1 Table when only that is asked for.
    let (_, _, body) = c
        .fetch(
            "nodes",
            Some("application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
        )
        .await;
    let table: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(
        table["rows"][0]["object"]["apiVersion"],
        "meta.k8s.io/v1beta1"
    );
}

/// CPU (cores) and memory (bytes) of a JSON object: the node's, or the
/// sum over the pod's containers (metrics-server's Table rule).
fn totals(j: &Value) -> (f64, u64) {
    let usages: Vec<&Value> = match j.get("usage") {
        Some(u) => vec![u],
        None => j["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["usage"])
            .collect(),
    };
    let cpu = usages
        .iter()
        .map(|u| quantity::parse(u["cpu"].as_str().unwrap()).unwrap())
        .sum();
    let memory = usages
        .iter()
        .map(|u| quantity::bytes(u["memory"].as_str().unwrap()).unwrap())
        .sum();
    (cpu, memory)
}

/// metrics-server's Table: Name, cpu, memory (a pod's summed over its
/// containers), Window; each row's object as `include` asks.
fn check_table(what: &str, include: &str, table: &Value, want: &[Value]) {
    assert_eq!(table["kind"], "Table", "{what}");
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1", "{what}");
    let columns: Vec<(&str, &str)> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["format"].as_str().unwrap()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Name", "name"),
            ("cpu", "quantity"),
            ("memory", "quantity"),
            ("Window", "duration")
        ],
        "{what}"
    );
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{what}");
    for (row, j) in rows.iter().zip(want) {
        let cells = row["cells"].as_array().unwrap();
        assert_eq!(cells[0], j["metadata"]["name"], "{what}");
        let (cpu, memory) = totals(j);
        let cell_cpu = quantity::parse(cells[1].as_str().unwrap()).unwrap();
        assert!(
            (cell_cpu - cpu).abs() < 1e-9,
            "{what}: cpu {cells:?} vs {cpu}"
        );
        assert_eq!(
            quantity::bytes(cells[2].as_str().unwrap()),
            Some(memory),
            "{what}"
        );
        assert_eq!(cells[3], j["window"], "{what}");
        match include {
            "None" => assert!(row.get("object").is_none(), "{what}: {row}"),
            "" | "Metadata" => {
                assert_eq!(row["object"]["kind"], "PartialObjectMetadata", "{what}");
                assert_eq!(row["object"]["apiVersion"], "meta.k8s.io/v1", "{what}");
                assert_eq!(
                    without_created(&row["object"]["metadata"]),
                    without_created(&j["metadata"]),
                    "{what}"
                );
            }
            _ => {
                let mut object = row["object"].clone();
                let m = object.as_object_mut().unwrap();
                let kind = m.remove("kind").unwrap();
                assert!(
                    kind == "NodeMetrics" || kind == "PodMetrics",
                    "{what}: {kind}"
                );
                assert_eq!(m.remove("apiVersion").unwrap(), "metrics.k8s.io/v1beta1");
                assert_eq!(without_created(&object), without_created(j), "{what}");
            }
        }
    }
}

/// kubectl's rows against the JSON objects `want`, in order: name (and
/// namespace), CPU and memory summed over containers, window, and with
/// `labels` the LABELS cell as kubectl formats it.
fn check_printed(out: &str, want: &[Value], namespaced: bool, labels: bool) {
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), want.len(), "{out}");
    for (row, j) in rows.iter().zip(want) {
        let row = if namespaced {
            assert_eq!(Some(row[0]), j["metadata"]["namespace"].as_str(), "{out}");
            &row[1..]
        } else {
            &row[..]
        };
        assert_eq!(Some(row[0]), j["metadata"]["name"].as_str(), "{out}");
        let (cpu, memory) = totals(j);
        assert!(
            (quantity::parse(row[1]).unwrap() - cpu).abs() < 1e-9,
            "{row:?} vs {cpu}"
        );
        assert_eq!(quantity::bytes(row[2]), Some(memory), "{row:?}");
        assert_eq!(Some(row[3]), j["window"].as_str(), "{row:?}");
        if labels {
            // kubectl sorts the `k=v` strings, not the keys.
            let mut want: Vec<String> = j["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                        .collect()
                })
                .unwrap_or_default();
            want.sort();
            let want = if want.is_empty() {
                "<none>".to_owned()
            } else {
                want.join(",")
            };
            assert_eq!(row[4], want, "{row:?}");
        }
    }
}

/// What the real kubectl prints for `args`, whose header must be `header`.
async fn printed(kubeconfig: &Path, args: &[&str], header: &[&str]) -> String {
    let out = kubectl(kubeconfig, args).await;
    assert!(out.success, "{}", out.stderr);
    let got: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(got, header, "{}", out.stdout);
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_prints_metrics_servers_columns_and_406_for_the_rest() {
    let c = Cluster::start().await;
    let kubeconfig: &Path = &c.aggs[0].kubeconfig;

    let nodes = printed(
        kubeconfig,
        &["get", "nodemetrics"],
        &["NAME", "CPU", "MEMORY", "WINDOW"],
    )
    .await;
    assert!(nodes.contains(&c.shape.node_name(0)), "{nodes}");

    let out = printed(
        kubeconfig,
        &["get", "podmetrics", "-A"],
        &["NAMESPACE", "NAME", "CPU", "MEMORY", "WINDOW"],
    )
    .await;
    let (ns, pod) = c.shape.pod_key(0);
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(pod.as_str()))
        .unwrap_or_else(|| panic!("{pod} not listed:\n{out}"));
    assert!(line.starts_with(&ns), "{line}");

    // -o wide (no extra columns: metrics-server has none of lower
    // priority) and --show-labels (labels from each row's metadata), with
    // every printed value checked against the JSON answer of the moment.
    for (args, path, namespaced) in [
        (&["get", "nodemetrics", "-o", "wide"][..], "nodes", false),
        (&["get", "nodemetrics", "--show-labels"][..], "nodes", false),
        (&["get", "podmetrics", "-A", "-o", "wide"][..], "pods", true),
        (
            &["get", "podmetrics", "-A", "--show-labels"][..],
            "pods",
            true,
        ),
    ] {
        let labels = args.contains(&"--show-labels");
        let mut header = if namespaced {
            vec!["NAMESPACE", "NAME", "CPU", "MEMORY", "WINDOW"]
        } else {
            vec!["NAME", "CPU", "MEMORY", "WINDOW"]
        };
        if labels {
            header.push("LABELS");
        }
        let mut checked = false;
        for _ in 0..20 {
            let before = c.json(path).await;
            let out = printed(kubeconfig, args, &header).await;
            let after = c.json(path).await;
            if without_created(&before) != without_created(&after) {
                continue;
            }
            check_printed(&out, &items(&after), namespaced, labels);
            checked = true;
            break;
        }
        assert!(checked, "{args:?}: the data never held still");
    }

    // Nothing the server writes: 406 with a Status, before any work.
    for accept in [
        "text/html",
        "application/json;q=0",
        "application/json;as=Foo;v=v1;g=x",
    ] {
        let (code, h, body) = c.fetch("pods", Some(accept)).await;
        assert_eq!(code, 406, "{accept}");
        assert_eq!(h["content-type"], "application/json", "{accept}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "Status", "{accept}");
        assert_eq!(v["reason"], "NotAcceptable", "{accept}");
        assert_eq!(v["code"], 406, "{accept}");
    }
    let (code, _, body) = c
        .fetch("pods?includeObject=Everything", Some(KUBECTL_GET))
        .await;
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
}
