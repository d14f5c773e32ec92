//! The agent's own metrics, registered in a registry made at start-up and
//! served as OpenMetrics text on `--metrics-bind-address` with `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use metrics_proto::runtime::{encode_metrics, METRICS_CONTENT_TYPE};

use crate::source::decode::DecodeStats;

type Label1 = [(&'static str, &'static str); 1];
type AggLabel = [(&'static str, String); 2];

/// Everything the agent counts.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// Source reads by `result` (`ok`, `error`).
    pub reads: Family<Label1, Counter>,
    /// Samples or containers dropped while decoding, by `reason`.
    pub dropped: Family<Label1, Counter>,
    /// Acks by `aggregator` and `result` (`accepted`, `refused`).
    pub acks: Family<AggLabel, Counter>,
    /// Stream attempts by `aggregator` and `result` (`ok`, `error`).
    pub streams: Family<AggLabel, Counter>,
    /// Unix time of the last report built, seconds.
    pub last_report: Gauge,
}

impl AgentMetrics {
    /// Creates the metrics and registers them under `metrics_agent_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("metrics_agent");
        sub.register(
            "source_reads",
            "Reads of the sample source, by result",
            m.reads.clone(),
        );
        sub.register(
            "dropped",
            "Samples or containers dropped while decoding, by reason",
            m.dropped.clone(),
        );
        sub.register(
            "acks",
            "Reports answered by aggregators, by result (one accepted answer may cover several reports)",
            m.acks.clone(),
        );
        sub.register(
            "streams",
            "Stream attempts to aggregators, by result",
            m.streams.clone(),
        );
        sub.register(
            "last_report_timestamp_seconds",
            "Unix time of the last report built",
            m.last_report.clone(),
        );
        m
    }

    pub fn read(&self, ok: bool) {
        self.reads
            .get_or_create(&[("result", if ok { "ok" } else { "error" })])
            .inc();
    }

    pub fn decoded(&self, s: &DecodeStats) {
        for (reason, n) in [
            ("malformed_line", s.malformed_lines),
            ("invalid_sample", s.invalid_samples),
            ("incomplete_container", s.incomplete_containers),
            ("incomplete_node", s.incomplete_node),
            ("unmapped_cgroup", s.unmapped_cgroups),
            ("duplicate_sample", s.duplicate_samples),
        ] {
            if n > 0 {
                self.dropped.get_or_create(&[("reason", reason)]).inc_by(n);
            }
        }
    }

    /// Counts `reports` answered by one Ack (an accepted Ack may answer
    /// several).
    pub fn ack(&self, aggregator: &str, accepted: bool, reports: u64) {
        let result = if accepted { "accepted" } else { "refused" };
        self.acks
            .get_or_create(&[
                ("aggregator", aggregator.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc_by(reports);
    }

    pub fn stream(&self, aggregator: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.streams
            .get_or_create(&[
                ("aggregator", aggregator.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = Arc::clone(&registry);
                async move {
                    (
                        [(http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
                        encode_metrics(&registry),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "serving agent metrics");
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "metrics server failed");
    }
}
