//! The HTTPS API: metrics.k8s.io/v1beta1, discovery and health endpoints.

pub mod discovery;
pub mod inflight;
pub mod metrics;
pub mod selector;
pub mod status;

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
    pub registry: Arc<prometheus_client::registry::Registry>,
}

const V1BETA1: &str = "/apis/metrics.k8s.io/v1beta1";

/// The full router; every request goes through `auth` when given, and
/// first through the `max_inflight` limit (0: none).
pub fn router(
    state: AppState,
    auth: Option<Arc<crate::auth::Auth>>,
    max_inflight: usize,
) -> Router {
    let metrics = Arc::clone(&state.metrics);
    let router = Router::new()
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
    if max_inflight == 0 {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(
        inflight::Inflight::new(max_inflight, metrics),
        inflight::limit,
    ))
}

async fn readyz(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
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
