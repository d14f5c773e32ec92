//! The gRPC `Ingest` service: each report of an agent stream checked,
//! rendered and stored, and answered with an Ack. A stream serves
//! one node: the first accepted report binds it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

use metrics_proto::v1::aggregator_message::Kind;
use metrics_proto::v1::{Ack, AggregatorMessage, NodeReport};

use crate::ack_pace::{AckPace, Decision};
use crate::auth::callers::{wrong_node, Caller, CallerAuth};
use crate::ingest_wire::{frame, Outgoing, ReportReader};
use crate::labelset::{Interner, StreamLabels};
use crate::metrics::AggregatorMetrics;
use crate::report::{refresh_in_place, to_entry_with, Dropped, ReportError};
use crate::report_decode;
use crate::shard::SharedShard;
use crate::store::Store;

/// The service: a plain struct over the store.
#[derive(Clone)]
pub struct IngestService {
    store: Arc<Store>,
    shard: Option<SharedShard>,
    agents: Option<Arc<CallerAuth>>,
    /// How often an open stream's token is reviewed again.
    recheck: Duration,
    metrics: Arc<AggregatorMetrics>,
    expiry_periods: u32,
    cancel: CancellationToken,
    /// Label sets shared by every stream.
    interner: Arc<Interner>,
    /// What the store may hold.
    budget: crate::store::Budget,
    /// Serve `swap` beside cpu and memory (`--extra-resources=swap`).
    swap: bool,
}

impl IngestService {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<AggregatorMetrics>,
        expiry_periods: u32,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            store,
            shard: None,
            agents: None,
            recheck: Duration::from_secs(300),
            metrics,
            expiry_periods,
            cancel,
            interner: Arc::default(),
            budget: crate::store::Budget::UNLIMITED,
            swap: false,
        }
    }

    /// Objects of nodes stored from now on serve `swap` in their usage.
    pub fn with_swap(mut self, swap: bool) -> Self {
        self.swap = swap;
        self
    }

    /// Bounds what the store holds (`--max-stored-bytes`, `--max-stored-pods`).
    pub fn with_budget(mut self, budget: crate::store::Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Stores only the nodes the current view owns and tells agents the
    /// shard map (again whenever it changes).
    pub fn with_shard(mut self, shard: SharedShard) -> Self {
        self.shard = Some(shard);
        self
    }

    /// Accepts only streams carrying an allowed agent's token, and from a
    /// token bound to a node only reports for that node.
    /// An open stream's token is reviewed again every `recheck`; the
    /// stream ends once it is no longer accepted.
    pub fn with_agent_auth(mut self, agents: Arc<CallerAuth>, recheck: Duration) -> Self {
        self.agents = Some(agents);
        self.recheck = recheck;
        self
    }

    /// Handles one report of `stream`; returns the Ack to send. A report
    /// with the stored entry's shape (the usual one) is written into that
    /// entry in place ([`refresh_in_place`]); any other is built into a
    /// new entry that replaces it.
    pub fn handle(&self, report: NodeReport, stream: &mut StreamState) -> Ack {
        let sequence = report.sequence;
        let (now, wall) = (Instant::now(), wall_ns());
        let resolved = stream
            .labels
            .resolve(&report, &self.interner)
            .map_err(ReportError::from);
        if let Ok(labels) = &resolved {
            let owned = self
                .shard
                .as_ref()
                .is_none_or(|s| s.get().owns(&report.node_name));
            let refreshed = owned
                && self.store.update_in_place(&report.node_name, |e| {
                    let done = refresh_in_place(
                        e,
                        &report,
                        labels,
                        stream.bound.as_deref(),
                        now,
                        Some(wall),
                        self.expiry_periods,
                    );
                    if done {
                        e.swap = self.swap;
                    }
                    done
                });
            if refreshed {
                let ack = self.accepted(&report.node_name, &[], sequence, stream);
                // Its buffers decode the next report on this thread.
                report_decode::recycle(report);
                return ack;
            }
        }
        let checked = resolved
            .and_then(|labels| {
                to_entry_with(
                    report,
                    labels,
                    stream.bound.as_deref(),
                    now,
                    Some(wall),
                    self.expiry_periods,
                )
            })
            .and_then(
                |(e, dropped)| match self.shard.as_ref().map(SharedShard::get) {
                    Some(shard) if !shard.owns(&e.name) => Err(ReportError::NotOwner {
                        node: e.name,
                        shard: shard.self_id.clone(),
                    }),
                    _ => Ok((e, dropped)),
                },
            )
            .map(|(mut e, dropped)| {
                e.swap = self.swap;
                (e, dropped)
            });
        match checked {
            Ok((entry, dropped)) => {
                let name = entry.name.clone();
                if let Err(e) = self.store.insert_within(entry, &self.budget) {
                    self.metrics.report(false);
                    self.metrics.limit("memory_budget");
                    // Once per stream until a report fits again.
                    if !std::mem::replace(&mut stream.budget_warned, true) {
                        tracing::warn!(node = %name, error = %e, "report refused: memory budget");
                    }
                    return Ack {
                        sequence,
                        accepted: false,
                        error: ReportError::from(e).to_string(),
                    };
                }
                self.accepted(&name, &dropped, sequence, stream)
            }
            Err(e) => {
                self.metrics.report(false);
                tracing::warn!(node = ?stream.bound, error = %e, "refused report");
                Ack {
                    sequence,
                    accepted: false,
                    error: e.to_string(),
                }
            }
        }
    }

    /// The Ack of a stored report (binding the stream to its node at the
    /// first), counting and noting what it left out.
    fn accepted(
        &self,
        name: &str,
        dropped: &[Dropped],
        sequence: u64,
        stream: &mut StreamState,
    ) -> Ack {
        stream.budget_warned = false;
        let note = self.note_dropped(name, dropped, &mut stream.warned);
        if stream.bound.is_none() {
            tracing::info!(node = %name, "agent stream bound to node");
            stream.bound = Some(name.to_string());
        }
        self.metrics.report(true);
        Ack {
            sequence,
            accepted: true,
            error: note,
        }
    }
}

