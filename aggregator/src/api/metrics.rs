//! NodeMetrics and PodMetrics handlers: get, list, selectors. Every answer
//! comes from the cluster (this replica plus its peers), merged.

use std::time::SystemTime;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::HeaderMap;

use crate::api::list_body::ListBody;
use crate::api::negotiate::{negotiate, Format};
use crate::api::object::Object;
use crate::api::status::ApiError;
use crate::api::table::IncludeObject;
use crate::api::watch::WatchParams;
use crate::api::{protobuf, table, watch, yaml, AppState};
use crate::cluster::Missing;
use crate::format::rfc3339;
use crate::query::{Hit, Kind, Query};
use crate::render_pb;
use crate::server::ConnHandle;

/// The connection a request came on, when served by `serve_https`.
type Conn = Option<Extension<ConnHandle>>;

/// The query parameters the API understands.
#[derive(Debug, Default)]
struct Params {
    labels: String,
    fields: String,
    watch: bool,
    include_object: String,
    watch_params: WatchParams,
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
                "includeObject" => p.include_object = v.into_owned(),
                k => {
                    p.watch_params.take(k, &v);
                }
            }
        }
        p
    }

    /// The query for `kind` and the representation of its answer;
    /// unacceptable formats are refused before anything is parsed.
    fn query(
        &self,
        headers: &HeaderMap,
        kind: Kind,
        namespace: Option<String>,
        name: Option<String>,
    ) -> Result<(Query, Encoding), ApiError> {
        let encoding = Encoding {
            format: negotiate(headers)?,
            include: IncludeObject::parse(&self.include_object)?,
            kind,
        };
        // Watch events are written from JSON objects.
        let pb = encoding.format == Format::Protobuf && !self.watch;
        let q = Query::new(kind, namespace, name, &self.labels, &self.fields)?.with_protobuf(pb);
        Ok((q, encoding))
    }
}

impl Params {
    /// Answers with a watch of `q` instead of its answer.
    fn watch(
        &self,
        s: &AppState,
        q: Query,
        encoding: Encoding,
        conn: Conn,
    ) -> Result<Response, ApiError> {
        watch::serve(
            s,
            q,
            encoding.format,
            encoding.include,
            &self.watch_params,
            conn.map(|Extension(c)| c),
        )
    }
}

/// How an answer is written.
struct Encoding {
    format: Format,
    include: IncludeObject,
    kind: Kind,
}

impl Encoding {
    /// The answer for `hits` in the negotiated format: a list of kind
    /// `list` (`PodMetricsList`, ...), or with `None` the one object of a
    /// GET. `json` writes the JSON answer, which a single object's YAML is
    /// read from.
    fn respond(
        &self,
        json: impl FnOnce() -> Vec<u8>,
        hits: &[Hit],
        created_ns: i64,
        list: Option<&str>,
    ) -> Result<Response, ApiError> {
        let created = rfc3339(created_ns);
        let body = match (self.format, list) {
            (Format::Json, _) => json(),
            (Format::Yaml, Some(list_kind)) => yaml::list(list_kind, hits, &created)?.into_bytes(),
            (Format::Yaml, None) => {
                let v: serde_json::Value = serde_json::from_slice(&json())
                    .map_err(|e| ApiError::Internal(format!("answer does not decode: {e}")))?;
                yaml::to_yaml(&v).into_bytes()
            }
            (Format::Protobuf, _) => self.protobuf(hits, created_ns, list.is_none())?,
            (Format::Table(v), _) => table::of_hits(v, self.kind, hits, &created, self.include)?,
        };
        Ok((
            [(http::header::CONTENT_TYPE, self.format.content_type())],
            body,
        )
            .into_response())
    }

    /// Protobuf straight from each hit's protobuf form; a hit in JSON form
    /// (from a replica that answers only JSON) is converted.
    fn protobuf(&self, hits: &[Hit], created_ns: i64, single: bool) -> Result<Vec<u8>, ApiError> {
        let created = render_pb::created(created_ns);
        let created_text = rfc3339(created_ns);
        // Hits a peer sent as JSON, converted; None where a hit has its own.
        let converted: Vec<Option<Vec<u8>>> = hits
            .iter()
            .map(|h| match h.pb {
                Some(_) => Ok(None),
                None => Ok(Some(protobuf::item(
                    self.kind,
                    &Object::from_hit(h, &created_text)?,
                ))),
            })
            .collect::<Result<_, ApiError>>()?;
        let items: Vec<&[u8]> = hits
            .iter()
            .zip(&converted)
            .map(|(h, c)| h.pb.as_deref().or(c.as_deref()).unwrap_or_default())
            .collect();
        let (object, list) = match self.kind {
            Kind::Nodes => ("NodeMetrics", "NodeMetricsList"),
            Kind::Pods => ("PodMetrics", "PodMetricsList"),
        };
        Ok(match (single, items.first()) {
            (true, Some(item)) => render_pb::object(object, item, &created),
            _ => render_pb::list(list, &items, &created),
        })
    }
}

