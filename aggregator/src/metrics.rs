//! The aggregator's own metrics, registered in a registry made at start-up
//! and handed down (no globals), served at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `result` label of report counters.
pub type ResultLabel = [(&'static str, &'static str); 1];

/// Metrics of ingest and the store.
#[derive(Debug, Default)]
pub struct AggregatorMetrics {
    /// Reports received, by `result` (`accepted`, `refused`).
    pub reports: Family<ResultLabel, Counter>,
    /// Agent streams currently open.
    pub streams: Gauge,
    /// Nodes held (set when scraped).
    pub nodes: Gauge,
    /// Estimated bytes and pods held (set when scraped).
    pub stored_bytes: Gauge,
    pub stored_pods: Gauge,
    /// Agent streams ended by authentication or authorization, by gRPC `code`.
    pub refused_streams: Family<ResultLabel, Counter>,
    /// Parts of accepted reports left out, by `part` (`pod`, `node_labels`,
    /// `pods_over_limit`), counted once per report.
    pub dropped: Family<ResultLabel, Counter>,
    /// Connections, requests and streams refused or closed by a bound, by
    /// `limit`.
    pub limits: Family<ResultLabel, Counter>,
}

impl AggregatorMetrics {
    /// Creates the metrics and registers them under `metrics_aggregator_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("metrics_aggregator");
        sub.register(
            "reports",
            "Node reports received from agents, by result",
            m.reports.clone(),
        );
        sub.register(
            "agent_streams",
            "Agent streams currently open",
            m.streams.clone(),
        );
        sub.register(
            "nodes",
            "Nodes with data in the store, expired ones until swept",
            m.nodes.clone(),
        );
        sub.register(
            "stored_bytes",
            "Estimated bytes of node and pod data held, against --max-stored-bytes",
            m.stored_bytes.clone(),
        );
        sub.register(
            "stored_pods",
            "Pods held, against --max-stored-pods",
            m.stored_pods.clone(),
        );
        sub.register(
            "report_parts_dropped",
            "Parts of accepted reports left out (a pod, the node's labels, pods over the limit), by part",
            m.dropped.clone(),
        );
        sub.register(
            "agent_streams_refused",
            "Agent streams refused for their identity, by gRPC code",
            m.refused_streams.clone(),
        );
        sub.register(
            "limits_hit",
            "Connections, requests, streams and reports refused or closed by a bound (max_connections, handshakes, max_requests_inflight, silent_stream, memory_budget), by limit",
            m.limits.clone(),
        );
        m
    }

    /// Counts one refusal or closing by the bound `limit`.
    pub fn limit(&self, limit: &'static str) {
        self.limits.get_or_create(&[("limit", limit)]).inc();
    }

    pub fn refused_stream(&self, code: tonic::Code) {
        let code = match code {
            tonic::Code::Unauthenticated => "Unauthenticated",
            tonic::Code::PermissionDenied => "PermissionDenied",
            tonic::Code::Unavailable => "Unavailable",
            _ => "Other",
        };
        self.refused_streams.get_or_create(&[("code", code)]).inc();
    }

    pub fn dropped(&self, part: &'static str) {
        self.dropped.get_or_create(&[("part", part)]).inc();
    }

    pub fn report(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        self.reports.get_or_create(&[("result", result)]).inc();
    }
}