impl IngestService {
    /// Counts what an accepted report lost, logs each part once per stream
    /// (not every period), and returns the note for the agent's Ack.
    fn note_dropped(
        &self,
        node: &str,
        dropped: &[Dropped],
        warned: &mut std::collections::HashSet<String>,
    ) -> String {
        for d in dropped {
            self.metrics.dropped(d.part.label());
            if warned.len() < WARNED_MAX && warned.insert(d.what.clone()) {
                tracing::warn!(node, dropped = %d.what, reason = %d.reason, "left out of an accepted report; the rest is served");
            }
        }
        match dropped {
            [] => String::new(),
            [one] => format!("accepted without {one}"),
            [first, rest @ ..] => format!("accepted without {first} and {} more", rest.len()),
        }
    }
}

/// This replica's clock, ns since the epoch.
fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// What one agent stream remembers between reports.
#[derive(Debug, Default)]
pub struct StreamState {
    /// The node the stream reports for, from its first accepted report.
    pub bound: Option<String>,
    /// The labels it last carried.
    labels: StreamLabels,
    /// Dropped parts already logged on this stream (bounded).
    warned: std::collections::HashSet<String>,
    /// The period the agent last announced.
    period: Option<Duration>,
    /// Whether a refusal for the memory budget was logged since the last
    /// report that fit.
    budget_warned: bool,
}

/// How long a stream may stay silent before its first report.
pub const FIRST_REPORT_WAIT: Duration = Duration::from_secs(60);
/// After it, as long as the node's data lasts (its expiry), and never
/// less than this, so a short stall does not cost a reconnect.
pub const MIN_SILENCE: Duration = Duration::from_secs(10);

/// Most dropped parts remembered per stream for logging once each.
const WARNED_MAX: usize = 1024;

