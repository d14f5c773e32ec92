//! The replicas this aggregator answers with: static membership from
//! `--peers`, rendezvous ownership from `metrics-proto`, and scatter-gather
//! queries. Each peer call has a deadline; a slow or dead peer costs at most
//! that, and with R ≥ 2 its nodes are still answered by their other owner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tonic::{Request, Response, Status};

use metrics_proto::channel::Dialer;
use metrics_proto::ring;
use metrics_proto::v1::peer_client::PeerClient;
use metrics_proto::v1::peer_server::{Peer, PeerServer};
use metrics_proto::v1::{QueryRequest, QueryResponse};
use metrics_proto::MAX_MESSAGE_BYTES;

use crate::query::{merge, Hit, Kind, Query};
use crate::store::Store;

/// Peer query outcomes, by `peer` and `result`.
type PeerLabels = [(&'static str, String); 2];

/// One other replica.
#[derive(Clone)]
struct PeerConn {
    id: String,
    client: PeerClient<tonic::transport::Channel>,
}

/// Membership and the query fan-out.
pub struct Cluster {
    self_id: String,
    members: Vec<String>,
    peers: Vec<PeerConn>,
    replication: usize,
    deadline: Duration,
    store: Arc<Store>,
    queries: Family<PeerLabels, Counter>,
    latency: Family<[(&'static str, String); 1], Histogram>,
}

fn latency_family() -> Family<[(&'static str, String); 1], Histogram> {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14)))
}

impl Cluster {
    /// A cluster of one: every query is answered locally.
    pub fn single(store: Arc<Store>) -> Self {
        Self {
            self_id: String::new(),
            members: Vec::new(),
            peers: Vec::new(),
            replication: 1,
            deadline: Duration::from_secs(1),
            store,
            queries: Family::default(),
            latency: latency_family(),
        }
    }

    /// `peers` are (ID, dialer) of every member, this one (`self_id`)
    /// included; channels connect lazily.
    pub fn new(
        self_id: String,
        peers: Vec<(String, Dialer)>,
        replication: usize,
        deadline: Duration,
        store: Arc<Store>,
        registry: &mut Registry,
    ) -> Self {
        let members = peers.iter().map(|(id, _)| id.clone()).collect();
        let urls: Vec<(String, String)> = peers
            .iter()
            .map(|(id, d)| (id.clone(), d.url().to_owned()))
            .collect();
        let map = ring::shard_map(&urls, replication);
        let peers = peers
            .into_iter()
            .filter(|(id, _)| *id != self_id)
            .map(|(id, d)| PeerConn {
                id,
                client: PeerClient::new(d.connect_lazy())
                    .max_decoding_message_size(64 * MAX_MESSAGE_BYTES),
            })
            .collect();
        let queries = Family::<PeerLabels, Counter>::default();
        let latency = latency_family();
        let map_info = Family::<[(&'static str, String); 1], Gauge>::default();
        map_info
            .get_or_create(&[("version", format!("{:016x}", map.version))])
            .set(1);
        let members_gauge = Gauge::<i64>::default();
        members_gauge.set(i64::try_from(urls.len()).unwrap_or(i64::MAX));
        let sub = registry.sub_registry_with_prefix("metrics_aggregator");
        sub.register(
            "peer_queries",
            "Queries sent to peer replicas, by peer and result",
            queries.clone(),
        );
        sub.register(
            "peer_query_duration_seconds",
            "Time to a peer's answer (or the deadline)",
            latency.clone(),
        );
        sub.register(
            "shard_map",
            "The shard map in use (its version as a label)",
            map_info,
        );
        sub.register("shard_members", "Replicas in the shard map", members_gauge);
        Self {
            self_id,
            members,
            peers,
            replication,
            deadline,
            store,
            queries,
            latency,
        }
    }

    /// Answers `q` for the whole cluster. A GET for one node asks only its
    /// owners; everything else asks every member.
    pub async fn gather(&self, q: &Query) -> Vec<Hit> {
        let targets: Vec<&PeerConn> = match (&q.kind, &q.name) {
            (Kind::Nodes, Some(node)) => {
                let owners = ring::owners(&self.members, node, self.replication);
                self.peers
                    .iter()
                    .filter(|p| owners.contains(&p.id.as_str()))
                    .collect()
            }
            _ => self.peers.iter().collect(),
        };
        let mut calls = JoinSet::new();
        for p in targets {
            let (mut client, id, req, deadline) = (
                p.client.clone(),
                p.id.clone(),
                q.to_request(),
                self.deadline,
            );
            calls.spawn(async move {
                let mut req = Request::new(req);
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

    /// This replica's ID ("" when alone).
    pub fn self_id(&self) -> &str {
        &self.self_id
    }
}

/// The `Peer` gRPC service: answers from the local store only.
#[derive(Clone)]
pub struct PeerService {
    store: Arc<Store>,
}

impl PeerService {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
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
