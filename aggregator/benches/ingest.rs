//! Cost of one node report on the aggregator (protobuf decode, validation,
//! rendering, store insert), with labels carried and, as in steady state,
//! omitted; and of the index lookups behind the HPA's query and a pod GET.
//! Run: `cargo bench -p metrics-aggregator --bench ingest`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use divan::Bencher;
use metrics_aggregator::ingest::{IngestService, StreamState};
use metrics_aggregator::metrics::AggregatorMetrics;
use metrics_aggregator::query::{Kind, Query};
use metrics_aggregator::report::to_entry;
use metrics_aggregator::store::Store;
use metrics_proto::v1::{ContainerUsage, NodeReport, PodUsage, Usage};
use prost::Message;

fn main() {
    divan::main();
}

/// A realistic report: `pods` pods × 2 containers, 4 labels each.
fn report(node: usize, pods: usize) -> NodeReport {
    let u = |i: u64| Usage {
        timestamp_unix_nanos: now_ns(),
        window_nanos: 15_000_000_000,
        cpu_nanocores: 123_456_789 + i,
        memory_working_set_bytes: 734_003_200 + i * 4096,
        swap_bytes: 0,
    };
    NodeReport {
        protocol_version: metrics_proto::PROTOCOL_VERSION,
        node_name: format!("node-{node:05}.cluster.example"),
        sequence: 1,
        period_ms: 15_000,
        node_labels: (0..8)
            .map(|i| (format!("node.kubernetes.io/label-{i}"), format!("v{i}")))
            .collect(),
        node: Some(u(0)),
        pods: (0..pods)
            .map(|p| PodUsage {
                namespace: format!("team-{}", (node * pods + p) % 50),
                name: format!("app-{node}-{p}-7d9f8c6b5-x2z4q"),
                labels: [
                    ("app", format!("app-{}", p % 10)),
                    ("pod-template-hash", "7d9f8c6b5".into()),
                    ("tier", "web".into()),
                    ("team", format!("t{}", p % 5)),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                timestamp_unix_nanos: now_ns(),
                window_nanos: 15_000_000_000,
                containers: ["app", "istio-proxy"]
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ContainerUsage {
                        name: c.to_string(),
                        cpu_nanocores: 12_345_678 * (i as u64 + 1),
                        memory_working_set_bytes: 52_428_800 + p as u64,
                        swap_bytes: 0,
                    })
                    .collect(),
            })
            .collect(),
        source: "kubelet".into(),
        ..NodeReport::default()
    }
}

#[divan::bench(args = [30, 110])]
fn ingest_report(bencher: Bencher, pods: usize) {
    let bytes = report(1, pods).encode_to_vec();
    let store = Store::new();
    bencher
        .counter(divan::counter::BytesCount::new(bytes.len()))
        .bench(|| {
            let r = NodeReport::decode(divan::black_box(&bytes[..])).unwrap();
            let e = to_entry(r, None, Instant::now(), 3).unwrap();
            store.insert(e);
        });
}

/// Steady state: the stream already carried this report's labels, so the
/// report leaves them out and the stream's shared set is used.
#[divan::bench(args = [30, 110])]
fn ingest_report_labels_omitted(bencher: Bencher, pods: usize) {
    let mut full = report(1, pods);
    full.labels_version = metrics_proto::labels::version(&full);
    let mut bare = full.clone();
    metrics_proto::labels::omit(&mut bare);
    let bytes = bare.encode_to_vec();
    let svc = IngestService::new(
        Arc::new(Store::new()),
        Arc::new(AggregatorMetrics::default()),
        3,
        Default::default(),
    );
    let mut stream = StreamState::default();
    assert!(svc.handle(full.clone(), &mut stream).accepted);
    bencher
        .counter(divan::counter::BytesCount::new(bytes.len()))
        .bench_local(|| {
            let r = NodeReport::decode(divan::black_box(&bytes[..])).unwrap();
            svc.handle(r, &mut stream).accepted
        });
}

/// One pod of a 1,000-node × 30-pod store, found through the index.
#[divan::bench]
fn pod_get_1000_nodes(bencher: Bencher) {
    let store = Arc::new(Store::new());
    let now = Instant::now();
    for n in 0..1_000 {
        store.insert(to_entry(report(n, 30), None, now, 1_000).unwrap());
    }
    let (ns, name) = (
        format!("team-{}", (500 * 30 + 7) % 50),
        "app-500-7-7d9f8c6b5-x2z4q",
    );
    assert_eq!(store.pod(&ns, name, now).len(), 1);
    bencher.bench(|| {
        store
            .pod(divan::black_box(&ns), divan::black_box(name), now)
            .len()
    });
}

/// The HPA's query shape: one namespace of a 1,000-node × 30-pod store.
#[divan::bench]
fn namespace_query_1000_nodes(bencher: Bencher) {
    let store = Arc::new(Store::new());
    let now = Instant::now();
    for n in 0..1_000 {
        store.insert(to_entry(report(n, 30), None, now, 1_000).unwrap());
    }
    bencher.bench(|| store.pods(Some(divan::black_box("team-7")), now).len());
}

/// A cluster-wide list with the largest selectors allowed (128 terms: one
/// `in` with 127 values, or 128 keys that must be absent) over 1,000
/// nodes × 30 pods ingested as agents send them (label sets shared between
/// the pods that carry the same labels).
#[divan::bench(args = ["in", "absent_keys"])]
fn selector_128_terms_all_pods_1000_nodes(bencher: Bencher, shape: &str) {
    let store = Arc::new(Store::new());
    let svc = IngestService::new(
        Arc::clone(&store),
        Arc::new(AggregatorMetrics::default()),
        3,
        Default::default(),
    );
    for n in 0..1_000 {
        let mut r = report(n, 30);
        r.labels_version = metrics_proto::labels::version(&r);
        assert!(svc.handle(r, &mut StreamState::default()).accepted);
    }
    let values: Vec<String> = std::iter::once("app-0".to_owned())
        .chain((1..127).map(|i| format!("absent-{i}")))
        .collect();
    let (selector, matches) = match shape {
        "in" => (format!("app in ({})", values.join(",")), 3_000),
        _ => (
            (0..128)
                .map(|i| format!("!example.com/key-{i}"))
                .collect::<Vec<_>>()
                .join(","),
            30_000,
        ),
    };
    let q = Query::new(Kind::Pods, None, None, &selector, "").unwrap();
    let now = Instant::now();
    assert_eq!(q.local(&store, now).len(), matches);
    bencher.bench(|| q.local(divan::black_box(&store), now).len());
}

/// Now, ns since the epoch: sample times must be near the aggregator's clock.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap()
}
