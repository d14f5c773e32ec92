//! The gRPC ingest service over a real socket: bad reports are refused with
//! a reason and change nothing, a hostile stream is cut off without
//! affecting other agents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use metrics_aggregator::cluster::PeerService;
use metrics_aggregator::grpc_conn;
use metrics_aggregator::ingest::IngestService;
use metrics_aggregator::metrics::AggregatorMetrics;
use metrics_aggregator::shard::{Shard, SharedShard};
use metrics_aggregator::store::Store;
use metrics_e2e::wait::eventually;
use metrics_proto::v1::aggregator_message::Kind;
use metrics_proto::v1::ingest_client::IngestClient;
use metrics_proto::v1::{Ack, ContainerUsage, NodeReport, PodUsage, Usage};
use metrics_proto::PROTOCOL_VERSION;

fn report(node: &str, pods: usize) -> NodeReport {
    NodeReport {
        protocol_version: PROTOCOL_VERSION,
        node_name: node.into(),
        sequence: 0,
        period_ms: 1_000,
        node_labels: Default::default(),
        node: Some(Usage {
            timestamp_unix_nanos: now_ns(),
            window_nanos: 1_000_000_000,
            cpu_nanocores: 5,
            memory_working_set_bytes: 1024,
            swap_bytes: 0,
        }),
        pods: (0..pods)
            .map(|i| PodUsage {
                namespace: "ns".into(),
                name: format!("p{i}"),
                labels: Default::default(),
                timestamp_unix_nanos: now_ns(),
                window_nanos: 1_000_000_000,
                containers: vec![ContainerUsage {
                    name: "c".into(),
                    cpu_nanocores: 1,
                    memory_working_set_bytes: 1,
                    swap_bytes: 0,
                }],
            })
            .collect(),
        source: "test".into(),
        ..NodeReport::default()
    }
}

async fn serve() -> (Arc<Store>, Channel, CancellationToken) {
    serve_with(None).await
}

async fn serve_with(shard: Option<Shard>) -> (Arc<Store>, Channel, CancellationToken) {
    let store = Arc::new(Store::new());
    let cancel = CancellationToken::new();
    let metrics = Arc::new(AggregatorMetrics::default());
    let mut svc = IngestService::new(Arc::clone(&store), metrics, 3, cancel.clone());
    if let Some(shard) = shard {
        svc = svc.with_shard(SharedShard::new(shard));
    }
    let (_, _, channel) = serve_port(svc, &store, &cancel).await;
    (store, channel, cancel)
}