impl IngestService {
    /// Opens one agent stream (`request` carries its metadata, `inbound`
    /// its reports): checks the caller, then returns the stream's answers.
    /// The stream has no task of its own: the response body pulls each
    /// answer, and pulling one reads, stores and acknowledges the next
    /// report. So a report is handled on the task that sends its Ack, with
    /// no hand-over between tasks, and an agent that stops reading its
    /// Acks (the HTTP/2 window full) stops being read.
    pub async fn open<B>(
        &self,
        request: Request<()>,
        inbound: ReportReader<B>,
    ) -> Result<Answers, Status>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let peer = request.remote_addr();
        let identity: Option<Caller> = match &self.agents {
            None => None,
            Some(agents) => match agents.check(request.metadata()).await {
                Ok(id) => Some(id),
                Err(status) => {
                    self.metrics.refused_stream(status.code());
                    tracing::warn!(?peer, error = %status.message(), "agent stream refused");
                    return Err(status);
                }
            },
        };
        self.metrics.streams.inc();
        let session = Session {
            service: self.clone(),
            inbound,
            identity,
            state: StreamState::default(),
            map_sent: None,
            checked: Instant::now(),
            ended: false,
            pace: AckPace::default(),
        };
        let answers = futures::stream::unfold(session, |mut s| async move {
            let out = s.next().await?;
            Some((out, s))
        });
        Ok(Answers {
            answers: Box::pin(answers),
            span: tracing::info_span!("ingest", ?peer),
        })
    }
}

/// What goes back on one agent stream, in order: a framed message (a
/// shard map and an Ack, or an Ack), then at most one status that ends
/// it. Each answer is worked out when it is asked for.
pub struct Answers {
    answers: Pin<Box<dyn Stream<Item = Outgoing> + Send>>,
    /// Entered while the stream's work runs, so its log lines carry the
    /// agent's address.
    span: tracing::Span,
}

impl Stream for Answers {
    type Item = Outgoing;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        this.answers.as_mut().poll_next(cx)
    }
}

/// One agent stream being served.
struct Session<B> {
    service: IngestService,
    inbound: ReportReader<B>,
    identity: Option<Caller>,
    state: StreamState,
    /// Version of the shard map last sent.
    map_sent: Option<u64>,
    /// When the caller's token was last reviewed.
    checked: Instant,
    ended: bool,
    /// When Acks go out ([`AckPace`]).
    pace: AckPace,
}

impl<B> Drop for Session<B> {
    fn drop(&mut self) {
        self.service.metrics.streams.dec();
    }
}

