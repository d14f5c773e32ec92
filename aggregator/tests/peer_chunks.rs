//! Peer answers stream in bounded chunks: a large answer arrives as several
//! messages, none far above the chunk size, together holding every object
//! once; an empty answer is one empty chunk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use metrics_aggregator::cluster::PeerService;
use metrics_aggregator::grpc_conn;
use metrics_aggregator::ingest::IngestService;
use metrics_aggregator::metrics::AggregatorMetrics;
use metrics_aggregator::report::to_entry;
use metrics_aggregator::store::Store;
use metrics_proto::v1::peer_client::PeerClient;
use metrics_proto::v1::query_request::Kind;
use metrics_proto::v1::{ContainerUsage, NodeReport, PodUsage, QueryRequest, Usage};

const NODES: usize = 20;
const PODS: usize = 200;

fn report(node: usize) -> NodeReport {
    let t = 1_700_000_000_000_000_000;
    NodeReport {
        protocol_version: metrics_proto::PROTOCOL_VERSION,
        node_name: format!("node-{node}"),
        period_ms: 15_000,
        node: Some(Usage {
            timestamp_unix_nanos: t,
            window_nanos: 15_000_000_000,
            cpu_nanocores: 1,
            memory_working_set_bytes: 1,
            swap_bytes: 0,
        }),
        pods: (0..PODS)
            .map(|p| PodUsage {
                namespace: format!("namespace-{}", p % 7),
                name: format!("deployment-{node}-{p}-5d8f7c9b6d-x2k4q"),
                labels: [("app".to_string(), format!("app-{p}"))].into(),
                timestamp_unix_nanos: t,
                window_nanos: 15_000_000_000,
                containers: ["main", "istio-proxy"]
                    .iter()
                    .map(|c| ContainerUsage {
                        name: c.to_string(),
                        cpu_nanocores: 123_456_789,
                        memory_working_set_bytes: 987_654_321,
                        swap_bytes: 0,
                    })
                    .collect(),
            })
            .collect(),
        ..NodeReport::default()
    }
}

async fn serve(store: Arc<Store>) -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The port's own server, as the replica runs it.
    let metrics = Arc::new(AggregatorMetrics::default());
    let cancel = CancellationToken::new();
    let ingest = IngestService::new(Arc::clone(&store), metrics, 3, cancel.clone());
    tokio::spawn(grpc_conn::serve(
        TcpListenerStream::new(listener),
        ingest,
        PeerService::new(store),
        cancel,
    ));
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn large_answers_come_in_bounded_chunks() {
    let store = Arc::new(Store::new());
    for n in 0..NODES {
        store.insert(to_entry(report(n), None, Instant::now(), 3).unwrap());
    }
    let mut client = PeerClient::new(serve(store).await);
    let req = QueryRequest {
        kind: Kind::Pods as i32,
        ..QueryRequest::default()
    };
    let mut chunks = client.query(req).await.unwrap().into_inner();
    let (mut sizes, mut seen) = (Vec::new(), HashSet::new());
    while let Some(chunk) = chunks.message().await.unwrap() {
        sizes.push(chunk.encoded_len());
        for o in chunk.objects {
            assert!(seen.insert((o.namespace, o.name)), "an object came twice");
        }
    }
    assert_eq!(seen.len(), NODES * PODS);
    assert!(sizes.len() >= 3, "one large answer, {sizes:?}");
    assert!(
        sizes.iter().all(|s| *s <= 640 * 1024),
        "a chunk far above 512 KiB: {sizes:?}"
    );

    // Nothing matches: one empty chunk.
    let req = QueryRequest {
        kind: Kind::Pods as i32,
        namespace: "nope".into(),
        ..QueryRequest::default()
    };
    let mut chunks = client.query(req).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(chunk) = chunks.message().await.unwrap() {
        assert!(chunk.objects.is_empty());
        n += 1;
    }
    assert_eq!(n, 1);
}
