//! The load generator at a tiny size: 50 simulated agents over real
//! gRPC+TLS streams, 3 real replicas with R=2. Every replica must answer
//! every node and pod, and every query answer (1 and 4 clients) must be
//! complete. No timing is asserted; the figures are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use metrics_e2e::load::{self, workload::Shape};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_on_three_replicas_answer_completely() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cfg = load::Config {
        shape: Shape {
            nodes: 50,
            pods_per_node: 10,
            containers_per_pod: 2,
            namespaces: 7,
        },
        replicas: 3,
        replication: 2,
        period: Duration::from_secs(1),
        measure_periods: 2,
        clients: vec![1, 4],
        queries: [10, 10, 3, 3],
        phase_limit: Duration::from_secs(60),
        extra: vec![],
        dir: dir.path().to_owned(),
        representations: 2,
        settle: Duration::from_secs(1),
        // As the real agent's streams: answers held while nothing is new.
        paced_acks: true,
    };
    let s = load::run(&cfg).await.unwrap();
    println!("{}", serde_json::to_string_pretty(&s).unwrap());
    assert!(s.complete, "incomplete answers: {:#?}", s.queries);
    for (clients, kinds) in &s.queries {
        assert_eq!(kinds.len(), 4, "{clients} clients ran every query kind");
        for (kind, r) in kinds {
            assert!(
                r.latency_ms.count > 0,
                "{clients} clients, {kind:?}: no answers"
            );
            assert_eq!(
                r.incomplete, 0,
                "{clients} clients, {kind:?}: {:?}",
                r.problems
            );
            assert_eq!(
                r.warned, 0,
                "{clients} clients, {kind:?}: unexpected warning"
            );
        }
    }
    // Every node is owned twice, and each replica measured its share.
    let owned: usize = s.replica_cost.iter().map(|r| r.nodes_owned).sum();
    assert_eq!(owned, 100);
    assert!(s.replica_cost.iter().all(|r| r.rss_kib > 0));
    assert!(s
        .replica_cost
        .iter()
        .all(|r| r.rss_anon_kib > 0 && r.rss_anon_kib <= r.rss_kib));
    assert!(s.reports_accepted > 0 && s.ingest_lag_ms.count > 0);
    // Every representation answered the whole list, in its own type.
    assert_eq!(s.representations.len(), 4, "{:?}", s.representations);
    for (name, r) in &s.representations {
        assert_eq!((r.failed, r.latency_ms.count), (0, 2), "{name}");
        assert!(
            r.bytes > 500 * 100,
            "{name}: {} bytes for 500 pods",
            r.bytes
        );
        // The replicas' memory around the answers was read.
        assert!(r.rss_kib_before > 0 && r.rss_kib_after > 0, "{name}: {r:?}");
    }
    assert!(s.rss_kib_settled.is_some_and(|kib| kib > 0));
}
