//! NodeMetrics and PodMetrics handlers: get, list, selectors. Every answer
//! comes from the cluster (this replica plus its peers), merged.

use std::time::SystemTime;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use crate::api::discovery::json;
use crate::api::status::ApiError;
use crate::api::AppState;
use crate::cluster::Missing;
use crate::format::rfc3339;
use crate::query::{Hit, Kind, Query};

/// The query parameters the API understands.
#[derive(Debug, Default)]
struct Params {
    labels: String,
    fields: String,
    watch: bool,
}

impl Params {
    /// Parses a raw (form-encoded) query string.
    fn parse(raw: Option<&str>) -> Self {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "labelSelector" => p.labels = v.into_owned(),
                "fieldSelector" => p.fields = v.into_owned(),
                "watch" => {
                    p.watch = matches!(v.as_ref(), "1" | "t" | "T" | "true" | "TRUE" | "True")
                }
                _ => {}
            }
        }
        p
    }

    /// The query for `kind`; watch is refused before anything is parsed.
    fn query(
        self,
        kind: Kind,
        namespace: Option<String>,
        name: Option<String>,
    ) -> Result<Query, ApiError> {
        if self.watch {
            return Err(ApiError::MethodNotSupported {
                verb: "watch".into(),
                resource: resource(kind),
            });
        }
        Ok(Query::new(
            kind,
            namespace,
            name,
            &self.labels,
            &self.fields,
        )?)
    }
}

fn resource(kind: Kind) -> &'static str {
    match kind {
        Kind::Nodes => "nodes",
        Kind::Pods => "pods",
    }
}

fn now_rfc3339() -> String {
    rfc3339(metrics_proto::time::unix_nanos(SystemTime::now()))
}

fn list_body(kind: &str, hits: &[Hit]) -> Vec<u8> {
    let created = now_rfc3339();
    let size: usize = hits
        .iter()
        .map(|h| h.rendered.len() + created.len() + 1)
        .sum();
    let mut out = Vec::with_capacity(size + 96);
    out.extend_from_slice(b"{\"kind\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(
        b"\",\"apiVersion\":\"metrics.k8s.io/v1beta1\",\"metadata\":{},\"items\":[",
    );
    for (i, h) in hits.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        h.rendered.write_to(&mut out, &created);
    }
    out.extend_from_slice(b"]}");
    out
}

async fn list(
    s: &AppState,
    kind: Kind,
    namespace: Option<String>,
    raw: Option<&str>,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw).query(kind, namespace, None)?;
    let got = s.cluster.gather(&q).await;
    let warning = match &got.missing {
        None => None,
        Some(m) => {
            let served = s.cluster.may_serve_partial(m);
            s.cluster.record_partial(m, served);
            if !served {
                return Err(ApiError::Unavailable(format!(
                    "the list is incomplete: {}",
                    m.describe()
                )));
            }
            Some(warning(m))
        }
    };
    let list_kind = match kind {
        Kind::Nodes => "NodeMetricsList",
        Kind::Pods => "PodMetricsList",
    };
    let mut resp = json(list_body(list_kind, &got.hits));
    if let Some(w) = warning {
        resp.headers_mut().insert(http::header::WARNING, w);
    }
    Ok(resp)
}

/// A `Warning` header (RFC 7234, code 299 as k8s.io/apiserver sends them,
/// which kubectl prints) saying what an answer lacks.
fn warning(m: &Missing) -> http::HeaderValue {
    let text = m.describe().replace(['"', '\\'], "");
    http::HeaderValue::from_str(&format!("299 - \"{text}\""))
        .unwrap_or_else(|_| http::HeaderValue::from_static("299 - \"partial answer\""))
}

async fn get(
    s: &AppState,
    kind: Kind,
    namespace: Option<String>,
    name: String,
    raw: Option<&str>,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw).query(kind, namespace.clone(), Some(name.clone()))?;
    let got = s.cluster.gather(&q).await;
    if let (None, Some(m)) = (got.hits.first(), &got.missing) {
        // Not found, but its owners may be the replicas that did not answer.
        s.cluster.record_partial(m, false);
        return Err(ApiError::Unavailable(format!(
            "{name:?} cannot be looked up: {}",
            m.describe()
        )));
    }
    match got.hits.first() {
        Some(h) => {
            let mut out = Vec::with_capacity(h.rendered.len() + 96);
            let object = match kind {
                Kind::Nodes => "NodeMetrics",
                Kind::Pods => "PodMetrics",
            };
            h.rendered.write_object(&mut out, object, &now_rfc3339());
            Ok(json(out))
        }
        None => Err(ApiError::NotFound {
            resource: match kind {
                Kind::Nodes => "nodemetrics",
                Kind::Pods => "podmetrics",
            },
            name: match namespace {
                Some(ns) => format!("{ns}/{name}"),
                None => name,
            },
        }),
    }
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes`.
pub async fn list_nodes(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    list(&s, Kind::Nodes, None, raw.as_deref()).await
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes/{name}`.
pub async fn get_node(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(bad_path)?;
    get(&s, Kind::Nodes, None, name, raw.as_deref()).await
}

/// `GET /apis/metrics.k8s.io/v1beta1/pods`.
pub async fn list_all_pods(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    list(&s, Kind::Pods, None, raw.as_deref()).await
}

/// A path segment that does not decode (invalid percent-encoding or UTF-8)
/// is a 400 Status like every other error, not axum's plain-text answer.
fn bad_path(e: PathRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid path: {}", e.body_text()))
}

/// A namespace path segment that no namespace can have (empty, a decoded
/// `/`, anything not a DNS-1123 label) names no resource: 404, as for any
/// path that does not exist, not an empty list.
fn namespace(ns: String) -> Result<String, ApiError> {
    if metrics_proto::checks::is_dns_label(&ns) {
        Ok(ns)
    } else {
        Err(ApiError::NoRoute)
    }
}

/// `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods`.
pub async fn list_namespace_pods(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path(ns) = path.map_err(bad_path)?;
    list(&s, Kind::Pods, Some(namespace(ns)?), raw.as_deref()).await
}

/// `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}`.
pub async fn get_pod(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path((ns, name)) = path.map_err(bad_path)?;
    get(&s, Kind::Pods, Some(namespace(ns)?), name, raw.as_deref()).await
}