fn now_ns() -> i64 {
    metrics_proto::time::unix_nanos(SystemTime::now())
}

async fn list(
    s: &AppState,
    kind: Kind,
    namespace: Option<String>,
    raw: Option<&str>,
    headers: &HeaderMap,
    conn: Conn,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw);
    let (q, encoding) = params.query(headers, kind, namespace, None)?;
    if params.watch {
        return params.watch(s, q, encoding, conn);
    }
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
    freshness(s, &got.hits);
    let created_ns = now_ns();
    let mut resp = if encoding.format == Format::Json {
        // Written while it is sent: never the whole answer in memory.
        let body = ListBody::new(list_kind, got.hits, rfc3339(created_ns));
        (
            [(http::header::CONTENT_TYPE, Format::Json.content_type())],
            axum::body::Body::new(body),
        )
            .into_response()
    } else {
        let json = || ListBody::new(list_kind, &got.hits[..], rfc3339(created_ns)).collect();
        encoding.respond(json, &got.hits, created_ns, Some(list_kind))?
    };
    if let Some(w) = warning {
        resp.headers_mut().insert(http::header::WARNING, w);
    }
    Ok(resp)
}

/// Observes the age of every served object's sample.
fn freshness(s: &AppState, hits: &[Hit]) {
    let now = metrics_proto::time::unix_nanos(SystemTime::now());
    for h in hits {
        s.compat
            .freshness
            .observe(now.saturating_sub(h.timestamp_ns).max(0) as f64 / 1e9);
    }
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
    headers: &HeaderMap,
    conn: Conn,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw);
    let (q, encoding) = params.query(headers, kind, namespace.clone(), Some(name.clone()))?;
    if params.watch {
        return params.watch(s, q, encoding, conn);
    }
    let got = s.cluster.gather(&q).await;
    if let (None, Some(m)) = (got.hits.first(), &got.missing) {
        // Not found, but its owners may be the replicas that did not answer.
        s.cluster.record_partial(m, false);
        return Err(ApiError::Unavailable(format!(
            "{name:?} cannot be looked up: {}",
            m.describe()
        )));
    }
    freshness(s, &got.hits);
    match got.hits.first() {
        Some(h) => {
            let object = match kind {
                Kind::Nodes => "NodeMetrics",
                Kind::Pods => "PodMetrics",
            };
            let created_ns = now_ns();
            let json = || {
                let mut out = Vec::with_capacity(h.rendered.len() + 96);
                h.rendered
                    .write_object(&mut out, object, &rfc3339(created_ns));
                out
            };
            encoding.respond(json, std::slice::from_ref(h), created_ns, None)
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
    headers: HeaderMap,
    conn: Conn,
) -> Result<Response, ApiError> {
    list(&s, Kind::Nodes, None, raw.as_deref(), &headers, conn).await
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes/{name}`.
pub async fn get_node(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    conn: Conn,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(bad_path)?;
    get(&s, Kind::Nodes, None, name, raw.as_deref(), &headers, conn).await
}

/// `GET /apis/metrics.k8s.io/v1beta1/pods`.
pub async fn list_all_pods(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    conn: Conn,
) -> Result<Response, ApiError> {
    list(&s, Kind::Pods, None, raw.as_deref(), &headers, conn).await
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
    headers: HeaderMap,
    conn: Conn,
) -> Result<Response, ApiError> {
    let Path(ns) = path.map_err(bad_path)?;
    list(
        &s,
        Kind::Pods,
        Some(namespace(ns)?),
        raw.as_deref(),
        &headers,
        conn,
    )
    .await
}

/// `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}`.
pub async fn get_pod(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    conn: Conn,
) -> Result<Response, ApiError> {
    let Path((ns, name)) = path.map_err(bad_path)?;
    get(
        &s,
        Kind::Pods,
        Some(namespace(ns)?),
        name,
        raw.as_deref(),
        &headers,
        conn,
    )
    .await
}
