//! The HTTPS API: metrics.k8s.io/v1beta1, discovery and health endpoints.

pub mod core;
pub mod discovery;
pub mod inflight;
pub mod list_body;
pub mod metrics;
pub mod negotiate;
pub mod object;
pub mod openapi;
pub mod protobuf;
pub mod selector;
pub mod status;
pub mod table;
pub mod watch;
pub mod yaml;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, StatusCode};

use crate::metrics::AggregatorMetrics;
use crate::store::Store;
use status::ApiError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub cluster: Arc<crate::cluster::Cluster>,
    pub metrics: Arc<AggregatorMetrics>,
    /// metrics-server's metric names.
    pub compat: Arc<crate::metrics::ServerCompatMetrics>,
    pub registry: Arc<prometheus_client::registry::Registry>,
    /// Fired when shutdown starts: readiness fails from then on.
    pub draining: tokio_util::sync::CancellationToken,
    /// Every open watch.
    pub watches: Arc<watch::Watches>,
}

const V1BETA1: &str = "/apis/metrics.k8s.io/v1beta1";

/// The full router; every request goes through `auth` when given, and
/// first through the `max_inflight` limit (0: none). `core` adds the core
/// API subset of `--standalone`, with this host's capacity.
pub fn router(
    state: AppState,
    auth: Option<Arc<crate::auth::Auth>>,
    max_inflight: usize,
    core: Option<core::HostCapacity>,
) -> Router {
    let metrics = Arc::clone(&state.metrics);
    let compat = Arc::clone(&state.compat);
    let mut router = Router::new();
    if let Some(capacity) = core {
        router = router.merge(core::routes(capacity));
    }
    let router = router
        .route(
            "/apis",
            get(|h: HeaderMap| async move { discovery::apis(&h) }),
        )
        .route(
            "/apis/metrics.k8s.io",
            get(|| async { discovery::json(discovery::group()) }),
        )
        .route(
            V1BETA1,
            get(|| async { discovery::json(discovery::RESOURCE_LIST) }),
        )
        .route(&format!("{V1BETA1}/nodes"), get(metrics::list_nodes))
        .route(&format!("{V1BETA1}/nodes/{{name}}"), get(metrics::get_node))
        .route(&format!("{V1BETA1}/pods"), get(metrics::list_all_pods))
        .route(
            &format!("{V1BETA1}/namespaces/{{ns}}/pods"),
            get(metrics::list_namespace_pods),
        )
        .route(
            &format!("{V1BETA1}/namespaces/{{ns}}/pods/{{name}}"),
            get(metrics::get_pod),
        )
        .route(
            "/openapi/v2",
            get(|h: HeaderMap| async move { openapi::openapi_v2(&h) }),
        )
        .route(
            "/openapi/v3",
            get(|h: HeaderMap| async move { openapi::openapi_v3(&h) }),
        )
        .route(
            openapi::V3_GROUP_PATH,
            get(
                |h: HeaderMap, axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                    openapi::openapi_v3_group(&h, q.as_deref())
                },
            ),
        )
        .route("/version", get(|| async { version() }))
        .route("/livez", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self_metrics))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    let router = match auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::middleware,
        )),
        None => router,
    };
    let router = router.layer(axum::middleware::from_fn(bounds));
    let router = if max_inflight == 0 {
        router
    } else {
        router.layer(axum::middleware::from_fn_with_state(
            inflight::Inflight::new(max_inflight, metrics),
            inflight::limit,
        ))
    };
    router.layer(axum::middleware::from_fn_with_state(compat, record))
}

/// Counts and times every answer, refusals included, by verb, resource
/// and code (`apiserver_request_total`, `apiserver_request_duration_seconds`).
async fn record(
    axum::extract::State(compat): axum::extract::State<Arc<crate::metrics::ServerCompatMetrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (verb, resource) = classify(req.method(), req.uri());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    compat.request(
        verb,
        resource,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// kube-apiserver's verb (`LIST`, `GET`, `WATCH`, or the method for other
/// requests) and the metrics resource a request is for ("" for others).
fn classify(method: &http::Method, uri: &http::Uri) -> (&'static str, &'static str) {
    let Some(rest) = uri.path().strip_prefix(V1BETA1) else {
        return (method_verb(method), "");
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (resource, named) = match segments.as_slice() {
        ["nodes"] => ("nodes", false),
        ["nodes", _] => ("nodes", true),
        ["pods"] | ["namespaces", _, "pods"] => ("pods", false),
        ["namespaces", _, "pods", _] => ("pods", true),
        _ => return (method_verb(method), ""),
    };
    let watch = uri.query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| {
            k == "watch" && matches!(v.as_ref(), "1" | "t" | "T" | "true" | "TRUE" | "True")
        })
    });
    let verb = match (method == http::Method::GET, watch, named) {
        (true, true, _) => "WATCH",
        (true, false, true) => "GET",
        (true, false, false) => "LIST",
        (false, ..) => method_verb(method),
    };
    (verb, resource)
}

fn method_verb(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

/// Longest request URI served (selectors are bounded to 8 KiB).
pub const MAX_URI_BYTES: usize = 16 * 1024;
/// Most request headers, and their total size, served. hyper refuses
/// beyond its own, higher limits with a bare answer; these give a Status.
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses oversized URIs and headers with a `Status`, before any work.
async fn bounds(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return ApiError::UriTooLong(MAX_URI_BYTES).into_response();
    }
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return ApiError::HeadersTooLarge("100 fields").into_response();
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge("32768 bytes").into_response();
    }
    next.run(req).await
}

/// `/version` in kube-apiserver's shape (k8s.io/apimachinery's
/// `version.Info`), with this build's version.
fn version() -> Response {
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.split('.');
    let major = parts.next().unwrap_or("0");
    let minor = parts.next().unwrap_or("0");
    let info = serde_json::json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{v}"),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }),
    });
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        info.to_string(),
    )
        .into_response()
}

async fn readyz(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
    if s.draining.is_cancelled() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "[-]shutdown failed: shutting down\nreadyz check failed\n",
        )
            .into_response();
    }
    if s.store.has_data() {
        "ok".into_response()
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "[-]metric-storage-ready failed: no metrics received yet\nreadyz check failed\n",
        )
            .into_response()
    }
}

async fn self_metrics(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
    s.metrics
        .nodes
        .set(i64::try_from(s.store.len()).unwrap_or(i64::MAX));
    let (bytes, pods) = s.store.held();
    s.metrics
        .stored_bytes
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    s.metrics
        .stored_pods
        .set(i64::try_from(pods).unwrap_or(i64::MAX));
    s.cluster.refresh_metrics();
    let (nodes, containers) = s.store.points(std::time::Instant::now());
    for (kind, n) in [("node", nodes), ("container", containers)] {
        s.compat
            .points
            .get_or_create(&[("type", kind)])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    (
        [(
            http::header::CONTENT_TYPE,
            metrics_proto::runtime::METRICS_CONTENT_TYPE,
        )],
        metrics_proto::runtime::encode_metrics(&s.registry),
    )
        .into_response()
}

async fn method_not_allowed(method: http::Method, uri: http::Uri) -> ApiError {
    let resource = if uri.path().contains("/pods") {
        "pods"
    } else {
        "nodes"
    };
    let verb = match method {
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => method.as_str(),
    };
    ApiError::MethodNotSupported {
        verb: verb.to_owned(),
        resource,
    }
}