impl<B> Session<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The next answer; `None` once the stream is over.
    async fn next(&mut self) -> Option<Outgoing> {
        if self.ended {
            return None;
        }
        let out = self.step().await;
        if !matches!(out, Some(Ok(_))) {
            self.ended = true;
        }
        out
    }

    /// Reads reports until one is to be answered (every one, unless the
    /// agent set `answer_within_ms`: [`AckPace`]), or a held answer falls
    /// due; an error ends the stream with that status, `None` ends it
    /// quietly (the agent closed its side).
    async fn step(&mut self) -> Option<Outgoing> {
        loop {
            match self.read_one().await {
                Step::Answer(out) => return Some(out),
                Step::End => return None,
                Step::Held => {}
            }
        }
    }

    /// Reads and handles one report, or sends a held Ack that fell due.
    async fn read_one(&mut self) -> Step {
        let this = &self.service;
        let silence = self.state.period.map_or(FIRST_REPORT_WAIT, |p| {
            (p * this.expiry_periods).max(MIN_SILENCE)
        });
        let due = self.pace.due();
        let held_due = async {
            match due {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => std::future::pending().await,
            }
        };
        let msg = tokio::select! {
            // Agents reconnect elsewhere at once, and say why.
            _ = this.cancel.cancelled() => {
                return Step::Answer(Err(Status::unavailable(
                    "this replica is shutting down; reconnect",
                )));
            }
            // No report came to carry the held Ack: it goes alone.
            () = held_due => {
                return match self.pace.take_held() {
                    Some(ack) => Step::Answer(Ok(frame(&AggregatorMessage {
                        kind: Some(Kind::Ack(ack)),
                    }))),
                    None => Step::Held,
                };
            }
            m = tokio::time::timeout(silence, self.inbound.message()) => match m {
                Ok(m) => m,
                Err(_) => {
                    // A stream that stopped reporting holds a connection
                    // and its buffers for nothing.
                    this.metrics.limit("silent_stream");
                    tracing::info!(node = ?self.state.bound, "agent stream closed: no report for {silence:?}");
                    return Step::Answer(Err(Status::deadline_exceeded(format!(
                        "no report for {silence:?}; closing the stream"
                    ))));
                }
            },
        };
        let report = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return Step::End,
            Err(e) => {
                tracing::info!(node = ?self.state.bound, error = %e, "agent stream ended");
                // Tell the agent why (e.g. an oversized message).
                return Step::Answer(Err(e));
            }
        };
        if let (Some(agents), Some(id)) = (&this.agents, &self.identity) {
            if self.checked.elapsed() >= this.recheck {
                // Boxed: a review is rare (every `recheck`) and its future
                // large; inline, every stream would carry its size for life.
                if let Err(status) = Box::pin(agents.recheck(id)).await {
                    this.metrics.refused_stream(status.code());
                    tracing::warn!(node = ?self.state.bound, error = %status.message(), "agent stream ended: token no longer accepted");
                    return Step::Answer(Err(status));
                }
                self.checked = Instant::now();
            }
        }
        if let Some(status) = self
            .identity
            .as_ref()
            .and_then(|id| wrong_node(id, &report.node_name))
        {
            this.metrics.refused_stream(status.code());
            tracing::warn!(error = %status.message(), "agent stream refused");
            return Step::Answer(Err(status));
        }
        let mut map = None;
        if let Some(shard) = this.shard.as_ref().map(SharedShard::get) {
            if self.map_sent != Some(shard.map.version) {
                map = Some(frame(&AggregatorMessage {
                    kind: Some(Kind::ShardMap(shard.map.clone())),
                }));
                self.map_sent = Some(shard.map.version);
            }
        }
        let period = Duration::from_millis(report.period_ms);
        let answer_within = Duration::from_millis(report.answer_within_ms);
        let ack = this.handle(report, &mut self.state);
        if ack.accepted {
            self.state.period = Some(period);
        }
        // A new shard map goes at once, with the Ack.
        let decided = self
            .pace
            .decide(ack, Instant::now(), period, answer_within, map.is_some());
        let ack = match decided {
            Decision::Send(ack) => frame(&AggregatorMessage {
                kind: Some(Kind::Ack(ack)),
            }),
            Decision::Hold { .. } => return Step::Held,
        };
        Step::Answer(Ok(match map {
            // Both messages in one DATA frame, the map first.
            Some(map) => {
                let mut both = BytesMut::with_capacity(map.len() + ack.len());
                both.extend_from_slice(&map);
                both.extend_from_slice(&ack);
                both.freeze()
            }
            None => ack,
        }))
    }
}

/// What reading one report came to.
enum Step {
    /// Send this (an answer, or the status that ends the stream).
    Answer(Outgoing),
    /// The agent closed its side.
    End,
    /// The report's Ack is held ([`AckPace`]).
    Held,
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_proto::v1::{ContainerUsage, PodUsage, Usage};
    use metrics_proto::{MAX_CONTAINERS_PER_POD, PROTOCOL_VERSION};

    fn ts() -> i64 {
        wall_ns() - 2_000_000_000
    }

    fn pod(name: &str, containers: usize) -> PodUsage {
        PodUsage {
            namespace: "ns".into(),
            name: name.into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            timestamp_unix_nanos: ts(),
            window_nanos: 15_000_000_000,
            containers: (0..containers)
                .map(|i| ContainerUsage {
                    name: format!("c{i}"),
                    cpu_nanocores: 1,
                    memory_working_set_bytes: 1024,
                    swap_bytes: 0,
                })
                .collect(),
        }
    }