/// Serves `svc` on a port of its own with the port's own server, as the
/// replica runs it, until `cancel`; returns the server's task, its address
/// and a channel to it.
async fn serve_port(
    svc: IngestService,
    store: &Arc<Store>,
    cancel: &CancellationToken,
) -> (tokio::task::JoinHandle<()>, std::net::SocketAddr, Channel) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(grpc_conn::serve(
        TcpListenerStream::new(listener),
        svc,
        PeerService::new(Arc::clone(store)),
        cancel.clone(),
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (server, addr, channel)
}

struct Stream {
    tx: mpsc::Sender<NodeReport>,
    acks: tonic::Streaming<metrics_proto::v1::AggregatorMessage>,
    seq: u64,
}

impl Stream {
    async fn open(channel: &Channel) -> Self {
        let (tx, rx) = mpsc::channel(4);
        let acks = IngestClient::new(channel.clone())
            .max_encoding_message_size(64 * 1024 * 1024)
            .report(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, acks, seq: 0 }
    }

    async fn send(&mut self, r: NodeReport) -> Result<Ack, tonic::Status> {
        self.push(r).await?;
        self.next_ack(Duration::from_secs(5)).await
    }

    /// Sends `r` without waiting for an answer.
    async fn push(&mut self, mut r: NodeReport) -> Result<(), tonic::Status> {
        self.seq += 1;
        r.sequence = self.seq;
        self.tx
            .send(r)
            .await
            .map_err(|_| tonic::Status::cancelled("closed"))
    }

    /// The next Ack, within `wait`.
    async fn next_ack(&mut self, wait: Duration) -> Result<Ack, tonic::Status> {
        match tokio::time::timeout(wait, self.acks.message()).await {
            Ok(Ok(Some(m))) => match m.kind {
                Some(Kind::Ack(a)) => Ok(a),
                Some(Kind::ShardMap(_)) => Err(tonic::Status::internal("unexpected shard map")),
                None => Err(tonic::Status::internal("empty message")),
            },
            Ok(Ok(None)) => Err(tonic::Status::cancelled("stream ended")),
            Ok(Err(s)) => Err(s),
            Err(_) => Err(tonic::Status::deadline_exceeded("no ack")),
        }
    }
}

#[tokio::test]
async fn valid_report_is_stored_and_acked() {
    let (store, channel, _c) = serve().await;
    let mut s = Stream::open(&channel).await;
    let ack = s.send(report("node-1", 3)).await.unwrap();
    assert_eq!(
        (ack.sequence, ack.accepted, ack.error.as_str()),
        (1, true, "")
    );
    assert_eq!(store.nodes(Instant::now()).len(), 1);
    assert_eq!(store.pods(Some("ns"), Instant::now()).len(), 3);
}

#[tokio::test]
async fn invalid_reports_are_refused_and_change_nothing() {
    let (store, channel, _c) = serve().await;
    let mut s = Stream::open(&channel).await;
    let mut bad_version = report("node-1", 1);
    bad_version.protocol_version = 99;
    let mut bad_period = report("node-1", 1);
    bad_period.period_ms = 10;
    let cases = [
        (bad_version, "protocol version 99"),
        (report("Bad Node!", 1), "invalid node name"),
        (bad_period, "period 10 ms"),
    ];
    for (r, want) in cases {
        let ack = s.send(r).await.unwrap();
        assert!(!ack.accepted);
        assert!(
            ack.error.contains(want),
            "{} should contain {want}",
            ack.error
        );
    }
    assert!(store.is_empty(), "refused reports must not be stored");
    // The stream still works for a good report.
    assert!(s.send(report("node-1", 1)).await.unwrap().accepted);
}

#[tokio::test]
async fn a_bad_pod_is_dropped_and_the_rest_of_its_node_served() {
    let (store, channel, _c) = serve().await;
    let mut s = Stream::open(&channel).await;
    let mut bad_window = report("node-1", 3);
    bad_window.pods[0].window_nanos = 0;
    let mut bad_pod = report("node-1", 3);
    bad_pod.pods[1].name = "Not_A_Name".into();
    let cases = [
        (bad_window, "window must be positive", 2),
        (bad_pod, "invalid namespace or name", 2),
        (
            report("node-1", 2_001),
            "over the limit of 2000 pods",
            2_000,
        ),
    ];
    for (r, want, kept) in cases {
        let ack = s.send(r).await.unwrap();
        assert!(ack.accepted, "{}", ack.error);
        assert!(
            ack.error.contains(want),
            "{} should contain {want}",
            ack.error
        );
        assert_eq!(store.nodes(Instant::now()).len(), 1);
        assert_eq!(store.pods(Some("ns"), Instant::now()).len(), kept);
    }
}

#[tokio::test]
async fn a_stream_reports_for_one_node_only() {
    let (store, channel, _c) = serve().await;
    let mut s = Stream::open(&channel).await;
    assert!(s.send(report("node-1", 1)).await.unwrap().accepted);
    let ack = s.send(report("node-2", 1)).await.unwrap();
    assert!(!ack.accepted);
    assert!(
        ack.error.contains("bound to node \"node-1\""),
        "{}",
        ack.error
    );
    assert!(store.node("node-2", Instant::now()).is_none());
}

#[tokio::test]
async fn oversized_message_ends_only_that_stream() {
    let (store, channel, _c) = serve().await;
    let mut good = Stream::open(&channel).await;
    assert!(good.send(report("node-1", 1)).await.unwrap().accepted);
    let mut hostile = Stream::open(&channel).await;
    let mut big = report("node-2", 1);
    big.source = "x".repeat(5 * 1024 * 1024);
    let err = hostile.send(big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(store.node("node-2", Instant::now()).is_none());
    // The other agent's stream is unaffected.
    let ack = good.send(report("node-1", 2)).await.unwrap();
    assert!(ack.accepted);
    assert_eq!(store.pods(None, Instant::now()).len(), 2);
}

#[tokio::test]
async fn a_replica_sends_the_shard_map_and_stores_only_what_it_owns() {
    let members: Vec<(String, String)> = (0..3)
        .map(|i| (format!("agg-{i}"), format!("https://10.0.0.{i}:10251")))
        .collect();
    let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
    // Find a node agg-0 owns and one it does not (R=1).
    let mine = (0..100)
        .map(|i| format!("node-{i}"))
        .find(|n| metrics_proto::ring::owners(&ids, n, 1)[0] == "agg-0")
        .unwrap();
    let other = (0..100)
        .map(|i| format!("node-{i}"))
        .find(|n| metrics_proto::ring::owners(&ids, n, 1)[0] != "agg-0")
        .unwrap();
    let (store, channel, _c) =
        serve_with(Some(Shard::new("agg-0".into(), members.clone(), 1))).await;

    for (node, owned) in [(&mine, true), (&other, false)] {
        let (tx, rx) = mpsc::channel(4);
        let mut acks = IngestClient::new(channel.clone())
            .report(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut r = report(node, 1);
        r.sequence = 1;
        tx.send(r).await.unwrap();
        let first = acks.message().await.unwrap().unwrap().kind;
        let Some(Kind::ShardMap(map)) = first else {
            panic!("the map comes first: {first:?}")
        };
        assert_eq!(map, metrics_proto::ring::shard_map(&members, 1));
        let Some(Kind::Ack(ack)) = acks.message().await.unwrap().unwrap().kind else {
            panic!("then the ack")
        };
        assert_eq!(ack.accepted, owned, "{node}: {}", ack.error);
        if !owned {
            assert!(ack.error.contains("does not own node"), "{}", ack.error);
        }
        assert_eq!(store.node(node, Instant::now()).is_some(), owned);
    }
}

#[tokio::test]
async fn labels_left_out_are_restored_from_the_stream() {
    let (store, channel, _c) = serve().await;
    let mut s = Stream::open(&channel).await;
    let labelled = |app: &str| {
        let mut r = report("node-1", 2);
        r.node_labels.insert("zone".into(), "z1".into());
        r.pods[0].labels.insert("app".into(), app.into());
        r.labels_version = metrics_proto::labels::version(&r);
        r
    };
    let labels_of = |store: &Store| {
        let nodes = store.nodes(Instant::now());
        let pods = store.pods(Some("ns"), Instant::now());
        (
            nodes[0].labels.get("zone").map(str::to_owned),
            pods.iter()
                .map(|p| p.pod().labels.get("app").map(str::to_owned))
                .collect::<Vec<_>>(),
        )
    };
    assert!(s.send(labelled("shop")).await.unwrap().accepted);
    let mut omitted = labelled("shop");
    metrics_proto::labels::omit(&mut omitted);
    let ack = s.send(omitted).await.unwrap();
    assert!(ack.accepted, "{}", ack.error);
    assert_eq!(
        labels_of(&store),
        (Some("z1".into()), vec![Some("shop".into()), None])
    );

    // Labels changed but left out: refused, and the stored copy stays.
    let mut unknown = labelled("checkout");
    metrics_proto::labels::omit(&mut unknown);
    let ack = s.send(unknown).await.unwrap();
    assert!(!ack.accepted);
    assert!(
        ack.error
            .starts_with("labels omitted for unknown labels_version"),
        "{}",
        ack.error
    );
    assert_eq!(labels_of(&store).1, vec![Some("shop".into()), None]);

    // A new stream has no labels to reuse.
    let mut fresh = Stream::open(&channel).await;
    let mut omitted = labelled("shop");
    metrics_proto::labels::omit(&mut omitted);
    assert!(!fresh.send(omitted).await.unwrap().accepted);
}

/// An agent that says how long it waits for an answer
/// (`answer_within_ms`) is answered only as often as that needs: a report
/// is stored at once but its Ack held, a refusal is answered at once and
/// alone, and a held Ack goes by its due time even when no report comes to
/// carry it, answering every report up to its sequence.
#[tokio::test]
async fn acks_are_paced_to_the_agents_bound() {
    use metrics_aggregator::ack_pace::answer_by;
    let (store, channel, _c) = serve().await;
    let mut s = Stream::open(&channel).await;
    let within = Duration::from_secs(5);
    let paced = |cpu: u64| {
        let mut r = report("node-1", 2);
        r.answer_within_ms = within.as_millis() as u64;
        if let Some(n) = &mut r.node {
            n.cpu_nanocores = cpu;
        }
        r
    };
    let cpu = |store: &Store| {
        store
            .nodes(Instant::now())
            .first()
            .and_then(|n| n.node)
            .map(|u| u.cpu_nanocores)
    };
    // The stream's first accepted report is answered at once.
    let first = s.send(paced(1)).await.unwrap();
    assert_eq!((first.sequence, first.accepted), (1, true));

    // The next (the period says 1 s, the bound 5 s) is stored; its Ack held.
    let sent = Instant::now();
    s.push(paced(2)).await.unwrap();
    assert!(eventually(Duration::from_secs(10), async || cpu(&store) == Some(2)).await);
    // A refusal is news: answered at once, alone, ahead of the held Ack.
    let mut bad = paced(3);
    bad.protocol_version = 99;
    let refused = s.send(bad).await.unwrap();
    assert_eq!((refused.sequence, refused.accepted), (3, false));
    // No report comes: the held Ack goes alone, not before its due time.
    let held = s.next_ack(Duration::from_secs(30)).await.unwrap();
    assert_eq!((held.sequence, held.accepted), (2, true));
    assert!(sent.elapsed() >= answer_by(within), "{:?}", sent.elapsed());

    // Two reports held together are answered by one Ack, the later's.
    s.push(paced(4)).await.unwrap();
    s.push(paced(5)).await.unwrap();
    assert!(eventually(Duration::from_secs(10), async || cpu(&store) == Some(5)).await);
    let both = s.next_ack(Duration::from_secs(30)).await.unwrap();
    assert_eq!((both.sequence, both.accepted), (5, true));
}

/// A gRPC call by `path` with an empty message; the status it ends with.
async fn call(channel: &Channel, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Ack, Ack>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(Ack::default()), path, codec)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn methods_not_served_are_unimplemented() {
    let (store, channel, _c) = serve().await;
    for path in [
        "/metrics.v1.Ingest/Other",
        "/metrics.v1.Nothing/Report",
        "/metrics.v1.Peer/Other",
    ] {
        let status = call(&channel, path).await;
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path}: {status:?}"
        );
    }
    // The connection still serves.
    let mut s = Stream::open(&channel).await;
    assert!(s.send(report("node-1", 1)).await.unwrap().accepted);
    assert_eq!(store.nodes(Instant::now()).len(), 1);
}

#[tokio::test]
async fn cancelling_ends_open_streams_and_the_server_returns() {
    let store = Arc::new(Store::new());
    let cancel = CancellationToken::new();
    let metrics = Arc::new(AggregatorMetrics::default());
    let svc = IngestService::new(Arc::clone(&store), metrics, 3, cancel.clone());
    let (server, addr, channel) = serve_port(svc, &store, &cancel).await;
    let mut streams = Vec::new();
    for node in ["node-1", "node-2"] {
        let mut s = Stream::open(&channel).await;
        assert!(s.send(report(node, 2)).await.unwrap().accepted);
        streams.push(s);
    }
    cancel.cancel();
    for s in &mut streams {
        let end = tokio::time::timeout(Duration::from_secs(20), s.acks.message())
            .await
            .expect("the stream ends once the replica stops");
        assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    }
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server returns once its connections have closed")
        .unwrap();
    // The port is closed: a new connection is refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_open_streams_gauge_follows_each_stream_to_its_end() {
    let store = Arc::new(Store::new());
    let cancel = CancellationToken::new();
    let metrics = Arc::new(AggregatorMetrics::default());
    let svc = IngestService::new(Arc::clone(&store), Arc::clone(&metrics), 3, cancel.clone());
    let (_, _, channel) = serve_port(svc, &store, &cancel).await;
    let mut closing = Stream::open(&channel).await;
    assert!(closing.send(report("node-1", 2)).await.unwrap().accepted);
    let mut leaving = Stream::open(&channel).await;
    assert!(leaving.send(report("node-2", 2)).await.unwrap().accepted);
    assert_eq!(metrics.streams.get(), 2);

    // An agent that closes its side gets the end of the stream, and the
    // stream is no longer counted.
    drop(closing.tx);
    let end = tokio::time::timeout(Duration::from_secs(20), closing.acks.message())
        .await
        .expect("the stream ends once the agent closed its side");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert!(
        eventually(Duration::from_secs(20), async || metrics.streams.get() == 1).await,
        "{}",
        metrics.streams.get()
    );

    // An agent that goes away without closing (its stream cancelled)
    // is no longer counted either, and the other streams on the port
    // are served as before.
    drop(leaving);
    assert!(
        eventually(Duration::from_secs(20), async || metrics.streams.get() == 0).await,
        "{}",
        metrics.streams.get()
    );
    let mut next = Stream::open(&channel).await;
    assert!(next.send(report("node-3", 2)).await.unwrap().accepted);
    assert_eq!(metrics.streams.get(), 1);
    cancel.cancel();
}

/// Now, ns since the epoch: sample times must be near the aggregator's clock.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap()
}
