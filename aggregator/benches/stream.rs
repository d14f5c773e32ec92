//! One report over a real TLS gRPC stream to the ingest service, sent and
//! acknowledged: the agent's encode, TLS both ways, HTTP/2, decode, labels,
//! rendering and store insert. Client and server share this process, so
//! the figure is a round trip, not the server's CPU alone (the load
//! generator measures that). Run: `cargo bench -p metrics-aggregator --bench stream`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use divan::Bencher;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use metrics_aggregator::cluster::PeerService;
use metrics_aggregator::ingest::IngestService;
use metrics_aggregator::metrics::AggregatorMetrics;
use metrics_aggregator::store::Store;
use metrics_aggregator::{grpc_conn, grpc_port, server, tls};
use metrics_e2e::load::workload::{bare, fill, Shape};
use metrics_proto::v1::aggregator_message::Kind;
use metrics_proto::v1::ingest_client::IngestClient;
use metrics_proto::v1::{AggregatorMessage, NodeReport};

fn main() {
    metrics_proto::tls::install_crypto_provider();
    divan::main();
}

/// Sends `r` and waits for its ack.
async fn round_trip(
    tx: &mpsc::Sender<NodeReport>,
    inbound: &mut tonic::Streaming<AggregatorMessage>,
    r: NodeReport,
) -> bool {
    tx.send(r).await.unwrap();
    loop {
        match inbound.message().await.unwrap().and_then(|m| m.kind) {
            Some(Kind::Ack(ack)) => return ack.accepted,
            Some(Kind::ShardMap(_)) => continue,
            None => panic!("stream ended"),
        }
    }
}

#[divan::bench(args = [30, 110])]
fn report_over_tls(bencher: Bencher, pods: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = tls::identity(None, None, dir.path(), &["127.0.0.1".into()]).unwrap();
    let cancel = CancellationToken::new();
    let shape = Shape {
        nodes: 1,
        pods_per_node: pods,
        containers_per_pod: 2,
        namespaces: 20,
    };
    let mut full = shape.template(0, 15_000);
    let mut omitted = bare(&full);
    fill(&mut full, 1, now_ns() - 20_000_000_000, 15_000_000_000);
    fill(&mut omitted, 2, now_ns() - 5_000_000_000, 15_000_000_000);
    let (tx, mut inbound) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = tls::server_config(
            &tls::policy::TlsPolicy::default(),
            tls::reload::ReloadingCert::new(&id).unwrap(),
            &[b"h2"],
            false,
        )
        .unwrap();
        let limits = server::ConnLimits {
            max_connections: 16,
            max_handshakes: 16,
            read_idle: std::time::Duration::from_secs(90),
        };
        // The agent's socket takes the replica's own path: classified on
        // accept, handed over, handshaken (here on the same runtime).
        let (handoffs, handed) = mpsc::channel(16);
        let read_idle = limits.read_idle;
        let _peers = grpc_port::accept(
            listener,
            Arc::clone(&config),
            limits,
            Arc::new(AggregatorMetrics::default()),
            cancel.clone(),
            handoffs,
        );
        let incoming = grpc_port::adopt(
            handed,
            config,
            read_idle,
            grpc_port::Handshaking::default(),
            cancel.clone(),
        );
        let svc = IngestService::new(
            Arc::new(Store::new()),
            Arc::new(AggregatorMetrics::default()),
            3,
            cancel.clone(),
        );
        let peer = PeerService::new(Arc::new(Store::new()));
        tokio::spawn(grpc_conn::serve(incoming, svc, peer, cancel.clone()));
        let client_tls = metrics_proto::tls::client_config(
            metrics_proto::tls::Verify::CaFile(&id.cert),
            &[b"h2"],
        )
        .unwrap();
        let channel =
            metrics_proto::channel::Dialer::new(&format!("https://{addr}"), Some(client_tls))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let (tx, rx) = mpsc::channel(4);
        let mut inbound = IngestClient::new(channel)
            .report(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        assert!(round_trip(&tx, &mut inbound, full).await);
        (tx, inbound)
    });
    let mut seq = 1;
    bencher.bench_local(|| {
        seq += 1;
        let mut r = omitted.clone();
        r.sequence = seq;
        rt.block_on(round_trip(&tx, &mut inbound, r))
    });
    cancel.cancel();
}

/// Now, ns since the epoch: sample times must be near the aggregator's clock.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap()
}