    fn service() -> (
        IngestService,
        Arc<Store>,
        prometheus_client::registry::Registry,
    ) {
        let store = Arc::new(Store::new());
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(AggregatorMetrics::register(&mut registry));
        let svc = IngestService::new(Arc::clone(&store), metrics, 3, CancellationToken::new());
        (svc, store, registry)
    }

    fn scrape(registry: &prometheus_client::registry::Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn a_bad_pod_or_oversized_node_labels_drop_only_themselves() {
        let (svc, store, registry) = service();
        let mut state = StreamState::default();
        let mut node_labels = std::collections::HashMap::new();
        // Node Feature Discovery labels nodes by the hundred.
        for i in 0..300 {
            node_labels.insert(
                format!("feature.node.kubernetes.io/f{i}"),
                "true".to_string(),
            );
        }
        let report = NodeReport {
            protocol_version: PROTOCOL_VERSION,
            node_name: "node-a".into(),
            period_ms: 15_000,
            node_labels,
            node: Some(Usage {
                timestamp_unix_nanos: ts(),
                window_nanos: 15_000_000_000,
                cpu_nanocores: 5,
                memory_working_set_bytes: 1024,
                swap_bytes: 0,
            }),
            pods: vec![
                pod("good-1", 2),
                pod("Not_A_DNS_Name", 1),
                pod("too-many-containers", MAX_CONTAINERS_PER_POD + 44),
                pod("good-2", 1),
            ],
            ..Default::default()
        };
        for _ in 0..3 {
            let ack = svc.handle(report.clone(), &mut state);
            assert!(ack.accepted, "{}", ack.error);
            assert!(ack.error.starts_with("accepted without "), "{}", ack.error);
            assert!(ack.error.ends_with("and 2 more"), "{}", ack.error);
        }
        let now = Instant::now();
        let node = store.node("node-a", now).expect("the node is served");
        assert!(node.node.is_some());
        assert_eq!(node.labels.iter().count(), 0, "its labels were dropped");
        let kept: Vec<&str> = node.pods.iter().map(|p| p.name()).collect();
        assert_eq!(kept, ["good-1", "good-2"]);
        assert_eq!(node.pods[0].labels.get("app"), Some("web"));
        let text = scrape(&registry);
        for (part, n) in [("pod", 6), ("node_labels", 3)] {
            let line =
                format!("metrics_aggregator_report_parts_dropped_total{{part=\"{part}\"}} {n}");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        // Logged once per part per stream, not every report.
        assert_eq!(state.warned.len(), 3);
    }

    #[test]
    fn sample_times_far_from_the_clock_are_refused() {
        let (svc, store, registry) = service();
        let mut state = StreamState::default();
        let year = 365 * 86_400 * 1_000_000_000_i64;
        let mut forged = pod("coredns", 1);
        forged.timestamp_unix_nanos = ts() + year;
        let mut stale = pod("stale", 1);
        stale.timestamp_unix_nanos = ts() - 3_600 * 1_000_000_000;
        let mut report = NodeReport {
            protocol_version: PROTOCOL_VERSION,
            node_name: "node-c".into(),
            period_ms: 15_000,
            pods: vec![forged, pod("honest", 1), stale],
            ..Default::default()
        };
        let ack = svc.handle(report.clone(), &mut state);
        assert!(ack.accepted, "{}", ack.error);
        assert!(
            ack.error.contains("ahead of this replica's clock"),
            "{}",
            ack.error
        );
        let node = store.node("node-c", Instant::now()).unwrap();
        let kept: Vec<&str> = node.pods.iter().map(|p| p.name()).collect();
        assert_eq!(kept, ["honest"]);
        assert!(scrape(&registry)
            .contains("metrics_aggregator_report_parts_dropped_total{part=\"pod\"} 2"));
        // A node whose own usage is stamped in the future is refused whole.
        report.node = Some(Usage {
            timestamp_unix_nanos: ts() + 120_000_000_000,
            window_nanos: 15_000_000_000,
            cpu_nanocores: 1,
            memory_working_set_bytes: 1,
            swap_bytes: 0,
        });
        let ack = svc.handle(report, &mut state);
        assert!(!ack.accepted);
        assert!(
            ack.error.contains("ahead of this replica's clock"),
            "{}",
            ack.error
        );
    }

    #[test]
    fn pods_over_the_limit_are_dropped_not_the_node() {
        let (svc, store, _registry) = service();
        let mut state = StreamState::default();
        let n = metrics_proto::MAX_PODS_PER_REPORT + 5;
        let report = NodeReport {
            protocol_version: PROTOCOL_VERSION,
            node_name: "node-b".into(),
            period_ms: 15_000,
            pods: (0..n).map(|i| pod(&format!("p-{i:05}"), 1)).collect(),
            ..Default::default()
        };
        let ack = svc.handle(report, &mut state);
        assert!(ack.accepted, "{}", ack.error);
        assert!(ack.error.contains("5 pods"), "{}", ack.error);
        let node = store.node("node-b", Instant::now()).unwrap();
        assert_eq!(node.pods.len(), metrics_proto::MAX_PODS_PER_REPORT);
    }

    /// A report with the stored entry's shape is written into that entry
    /// (no new entry, no new pods); while a reader holds the entry it is
    /// replaced instead, and the reader's copy never changes; any other
    /// report is built anew, with the index and drops as before.
    #[test]
    fn a_report_of_the_stored_shape_is_written_in_place() {
        let (svc, store, _registry) = service();
        let mut state = StreamState::default();
        let report = |cpu: u64, at: i64| NodeReport {
            protocol_version: PROTOCOL_VERSION,
            node_name: "node-d".into(),
            period_ms: 15_000,
            node: Some(Usage {
                timestamp_unix_nanos: at,
                window_nanos: 15_000_000_000,
                cpu_nanocores: cpu,
                memory_working_set_bytes: 4096,
                swap_bytes: 0,
            }),
            pods: ["a", "b"]
                .iter()
                .map(|name| {
                    let mut p = pod(name, 2);
                    p.timestamp_unix_nanos = at;
                    for (i, c) in p.containers.iter_mut().enumerate() {
                        c.cpu_nanocores = cpu + i as u64;
                    }
                    p
                })
                .collect(),
            ..Default::default()
        };
        let usage = |e: &crate::report::NodeEntry| -> Vec<(String, u64)> {
            e.pods
                .iter()
                .flat_map(|p| {
                    p.containers()
                        .map(|c| (format!("{}/{}", p.name(), c.name), c.cpu_nanocores))
                })
                .collect()
        };
        let t0 = ts();
        assert!(svc.handle(report(10, t0), &mut state).accepted);
        let first = store.node("node-d", Instant::now()).unwrap();
        let (entry_at, pods_at) = (Arc::as_ptr(&first) as usize, first.pods.as_ptr() as usize);
        let expires = first.expires;
        drop(first);

        // Same shape: written in place.
        let ack = svc.handle(report(20, t0 + 1_000_000_000), &mut state);
        assert!(ack.accepted && ack.error.is_empty(), "{}", ack.error);
        let second = store.node("node-d", Instant::now()).unwrap();
        assert_eq!(Arc::as_ptr(&second) as usize, entry_at, "the same entry");
        assert_eq!(second.pods.as_ptr() as usize, pods_at, "the same pods");
        assert_eq!(
            usage(&second),
            [("a/c0", 20), ("a/c1", 21), ("b/c0", 20), ("b/c1", 21)]
                .map(|(k, v)| (k.to_string(), v))
        );
        assert_eq!(second.node.unwrap().cpu_nanocores, 20);
        assert_eq!(second.timestamp_ns, t0 + 1_000_000_000);
        assert_eq!(second.pods[1].timestamp_ns, t0 + 1_000_000_000);
        assert!(second.expires >= expires);
        drop(second);

        // The same pods and containers listed in another order: in place
        // too, each value written to its own container.
        let mut shuffled = report(25, t0 + 1_500_000_000);
        shuffled.pods.reverse();
        shuffled.pods[0].containers.reverse();
        let ack = svc.handle(shuffled, &mut state);
        assert!(ack.accepted && ack.error.is_empty(), "{}", ack.error);
        let shuffled = store.node("node-d", Instant::now()).unwrap();
        assert_eq!(
            Arc::as_ptr(&shuffled) as usize,
            entry_at,
            "still the same entry"
        );
        assert_eq!(
            usage(&shuffled),
            [("a/c0", 25), ("a/c1", 26), ("b/c0", 25), ("b/c1", 26)]
                .map(|(k, v)| (k.to_string(), v))
        );
        drop(shuffled);

        // One pod twice and another missing: not the stored pods.
        let mut twice = report(27, t0 + 1_700_000_000);
        twice.pods[1] = twice.pods[0].clone();
        assert!(svc.handle(twice, &mut state).accepted);
        let now = Instant::now();
        assert!(store.pod("ns", "b", now).is_empty(), "b is gone");
        assert_eq!(store.node("node-d", now).unwrap().pods.len(), 1);
        assert!(
            svc.handle(report(20, t0 + 1_800_000_000), &mut state)
                .accepted
        );
        let second = store.node("node-d", Instant::now()).unwrap();
        let entry_at = Arc::as_ptr(&second) as usize;

        // Held by a reader: replaced, and the reader's copy stays as it was.
        let ack = svc.handle(report(30, t0 + 2_000_000_000), &mut state);
        assert!(ack.accepted, "{}", ack.error);
        assert_eq!(second.node.unwrap().cpu_nanocores, 20);
        assert_eq!(usage(&second)[0].1, 20);
        let third = store.node("node-d", Instant::now()).unwrap();
        assert_ne!(Arc::as_ptr(&third) as usize, entry_at, "a new entry");
        assert_eq!(usage(&third)[0].1, 30);
        drop((second, third));

        // A stream bound to another node cannot write this one in place.
        let mut other = StreamState {
            bound: Some("node-e".into()),
            ..StreamState::default()
        };
        let ack = svc.handle(report(99, t0 + 3_000_000_000), &mut other);
        assert!(!ack.accepted, "a report for another node than the stream's");
        let now = Instant::now();
        assert_eq!(usage(&store.node("node-d", now).unwrap())[0].1, 30);

        // A pod renamed: built anew, and the index follows.
        let mut renamed = report(40, t0 + 3_000_000_000);
        renamed.pods[1].name = "c".into();
        assert!(svc.handle(renamed, &mut state).accepted);
        let now = Instant::now();
        assert!(store.pod("ns", "b", now).is_empty());
        assert_eq!(store.pod("ns", "c", now).len(), 1);

        // Containers out of order, and one pod with a usage the checks
        // refuse: built anew, the containers matched by name, that pod
        // alone dropped.
        let mut mixed = report(50, t0 + 4_000_000_000);
        mixed.pods[1].name = "c".into();
        mixed.pods[0].containers.reverse();
        mixed.pods[1].containers[0].cpu_nanocores = u64::MAX;
        let ack = svc.handle(mixed, &mut state);
        assert!(ack.accepted, "{}", ack.error);
        assert!(ack.error.contains("ns/c"), "{}", ack.error);
        let node = store.node("node-d", Instant::now()).unwrap();
        assert_eq!(
            usage(&node),
            [("a/c0", 50), ("a/c1", 51)].map(|(k, v)| (k.to_string(), v))
        );
        assert_eq!(store.held().1, 1, "the store counts one pod");
    }

    /// What an entry serves, for comparing two entries.
    fn served(e: &crate::report::NodeEntry) -> String {
        let pods: Vec<String> = e
            .pods
            .iter()
            .map(|p| {
                let containers: Vec<String> = p
                    .containers()
                    .map(|c| {
                        format!(
                            "{}={},{},{}",
                            c.name, c.cpu_nanocores, c.memory_working_set_bytes, c.swap_bytes
                        )
                    })
                    .collect();
                format!(
                    "{}/{} @{}+{} {} [{}]",
                    p.namespace(),
                    p.name(),
                    p.timestamp_ns,
                    p.window_ns,
                    p.labels.json(),
                    containers.join(" ")
                )
            })
            .collect();
        format!(
            "{} {} {:?} {} | {}",
            e.name,
            e.labels.json(),
            e.node,
            e.timestamp_ns,
            pods.join(" | ")
        )
    }

    proptest::proptest! {
        /// Whether a report is written in place or built anew, the node
        /// then serves what a new entry built from that report alone
        /// serves, and the index finds exactly its pods.
        #[test]
        fn a_node_serves_each_report_as_if_built_anew(
            reports in proptest::collection::vec(
                (
                    // pods: (name, containers as (name, usage), shuffled?)
                    proptest::collection::vec(
                        (0..5usize, proptest::collection::vec((0..4usize, 0..3u64), 1..4), 0..2u8),
                        0..5,
                    ),
                    // 0: a new shape; 1: the last shape, new usage; 2: it
                    // reversed; 3: a pod's last container named as its first
                    0..4u8,
                    0..8u8,  // 0: one pod's usage refused
                    0..4u64, // usage
                ),
                1..12,
            ),
        ) {
            let (svc, store, _registry) = service();
            let mut state = StreamState::default();
            let mut last: Option<NodeReport> = None;
            let base = ts();
            for (step, (shape, how, bad, cpu)) in reports.into_iter().enumerate() {
                let at = base + step as i64 * 1_000;
                let mut report = match (&last, how) {
                    (Some(l), 1..=3) => {
                        let mut r = l.clone();
                        for p in &mut r.pods {
                            p.timestamp_unix_nanos = at;
                            for c in &mut p.containers {
                                c.cpu_nanocores = cpu * 1000 + step as u64;
                            }
                        }
                        if how == 2 {
                            r.pods.reverse();
                            for p in &mut r.pods {
                                p.containers.reverse();
                            }
                        }
                        if how == 3 {
                            if let Some(p) = r.pods.iter_mut().find(|p| p.containers.len() > 1) {
                                let first = p.containers[0].name.clone();
                                if let Some(c) = p.containers.last_mut() {
                                    c.name = first;
                                }
                            }
                        }
                        r
                    }
                    _ => NodeReport {
                        protocol_version: PROTOCOL_VERSION,
                        node_name: "node-p".into(),
                        period_ms: 15_000,
                        pods: shape
                            .iter()
                            .map(|(name, containers, app)| PodUsage {
                                namespace: "ns".into(),
                                name: format!("p{name}"),
                                labels: [("app".to_string(), format!("a{app}"))].into(),
                                timestamp_unix_nanos: at,
                                window_nanos: 15_000_000_000,
                                containers: containers
                                    .iter()
                                    .map(|(c, u)| ContainerUsage {
                                        name: format!("c{c}"),
                                        cpu_nanocores: u + cpu,
                                        memory_working_set_bytes: u * 7,
                                        swap_bytes: 0,
                                    })
                                    .collect(),
                            })
                            .collect(),
                        ..Default::default()
                    },
                };
                last = Some(report.clone());
                if bad == 0 {
                    if let Some(c) = report.pods.first_mut().and_then(|p| p.containers.first_mut()) {
                        c.cpu_nanocores = u64::MAX;
                    }
                }
                let expected = crate::report::to_entry(report.clone(), None, Instant::now(), 3);
                let ack = svc.handle(report, &mut state);
                let now = Instant::now();
                match expected {
                    Ok(expected) => {
                        proptest::prop_assert!(ack.accepted, "{}", ack.error);
                        let stored = store.node("node-p", now).unwrap();
                        proptest::prop_assert_eq!(served(&stored), served(&expected));
                        for name in 0..5 {
                            let name = format!("p{name}");
                            let held = expected.pods.iter().any(|p| p.name() == name);
                            proptest::prop_assert_eq!(store.pod("ns", &name, now).len(), usize::from(held));
                        }
                        proptest::prop_assert_eq!(store.held().1, expected.pods.len());
                    }
                    Err(_) => proptest::prop_assert!(!ack.accepted),
                }
            }
        }
    }
}
