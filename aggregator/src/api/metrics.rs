//! NodeMetrics and PodMetrics handlers: get, list, selectors.

use std::time::{Instant, SystemTime};

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use crate::api::discovery::json;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::status::ApiError;
use crate::api::AppState;
use crate::format::rfc3339;
use crate::render::Rendered;

/// The query parameters a list understands.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub watch: bool,
}

impl ListQuery {
    /// Parses a raw (form-encoded) query string.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut q = ListQuery::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "labelSelector" => q.labels = LabelSelector::parse(&v)?,
                "fieldSelector" => q.fields = FieldSelector::parse(&v)?,
                "watch" => {
                    q.watch = matches!(v.as_ref(), "1" | "t" | "T" | "true" | "TRUE" | "True")
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

fn now_rfc3339() -> String {
    rfc3339(metrics_agent::source::decode::unix_nanos(SystemTime::now()))
}

fn list_body<'a>(kind: &str, items: impl Iterator<Item = &'a Rendered> + Clone) -> Vec<u8> {
    let created = now_rfc3339();
    let size: usize = items.clone().map(|r| r.len() + created.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 96);
    out.extend_from_slice(b"{\"kind\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(
        b"\",\"apiVersion\":\"metrics.k8s.io/v1beta1\",\"metadata\":{},\"items\":[",
    );
    for (i, r) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        r.write_to(&mut out, &created);
    }
    out.extend_from_slice(b"]}");
    out
}

fn one(r: &Rendered) -> Response {
    let mut out = Vec::with_capacity(r.len() + 24);
    r.write_to(&mut out, &now_rfc3339());
    json(out)
}

fn no_watch(q: &ListQuery, resource: &'static str) -> Result<(), ApiError> {
    if q.watch {
        return Err(ApiError::MethodNotSupported {
            verb: "watch".into(),
            resource,
        });
    }
    Ok(())
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes`.
pub async fn list_nodes(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = ListQuery::parse(raw.as_deref())?;
    no_watch(&q, "nodes")?;
    let nodes = s.store.nodes(Instant::now());
    let items = nodes
        .iter()
        .filter(|n| q.fields.matches("", &n.name) && q.labels.matches(&n.labels))
        .filter_map(|n| n.node.as_ref());
    Ok(json(list_body("NodeMetricsList", items)))
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes/{name}`.
pub async fn get_node(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    no_watch(&ListQuery::parse(raw.as_deref())?, "nodes")?;
    let entry = s.store.node(&name, Instant::now());
    match entry.as_ref().and_then(|e| e.node.as_ref()) {
        Some(r) => Ok(one(r)),
        None => Err(ApiError::NotFound {
            resource: "nodemetrics",
            name,
        }),
    }
}

fn list_pods(
    s: &AppState,
    namespace: Option<&str>,
    raw: Option<&str>,
) -> Result<Response, ApiError> {
    let q = ListQuery::parse(raw)?;
    no_watch(&q, "pods")?;
    let hits = s.store.pods(namespace, Instant::now());
    let items = hits
        .iter()
        .map(|h| h.pod())
        .filter(|p| q.fields.matches(&p.namespace, &p.name) && q.labels.matches(&p.labels))
        .map(|p| &p.rendered);
    Ok(json(list_body("PodMetricsList", items)))
}

/// `GET /apis/metrics.k8s.io/v1beta1/pods`.
pub async fn list_all_pods(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    list_pods(&s, None, raw.as_deref())
}

/// `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods`.
pub async fn list_namespace_pods(
    State(s): State<AppState>,
    Path(ns): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    list_pods(&s, Some(&ns), raw.as_deref())
}

/// `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}`.
pub async fn get_pod(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    no_watch(&ListQuery::parse(raw.as_deref())?, "pods")?;
    let hits = s.store.pods(Some(&ns), Instant::now());
    match hits.iter().find(|h| h.pod().name == name) {
        Some(h) => Ok(one(&h.pod().rendered)),
        None => Err(ApiError::NotFound {
            resource: "podmetrics",
            name: format!("{ns}/{name}"),
        }),
    }
}
