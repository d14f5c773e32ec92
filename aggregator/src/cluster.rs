//! The replicas this aggregator answers with: static membership from
//! `--peers`, rendezvous ownership from `metrics-proto`, and scatter-gather
//! queries. Each peer call has a deadline; a slow or dead peer costs at most
//! that, and with R ≥ 2 its nodes are still answered by their other owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tonic::{Request, Response, Status};

use metrics_proto::channel::Dialer;
use metrics_proto::v1::peer_client::PeerClient;
use metrics_proto::v1::peer_server::{Peer, PeerServer};
use metrics_proto::v1::{QueryRequest, QueryResponse};
use metrics_proto::MAX_MESSAGE_BYTES;

use crate::auth::callers::CallerAuth;
use crate::query::{merge, Hit, Kind, Query};
use crate::shard::{Shard, SharedShard};
use crate::store::Store;

/// Peer query outcomes, by `peer` and `result`.
type PeerLabels = [(&'static str, String); 2];

/// Membership and the query fan-out.
pub struct Cluster {
    shard: Option<SharedShard>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Peer channels by URL, made on first use.
    conns: Mutex<HashMap<String, PeerClient<tonic::transport::Channel>>>,
    deadline: Duration,
    store: Arc<Store>,
    queries: Family<PeerLabels, Counter>,
    latency: Family<[(&'static str, String); 1], Histogram>,
    map_info: Family<[(&'static str, String); 1], Gauge>,
    members: Gauge,
    observed: AtomicU64,
    /// ServiceAccount token sent with every peer query.
    token_file: Option<metrics_proto::token::TokenFile>,
}

fn latency_family() -> Family<[(&'static str, String); 1], Histogram> {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14)))
}

impl Cluster {
    /// A cluster of one: every query is answered locally.
    pub fn single(store: Arc<Store>) -> Self {
        Self {
            shard: None,
            tls: None,
            conns: Mutex::default(),
            deadline: Duration::from_secs(1),
            store,
            queries: Family::default(),
            latency: latency_family(),
            map_info: Family::default(),
            members: Gauge::default(),
            observed: AtomicU64::new(0),
            token_file: None,
        }
    }

    /// Queries the members of `shard` (as it is at each query) over TLS
    /// `tls`, each call bounded by `deadline`.
    pub fn new(
        shard: SharedShard,
        tls: Option<Arc<rustls::ClientConfig>>,
        deadline: Duration,
        store: Arc<Store>,
        registry: &mut Registry,
    ) -> Self {
        let c = Self {
            shard: Some(shard),
            tls,
            ..Self::single(store)
        };
        let c = Self { deadline, ..c };
        let sub = registry.sub_registry_with_prefix("metrics_aggregator");
        sub.register(
            "peer_queries",
            "Queries sent to peer replicas, by peer and result",
            c.queries.clone(),
        );
        sub.register(
            "peer_query_duration_seconds",
            "Time to a peer's answer (or the deadline)",
            c.latency.clone(),
        );
        sub.register(
            "shard_map",
            "The shard map in use (its version as a label)",
            c.map_info.clone(),
        );
        sub.register(
            "shard_members",
            "Replicas in the shard map",
            c.members.clone(),
        );
        c.observe();
        c
    }

    /// Sends the token in `path` with every peer query.
    pub fn with_token_file(mut self, path: Option<&std::path::Path>) -> Self {
        self.token_file = path.map(metrics_proto::token::TokenFile::new);
        self
    }

    /// The `authorization` value for peer queries, if a token is configured
    /// and readable.
    async fn authorization(
        &self,
    ) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        match self.token_file.as_ref()?.authorization().await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "peer token");
                None
            }
        }
    }

    /// Brings the map metrics up to date (before a scrape).
    pub fn refresh_metrics(&self) {
        self.observe();
    }

    /// Updates the map metrics when the view changed; returns the view.
    fn observe(&self) -> Option<Arc<Shard>> {
        let shard = self.shard.as_ref()?.get();
        if self.observed.swap(shard.map.version, Ordering::Relaxed) != shard.map.version {
            self.map_info.clear();
            self.map_info
                .get_or_create(&[("version", format!("{:016x}", shard.map.version))])
                .set(1);
            self.members
                .set(i64::try_from(shard.members.len()).unwrap_or(i64::MAX));
        }
        Some(shard)
    }

    fn client(&self, url: &str) -> Option<PeerClient<tonic::transport::Channel>> {
        let mut conns = match self.conns.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = conns.get(url) {
            return Some(c.clone());
        }
        match Dialer::new(url, self.tls.clone()) {
            Ok(d) => {
                let c = PeerClient::new(d.connect_lazy())
                    .max_decoding_message_size(64 * MAX_MESSAGE_BYTES);
                conns.insert(url.to_owned(), c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot query peer");
                None
            }
        }
    }

    /// Answers `q` for the whole cluster. A GET for one node asks only its
    /// owners; everything else asks every member.
    pub async fn gather(&self, q: &Query) -> Vec<Hit> {
        let mut targets: Vec<(String, String)> = Vec::new();
        if let Some(shard) = self.observe() {
            let owners = match (&q.kind, &q.name) {
                (Kind::Nodes, Some(node)) => Some(shard.owners(node)),
                _ => None,
            };
            targets = shard
                .members
                .iter()
                .filter(|(id, _)| *id != shard.self_id)
                .filter(|(id, _)| owners.as_ref().is_none_or(|o| o.contains(id)))
                .cloned()
                .collect();
        }
        let mut calls = JoinSet::new();
        let authorization = if targets.is_empty() {
            None
        } else {
            self.authorization().await
        };
        for (id, url) in targets {
            let Some(mut client) = self.client(&url) else {
                continue;
            };
            let (req, deadline) = (q.to_request(), self.deadline);
            let authorization = authorization.clone();
            calls.spawn(async move {
                let mut req = Request::new(req);
                if let Some(v) = authorization {
                    req.metadata_mut().insert("authorization", v);
                }
                req.set_timeout(deadline);
                let started = tokio::time::Instant::now();
                let r = tokio::time::timeout(deadline, client.query(req)).await;
                (id, r, started.elapsed())
            });
        }
        let mut parts = vec![q.local(&self.store, Instant::now())];
        while let Some(joined) = calls.join_next().await {
            let Ok((id, result, took)) = joined else {
                continue;
            };
            self.latency
                .get_or_create(&[("peer", id.clone())])
                .observe(took.as_secs_f64());
            let outcome = match result {
                Ok(Ok(resp)) => {
                    parts.push(
                        resp.into_inner()
                            .objects
                            .iter()
                            .map(Hit::from_wire)
                            .collect(),
                    );
                    "ok"
                }
                Ok(Err(status)) => {
                    tracing::warn!(peer = %id, error = %status, "peer query failed");
                    "error"
                }
                Err(_) => {
                    tracing::warn!(peer = %id, deadline = ?self.deadline, "peer query timed out");
                    "timeout"
                }
            };
            self.queries
                .get_or_create(&[("peer", id), ("result", outcome.to_owned())])
                .inc();
        }
        merge(parts)
    }
}

/// The `Peer` gRPC service: answers from the local store only.
#[derive(Clone)]
pub struct PeerService {
    store: Arc<Store>,
    callers: Option<Arc<CallerAuth>>,
}

impl PeerService {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            callers: None,
        }
    }

    /// Answers only callers whose token `callers` accepts.
    pub fn with_auth(mut self, callers: Arc<CallerAuth>) -> Self {
        self.callers = Some(callers);
        self
    }

    pub fn into_server(self) -> PeerServer<Self> {
        PeerServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(64 * MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        if let Some(callers) = &self.callers {
            if let Err(status) = callers.check(request.metadata()).await {
                tracing::warn!(peer = ?request.remote_addr(), error = %status.message(), "peer query refused");
                return Err(status);
            }
        }
        let q =
            Query::from_request(request.get_ref()).map_err(|e| Status::invalid_argument(e.0))?;
        let objects = q
            .local(&self.store, Instant::now())
            .iter()
            .map(Hit::to_wire)
            .collect();
        Ok(Response::new(QueryResponse { objects }))
    }
}
