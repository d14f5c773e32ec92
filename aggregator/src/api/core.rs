//! In `--standalone` only: the small part of the core API (`/api`, `/api/v1`
//! discovery, Nodes and Pods) that `kubectl top node` and `kubectl top pod`
//! read beside the metrics, so they work on a machine with no cluster.
//! Nodes are the nodes this server has metrics for, with this host's
//! capacity (kubectl divides usage by it for its percentages); Pods are
//! the pods it has metrics for.

use std::collections::BTreeMap;
use std::path::Path;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::api::discovery::json as json_response;
use crate::api::object::Object;
use crate::api::status::ApiError;
use crate::api::AppState;
use crate::format::{cpu_quantity, memory_quantity};
use crate::query::{Kind, Query};

/// This host's capacity, which every standalone Node reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    pub cpus: u64,
    pub memory_bytes: u64,
}

impl HostCapacity {
    /// Read from `proc_root` (`/proc`): online CPUs and MemTotal.
    pub fn read(proc_root: &Path) -> Self {
        let cpus = std::fs::read_to_string(proc_root.join("cpuinfo"))
            .map(|t| t.lines().filter(|l| l.starts_with("processor")).count() as u64)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
        let memory_bytes = std::fs::read_to_string(proc_root.join("meminfo"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb.saturating_mul(1024));
        HostCapacity { cpus, memory_bytes }
    }
}

/// The routes, to be merged into the API router.
pub fn routes(capacity: HostCapacity) -> Router<AppState> {
    Router::new()
        .route("/api", get(|| async { json_response(API_VERSIONS) }))
        .route("/api/v1", get(|| async { json_response(RESOURCES) }))
        .route(
            "/api/v1/nodes",
            get(move |s: State<AppState>, q: RawQuery| nodes(s, q, capacity, None)),
        )
        .route(
            "/api/v1/nodes/{name}",
            get(
                move |s: State<AppState>, q: RawQuery, p: Result<UrlPath<String>, PathRejection>| async move {
                    let UrlPath(name) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
                    nodes(s, q, capacity, Some(name)).await
                },
            ),
        )
        .route("/api/v1/pods", get(|s: State<AppState>, q: RawQuery| pods(s, q, None)))
        .route(
            "/api/v1/namespaces/{ns}/pods",
            get(
                |s: State<AppState>, q: RawQuery, p: Result<UrlPath<String>, PathRejection>| async move {
                    let UrlPath(ns) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
                    pods(s, q, Some(ns)).await
                },
            ),
        )
}

const API_VERSIONS: &str =
    r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":null}"#;

const RESOURCES: &str = r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"nodes","singularName":"node","namespaced":false,"kind":"Node","verbs":["get","list"],"shortNames":["no"]},{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]}]}"#;

fn selectors(raw: Option<&str>) -> (String, String) {
    let (mut labels, mut fields) = (String::new(), String::new());
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "labelSelector" => labels = v.into_owned(),
            "fieldSelector" => fields = v.into_owned(),
            _ => {}
        }
    }
    (labels, fields)
}

/// The metrics objects a query matches, read back.
async fn objects(s: &AppState, q: &Query) -> Result<Vec<Object>, ApiError> {
    let got = s.cluster.gather(q).await;
    let created =
        crate::format::rfc3339(metrics_proto::time::unix_nanos(std::time::SystemTime::now()));
    got.hits
        .iter()
        .map(|h| Object::from_hit(h, &created))
        .collect()
}

fn metadata(o: &Object) -> Value {
    let mut m = json!({
        "name": o.metadata.name,
        "creationTimestamp": o.metadata.creation_timestamp,
        "resourceVersion": "1",
    });
    if let Some(ns) = &o.metadata.namespace {
        m["namespace"] = ns.clone().into();
    }
    if !o.metadata.labels.is_empty() {
        m["labels"] = json!(o.metadata.labels);
    }
    m
}

async fn nodes(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
    capacity: HostCapacity,
    name: Option<String>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(raw.as_deref());
    let q = Query::new(Kind::Nodes, None, name.clone(), &labels, &fields)?;
    let resources: BTreeMap<&str, String> = [
        (
            "cpu",
            cpu_quantity(capacity.cpus.saturating_mul(1_000_000_000)),
        ),
        ("memory", memory_quantity(capacity.memory_bytes)),
        ("pods", "110".to_owned()),
    ]
    .into();
    let items: Vec<Value> = objects(&s, &q)
        .await?
        .iter()
        .map(|o| {
            json!({
                "metadata": metadata(o),
                "status": {
                    "capacity": resources,
                    "allocatable": resources,
                    "conditions": [{ "type": "Ready", "status": "True" }],
                },
            })
        })
        .collect();
    one_or_list(items, name, "Node", "nodes")
}

async fn pods(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
    namespace: Option<String>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(raw.as_deref());
    let q = Query::new(Kind::Pods, namespace, None, &labels, &fields)?;
    let items: Vec<Value> = objects(&s, &q)
        .await?
        .iter()
        .map(|o| {
            let containers: Vec<Value> = o
                .containers
                .iter()
                .flatten()
                .map(|c| json!({ "name": c.name, "image": "" }))
                .collect();
            json!({
                "metadata": metadata(o),
                "spec": { "containers": containers },
                "status": { "phase": "Running" },
            })
        })
        .collect();
    one_or_list(items, None, "Pod", "pods")
}

fn one_or_list(
    mut items: Vec<Value>,
    name: Option<String>,
    kind: &str,
    resource: &'static str,
) -> Result<Response, ApiError> {
    let body = match name {
        Some(name) => {
            let Some(mut item) = items.pop() else {
                return Err(ApiError::CoreNotFound { resource, name });
            };
            item["kind"] = kind.into();
            item["apiVersion"] = "v1".into();
            item
        }
        None => json!({
            "kind": format!("{kind}List"),
            "apiVersion": "v1",
            "metadata": { "resourceVersion": "1" },
            "items": items,
        }),
    };
    Ok(json_response(body.to_string()))
}
