//! `--max-requests-inflight`: past that many requests being answered at
//! once, a request gets 429 with a `Retry-After`, as kube-apiserver
//! answers, instead of queueing work the server cannot keep up with.
//! Health checks are never refused, so liveness does not depend on load.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::status::ApiError;
use crate::metrics::AggregatorMetrics;
use metrics_proto::runtime::LogThrottle;

/// The shared limit.
#[derive(Debug)]
pub struct Inflight {
    slots: Arc<Semaphore>,
    metrics: Arc<AggregatorMetrics>,
    log: LogThrottle,
}

impl Inflight {
    pub fn new(max: usize, metrics: Arc<AggregatorMetrics>) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max)),
            metrics,
            log: LogThrottle::new(std::time::Duration::from_secs(60)),
        })
    }
}

fn exempt(path: &str) -> bool {
    matches!(path, "/livez" | "/healthz" | "/readyz")
}

/// Middleware: holds a slot while the handler runs.
pub async fn limit(State(l): State<Arc<Inflight>>, req: Request, next: Next) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let Ok(slot) = Arc::clone(&l.slots).try_acquire_owned() else {
        l.metrics.limit("max_requests_inflight");
        if l.log.ready() {
            tracing::warn!("requests refused with 429: --max-requests-inflight reached (logged at most once a minute)");
        }
        return ApiError::TooManyRequests.into_response();
    };
    let response = next.run(req).await;
    drop(slot);
    response
}
