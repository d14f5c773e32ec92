//! The aggregator's own metrics, registered in a registry made at start-up
//! and handed down (no globals), served at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
    /// Watches open.
    pub watches: Gauge,
    /// Watch events sent, by `type`.
    pub watch_events: Family<ResultLabel, Counter>,
    /// Watches ended, by `reason`.
    pub watches_ended: Family<ResultLabel, Counter>,
    /// Connections accepted on the gRPC port, by the `lane` serving them
    /// (`ingest`, `peer`).
    pub grpc_connections: Family<ResultLabel, Counter>,
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
        sub.register("watches", "Watches open", m.watches.clone());
        sub.register(
            "watch_events",
            "Watch events sent, by type (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR)",
            m.watch_events.clone(),
        );
        sub.register(
            "watches_ended",
            "Watches ended, by reason (timeout, client_gone, stalled, shutdown, expired)",
            m.watches_ended.clone(),
        );
        sub.register(
            "grpc_connections",
            "Connections accepted on the gRPC port, by the lane serving them (ingest: agents' reports, batched; peer: replicas' queries, on the API's threads)",
            m.grpc_connections.clone(),
        );
        m
    }

    /// Counts one gRPC connection sent to `lane`.
    pub fn grpc_connection(&self, lane: &'static str) {
        self.grpc_connections.get_or_create(&[("lane", lane)]).inc();
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

/// `verb`, `resource` and `code` of `apiserver_request_total`.
type RequestLabels = [(&'static str, String); 3];
/// `verb` and `resource` of `apiserver_request_duration_seconds`.
type DurationLabels = [(&'static str, &'static str); 2];

/// The metrics metrics-server (k8s.io/apiserver) exposes, under its names,
/// where the meaning carries over; no label has per-node or per-pod values.
#[derive(Debug)]
pub struct ServerCompatMetrics {
    /// `metrics_server_storage_points{type="node"|"container"}` (set when scraped).
    pub points: Family<[(&'static str, &'static str); 1], Gauge>,
    /// `metrics_server_api_metric_freshness_seconds`: age of every served
    /// object's sample.
    pub freshness: Histogram,
    /// `apiserver_request_total{verb,resource,code}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `apiserver_request_duration_seconds{verb,resource}`.
    pub durations: Family<DurationLabels, Histogram>,
}

impl ServerCompatMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            points: Family::default(),
            freshness: Histogram::new(exponential_buckets(1.0, 1.364, 20)),
            requests: Family::default(),
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
        };
        let ms = registry.sub_registry_with_prefix("metrics_server");
        ms.register(
            "storage_points",
            "Number of metrics points stored",
            m.points.clone(),
        );
        ms.register(
            "api_metric_freshness_seconds",
            "Freshness of metrics exported",
            m.freshness.clone(),
        );
        let api = registry.sub_registry_with_prefix("apiserver");
        api.register(
            "request",
            "Requests answered, by verb, resource and HTTP code",
            m.requests.clone(),
        );
        api.register(
            "request_duration_seconds",
            "Time to answer a request, by verb and resource",
            m.durations.clone(),
        );
        m
    }

    /// Records one answered request.
    pub fn request(&self, verb: &'static str, resource: &'static str, code: u16, secs: f64) {
        self.requests
            .get_or_create(&[
                ("verb", verb.to_owned()),
                ("resource", resource.to_owned()),
                ("code", code.to_string()),
            ])
            .inc();
        self.durations
            .get_or_create(&[("verb", verb), ("resource", resource)])
            .observe(secs);
    }
}
