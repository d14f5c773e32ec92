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
use std::pin::Pin;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use metrics_proto::channel::Dialer;
use metrics_proto::v1::peer_client::PeerClient;
use metrics_proto::v1::peer_server::{Peer, PeerServer};
use metrics_proto::v1::{QueryRequest, QueryResponse};
use metrics_proto::MAX_MESSAGE_BYTES;

use crate::auth::callers::CallerAuth;
use crate::query::{dedup, sorted, Hit, Kind, Query};
use crate::shard::{Shard, SharedShard};
use crate::split::{self, Plan};
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
    /// Largest share of nodes a list may miss and still be served.
    max_missing_share: f64,
    /// Partial answers, by `result` (`warned`, `refused`).
    partial: Family<[(&'static str, &'static str); 1], Counter>,
    /// When a partial answer was last logged (seconds on a monotonic clock).
    partial_logged: Mutex<Option<Instant>>,
    /// Checks pods claimed by two nodes; none: the freshest copy wins.
    claims: Option<Arc<crate::claims::PodClaims>>,
    /// Objects received from peers.
    peer_objects: Counter,
}

/// Partial answers are logged at most this often.
const PARTIAL_LOG_EVERY: Duration = Duration::from_secs(10);

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
            max_missing_share: 0.5,
            partial: Family::default(),
            partial_logged: Mutex::new(None),
            claims: None,
            peer_objects: Counter::default(),
        }
    }

    /// Pods claimed by two nodes are checked with `claims`.
    pub fn with_claims(mut self, claims: crate::claims::PodClaims) -> Self {
        self.claims = Some(Arc::new(claims));
        self
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
            "partial_answers",
            "Answers some nodes' owners could not contribute to, by result (warned: served with a Warning header; refused: 503)",
            c.partial.clone(),
        );
        sub.register(
            "peer_objects",
            "Objects received from peer replicas (a list across the cluster takes each node's objects from one replica)",
            c.peer_objects.clone(),
        );
        sub.register(
            "shard_members",
            "Replicas in the shard map",
            c.members.clone(),
        );
        c.observe();
        c
    }

    /// Lists estimated to miss more than `share` of the nodes fail.
    pub fn with_max_missing_share(mut self, share: f64) -> Self {
        self.max_missing_share = share;
        self
    }

    /// Whether a list missing `m` may still be served (with a warning).
    pub fn may_serve_partial(&self, m: &Missing) -> bool {
        m.share <= self.max_missing_share
    }

    /// Counts a partial answer, served with a warning or refused, and logs
    /// it (at most every 10 s).
    pub fn record_partial(&self, m: &Missing, served: bool) {
        let result = if served { "warned" } else { "refused" };
        self.partial.get_or_create(&[("result", result)]).inc();
        let mut last = match self.partial_logged.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if last.is_none_or(|t| t.elapsed() >= PARTIAL_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(peers = ?m.peers, share = m.share, result, "partial answer");
        }
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
        // Peer connections sit idle between queries: pings find a lost
        // one before a query waits on it.
        match Dialer::new(url, self.tls.clone()).map(Dialer::with_keepalive) {
            Ok(d) => {
                let c =
                    PeerClient::new(d.connect_lazy()).max_decoding_message_size(MAX_MESSAGE_BYTES);
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
    /// owners; everything else asks every member. The answer says which
    /// peers did not answer and what share of nodes that may have cost.
    pub async fn gather(&self, q: &Query) -> Gathered {
        let now = Instant::now();
        let mut targets: Vec<(String, String)> = Vec::new();
        let shard = self.observe();
        if let Some(shard) = &shard {
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
        let authorization = if targets.is_empty() {
            None
        } else {
            self.authorization().await
        };
        // A list across the cluster is split (`split.rs`): this replica
        // answers the nodes it holds, each peer only its share of the rest.
        let split = match &shard {
            Some(shard) if !q.is_indexed() && !targets.is_empty() => {
                let held: Vec<u64> = q
                    .live_entries(&self.store, now)
                    .iter()
                    .map(|e| split::node_hash(&e.name))
                    .collect();
                Some(split::first_round(shard, held))
            }
            _ => None,
        };
        let mut calls = JoinSet::new();
        let mut failed: Vec<String> = Vec::new();
        for (id, url) in &targets {
            let mut req = q.to_request();
            req.split = split.clone();
            self.spawn_ask(&mut calls, id, url, req, authorization.clone(), &mut failed);
        }
        let mut parts = Vec::new();
        // Set when this future is dropped (the HTTP caller went away), so
        // the blocking scan stops too.
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _abandoned = Abandoned(Arc::clone(&flag));
        let local = if q.is_indexed() {
            parts.push(q.local(&self.store, now));
            None
        } else {
            let (local_q, store) = (q.clone(), Arc::clone(&self.store));
            let gone = Arc::clone(&flag);
            Some(tokio::task::spawn_blocking(move || {
                local_q
                    .local_until(&store, now, &|| {
                        gone.load(std::sync::atomic::Ordering::Relaxed)
                    })
                    .unwrap_or_default()
            }))
        };
        let lists = self.collect(&mut calls, &mut parts, &mut failed).await;
        if let (Some(shard), Some(first)) = (&shard, &split) {
            let again = split::second_round(&first.held, &lists);
            for (id, only) in again {
                let Some((_, url)) = targets.iter().find(|(t, _)| *t == id) else {
                    continue;
                };
                let mut req = q.to_request();
                req.split = Some(split::only(shard, only));
                self.spawn_ask(
                    &mut calls,
                    &id,
                    url,
                    req,
                    authorization.clone(),
                    &mut failed,
                );
            }
            self.collect(&mut calls, &mut parts, &mut failed).await;
        }
        if let Some(local) = local {
            match local.await {
                Ok(hits) => parts.push(hits),
                Err(e) => tracing::error!(error = %e, "local query failed"),
            }
        }
        let missing = shard
            .as_ref()
            .and_then(|shard| missing_share(shard, q, &failed))
            .map(|share| {
                failed.sort();
                Missing {
                    peers: failed,
                    share,
                }
            });
        let big = !q.is_indexed();
        let mut hits = if big {
            tokio::task::spawn_blocking(move || sorted(parts))
                .await
                .unwrap_or_default()
        } else {
            sorted(parts)
        };
        if let (Kind::Pods, Some(claims)) = (&q.kind, &self.claims) {
            claims.settle(&mut hits).await;
        }
        dedup(&mut hits);
        Gathered { hits, missing }
    }

    /// Starts asking peer `id` at `url`; a peer that cannot be dialled is
    /// counted as failed at once.
    fn spawn_ask(
        &self,
        calls: &mut JoinSet<(String, Result<Answer, PeerError>, Duration)>,
        id: &str,
        url: &str,
        req: QueryRequest,
        authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
        failed: &mut Vec<String>,
    ) {
        let Some(client) = self.client(url) else {
            failed.push(id.to_owned());
            return;
        };
        let (id, deadline) = (id.to_owned(), self.deadline);
        calls.spawn(async move {
            let started = tokio::time::Instant::now();
            let r = ask(client, req, authorization, deadline).await;
            (id, r, started.elapsed())
        });
    }

    /// Waits for every call in `calls`: objects go to `parts`, peers that
    /// failed to `failed`; returns each answering peer's split lists as
    /// (peer, covered, deferred).
    async fn collect(
        &self,
        calls: &mut JoinSet<(String, Result<Answer, PeerError>, Duration)>,
        parts: &mut Vec<Vec<Hit>>,
        failed: &mut Vec<String>,
    ) -> Vec<(String, Vec<u64>, Vec<u64>)> {
        let mut lists = Vec::new();
        while let Some(joined) = calls.join_next().await {
            let Ok((id, result, took)) = joined else {
                continue;
            };
            self.latency
                .get_or_create(&[("peer", id.clone())])
                .observe(took.as_secs_f64());
            let outcome = match result {
                Ok(answer) => {
                    self.peer_objects.inc_by(answer.hits.len() as u64);
                    parts.push(answer.hits);
                    lists.push((id.clone(), answer.covered, answer.deferred));
                    "ok"
                }
                Err(PeerError::Status(status)) => {
                    tracing::warn!(peer = %id, error = %status, "peer query failed");
                    failed.push(id.clone());
                    "error"
                }
                Err(PeerError::Timeout) => {
                    tracing::warn!(peer = %id, deadline = ?self.deadline, "peer query timed out");
                    failed.push(id.clone());
                    "timeout"
                }
            };
            self.queries
                .get_or_create(&[("peer", id), ("result", outcome.to_owned())])
                .inc();
        }
        // The same order whatever order the answers came in.
        lists.sort_by(|a, b| a.0.cmp(&b.0));
        lists
    }
}

/// An answer from the whole cluster.
#[derive(Debug, Default)]
pub struct Gathered {
    pub hits: Vec<Hit>,
    /// Set when some nodes' owners could not answer.
    pub missing: Option<Missing>,
}

/// What a partial answer lacks.
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    /// Replicas that did not answer, sorted.
    pub peers: Vec<String>,
    /// Estimated share of nodes none of whose owners answered (0 to 1]; 1
    /// for a node GET whose every owner failed.
    pub share: f64,
}

impl Missing {
    /// The text for a `Warning` header or a Status message.
    pub fn describe(&self) -> String {
        format!(
            "replicas {} did not answer: about {:.0}% of nodes may be missing from this answer",
            self.peers.join(", "),
            self.share * 100.0
        )
    }
}

/// Share of nodes whose every owner is among `failed` (this replica always
/// answers). Under rendezvous hashing every set of R owners is equally
/// likely, so it is C(|failed|, R) / C(members, R); for a node GET it is 1
/// or 0 for that node's owners. `None` when nothing can be missing.
pub fn missing_share(shard: &Shard, q: &Query, failed: &[String]) -> Option<f64> {
    if failed.is_empty() {
        return None;
    }
    if let (Kind::Nodes, Some(node)) = (&q.kind, &q.name) {
        let owners = shard.owners(node);
        return owners.iter().all(|o| failed.contains(o)).then_some(1.0);
    }
    let n = shard.members.len();
    let r = shard.replication().min(n);
    let f = failed.len().min(n);
    if r == 0 || f < r {
        return None;
    }
    // C(f, r) / C(n, r) = Π_{i<r} (f − i) / (n − i)
    let share = (0..r).fold(1.0, |acc, i| acc * (f - i) as f64 / (n - i) as f64);
    (share > 0.0).then_some(share)
}

/// One peer's answer: its objects and, for a split list, the nodes it
/// covered and the nodes it left to another owner.
#[derive(Default)]
struct Answer {
    hits: Vec<Hit>,
    covered: Vec<u64>,
    deferred: Vec<u64>,
}

/// Why a peer's answer is missing.
enum PeerError {
    Status(Status),
    Timeout,
}

/// How much longer than one chunk's deadline a whole answer may take.
const ANSWER_DEADLINES: u32 = 30;

/// Asks one peer: the first chunk and each later one within `deadline`,
/// the whole answer within `ANSWER_DEADLINES` of them.
async fn ask(
    mut client: PeerClient<tonic::transport::Channel>,
    req: QueryRequest,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    deadline: Duration,
) -> Result<Answer, PeerError> {
    let whole = deadline * ANSWER_DEADLINES;
    let mut req = Request::new(req);
    if let Some(v) = authorization {
        req.metadata_mut().insert("authorization", v);
    }
    req.set_timeout(whole);
    let answer = async {
        let mut stream = tokio::time::timeout(deadline, client.query(req))
            .await
            .map_err(|_| PeerError::Timeout)?
            .map_err(PeerError::Status)?
            .into_inner();
        let mut answer = Answer::default();
        loop {
            match tokio::time::timeout(deadline, stream.message()).await {
                Err(_) => return Err(PeerError::Timeout),
                Ok(Err(status)) => return Err(PeerError::Status(status)),
                Ok(Ok(None)) => return Ok(answer),
                Ok(Ok(Some(chunk))) => {
                    answer
                        .hits
                        .extend(chunk.objects.into_iter().map(Hit::from_wire));
                    answer.covered.extend(chunk.covered);
                    answer.deferred.extend(chunk.deferred);
                }
            }
        }
    };
    tokio::time::timeout(whole, answer)
        .await
        .unwrap_or(Err(PeerError::Timeout))
}

/// The `Peer` gRPC service: answers from the local store only.
#[derive(Clone)]
pub struct PeerService {
    store: Arc<Store>,
    callers: Option<Arc<CallerAuth>>,
    /// This replica's view, for the askers' splits (none: not sharded).
    shard: Option<SharedShard>,
}

impl PeerService {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            callers: None,
            shard: None,
        }
    }

    /// Answers split lists under the view in `shard`.
    pub fn with_shard(mut self, shard: Option<SharedShard>) -> Self {
        self.shard = shard;
        self
    }

    /// Answers only callers whose token `callers` accepts.
    pub fn with_auth(mut self, callers: Arc<CallerAuth>) -> Self {
        self.callers = Some(callers);
        self
    }

    pub fn into_server(self) -> PeerServer<Self> {
        PeerServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Rendered bytes per answer chunk: well under the message bound, large
/// enough that a 150,000-pod answer is a few hundred messages.
const CHUNK_BYTES: usize = 512 * 1024;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<QueryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type QueryStream = ChunkStream;

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        if let Some(callers) = &self.callers {
            if let Err(status) = callers.check(request.metadata()).await {
                tracing::warn!(peer = ?request.remote_addr(), error = %status.message(), "peer query refused");
                return Err(status);
            }
        }
        let mut q =
            Query::from_request(request.get_ref()).map_err(|e| Status::invalid_argument(e.0))?;
        if q.is_indexed() {
            let mut chunks = Vec::new();
            send_chunks(q.local(&self.store, Instant::now()), None, |c| {
                chunks.push(Ok(c));
                true
            });
            return Ok(Response::new(Box::pin(tokio_stream::iter(chunks))));
        }
        let split = request.into_inner().split;
        let shard = self.shard.as_ref().map(SharedShard::get);
        let store = Arc::clone(&self.store);
        // Two chunks in flight at most: a slow asker slows the answer, and
        // one that goes away ends it.
        let (tx, rx) = mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let now = Instant::now();
            let lists = split.map(|split| {
                let entries = q.live_entries(&store, now);
                let plan = Plan::new(
                    &split,
                    shard.as_deref(),
                    entries.iter().map(|e| e.name.as_str()),
                );
                q.only_nodes = Some(Arc::new(plan.send));
                (plan.covered, plan.deferred)
            });
            // Stops matching, not only sending, once the asker is gone.
            let asker = tx.clone();
            let Some(hits) = q.local_until(&store, now, &|| asker.is_closed()) else {
                return;
            };
            send_chunks(hits, lists, |c| tx.blocking_send(Ok(c)).is_ok());
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Raises its flag when dropped.
struct Abandoned(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Cuts `hits` into chunks of about [`CHUNK_BYTES`] and hands each to
/// `send` until it returns false; an empty answer is one empty chunk. The
/// first chunk carries a split's `(covered, deferred)` lists.
fn send_chunks(
    hits: Vec<Hit>,
    lists: Option<(Vec<u64>, Vec<u64>)>,
    mut send: impl FnMut(QueryResponse) -> bool,
) {
    let (mut covered, mut deferred) = lists.unwrap_or_default();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    let mut response = |objects| QueryResponse {
        objects,
        covered: std::mem::take(&mut covered),
        deferred: std::mem::take(&mut deferred),
    };
    let empty = hits.is_empty();
    for h in hits {
        bytes += h.rendered.len() + h.pb.as_ref().map_or(0, Vec::len);
        chunk.push(h.into_wire());
        if bytes >= CHUNK_BYTES {
            bytes = 0;
            if !send(response(std::mem::take(&mut chunk))) {
                return;
            }
        }
    }
    if !chunk.is_empty() || empty {
        send(response(chunk));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(n: usize, r: usize) -> Shard {
        let members = (0..n)
            .map(|i| (format!("agg-{i}"), format!("https://10.0.0.{i}:10251")))
            .collect();
        Shard::new("agg-0".into(), members, r)
    }

    fn list() -> Query {
        Query::new(Kind::Pods, None, None, "", "").unwrap()
    }

    fn failed(ids: &[usize]) -> Vec<String> {
        ids.iter().map(|i| format!("agg-{i}")).collect()
    }

    #[test]
    fn share_of_nodes_whose_owners_all_failed() {
        // Fewer failures than owners: every node still has an owner.
        assert_eq!(missing_share(&shard(3, 2), &list(), &failed(&[1])), None);
        assert_eq!(missing_share(&shard(3, 2), &list(), &[]), None);
        // R=1: each failed replica takes its share.
        let s = missing_share(&shard(3, 1), &list(), &failed(&[2])).unwrap();
        assert!((s - 1.0 / 3.0).abs() < 1e-9, "{s}");
        // R=2 of 3, two failed: one owner pair of three.
        let s = missing_share(&shard(3, 2), &list(), &failed(&[1, 2])).unwrap();
        assert!((s - 1.0 / 3.0).abs() < 1e-9, "{s}");
        // R=2 of 5, three failed: C(3,2)/C(5,2) = 3/10.
        let s = missing_share(&shard(5, 2), &list(), &failed(&[1, 2, 3])).unwrap();
        assert!((s - 0.3).abs() < 1e-9, "{s}");
        // Full replication never misses anything this replica holds.
        assert_eq!(missing_share(&shard(3, 3), &list(), &failed(&[1, 2])), None);
    }

    #[test]
    fn node_get_misses_only_when_its_owners_all_failed() {
        let s = shard(3, 1);
        let node = (0..100)
            .map(|i| format!("node-{i}"))
            .find(|n| s.owners(n) == ["agg-2"])
            .unwrap();
        let get = Query::new(Kind::Nodes, None, Some(node), "", "").unwrap();
        assert_eq!(missing_share(&s, &get, &failed(&[2])), Some(1.0));
        assert_eq!(missing_share(&s, &get, &failed(&[1])), None);
    }
}
