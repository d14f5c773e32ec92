//! Liveness does not depend on one peer: a replica frozen with SIGSTOP
//! (its sockets open, nothing answered: the slowest peer there is) leaves
//! the other replicas live, ready and answering within the peer deadline,
//! with every node (R=2: each node has another owner); once it thaws it
//! answers for the whole cluster again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use metrics_e2e::https;
use metrics_e2e::load::workload::Shape;
use metrics_e2e::procs::AggregatorProc;
use metrics_e2e::replicas::ReplicaSet;
use metrics_e2e::wait::until;

const NODES: usize = 30;
/// The peer deadline: what the frozen replica costs each answer. Wide
/// enough that a live peer on a loaded machine is not taken for a frozen
/// one (the test is that the frozen one costs no more than this).
const PEER_TIMEOUT: &str = "--peer-timeout=2s";
/// What one answer may take: the frozen peer's deadline, then a second
/// round with a live one, with headroom for a loaded machine.
const ANSWER_BOUND: Duration = Duration::from_secs(30);

/// Code, body, and any `Warning` header (what a partial answer carries).
async fn get(agg: &AggregatorProc, path: &str) -> (u16, serde_json::Value) {
    let url = format!("{}{path}", agg.api_url());
    let (code, headers, body) = tokio::time::timeout(ANSWER_BOUND, https::get(&url, &agg.ca, &[]))
        .await
        .unwrap_or_else(|_| panic!("{path} took more than {ANSWER_BOUND:?}"))
        .unwrap();
    let mut v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    if let (Some(w), Some(obj)) = (headers.get("warning"), v.as_object_mut()) {
        obj.insert(
            "warning (header)".into(),
            String::from_utf8_lossy(w.as_bytes()).into(),
        );
    }
    (code.as_u16(), v)
}

fn items(v: &serde_json::Value) -> usize {
    v["items"].as_array().map_or(0, Vec::len)
}

fn signal(agg: &AggregatorProc, sig: &str) {
    let pid = agg.proc.child.id().unwrap();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_stops_no_other_from_answering() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // Six periods before a node expires: a stall of this process (which
    // also runs the simulated agents) on a loaded machine is not an expiry.
    let set = ReplicaSet::new(dir.path(), 3, 2, &[PEER_TIMEOUT, "--node-expiry-periods=6"]);
    let aggs = set.start_all().await.unwrap();
    let shape = Shape {
        nodes: NODES,
        pods_per_node: 2,
        containers_per_pod: 1,
        namespaces: 3,
    };
    let _fleet = set.fleet(shape, Duration::from_secs(1)).unwrap();
    let v1 = "/apis/metrics.k8s.io/v1beta1";
    until(
        "every node on every replica",
        Duration::from_secs(60),
        async || {
            let mut all = true;
            for agg in &aggs {
                let (code, v) = get(agg, &format!("{v1}/nodes")).await;
                all &= code == 200 && items(&v) == NODES;
            }
            all
        },
    )
    .await;
    // And held by both its owners (replicas store only nodes they own): a
    // node whose second stream has not reported yet has no other owner to
    // answer for it once the first is frozen.
    until(
        "every node held by both its owners",
        Duration::from_secs(60),
        async || {
            let mut held = 0.0;
            for agg in &aggs {
                held += agg.metric("metrics_aggregator_nodes").await.unwrap_or(0.0);
            }
            held == (2 * NODES) as f64
        },
    )
    .await;

    signal(&aggs[2], "-STOP");
    let frozen = Instant::now();
    let mut rounds = 0;
    // Several periods and expiries of the frozen replica's streams, and
    // at least two rounds of questions however long each takes.
    while frozen.elapsed() < Duration::from_secs(8) || rounds < 2 {
        for agg in &aggs[..2] {
            for probe in ["/livez", "/readyz"] {
                assert_eq!(get(agg, probe).await.0, 200, "{probe}");
            }
            let (code, v) = get(agg, &format!("{v1}/nodes")).await;
            assert_eq!((code, items(&v)), (200, NODES), "round {rounds}: {v}");
            let (code, v) = get(agg, &format!("{v1}/pods")).await;
            assert_eq!((code, items(&v)), (200, NODES * 2), "round {rounds}: {v}");
            let (ns, pod) = shape.pod_key(0);
            let (code, v) = get(agg, &format!("{v1}/namespaces/{ns}/pods/{pod}")).await;
            assert_eq!(code, 200, "{v}");
        }
        rounds += 1;
    }

    signal(&aggs[2], "-CONT");
    until(
        "the thawed replica answers for every node",
        Duration::from_secs(60),
        async || {
            let (code, v) = get(&aggs[2], &format!("{v1}/nodes")).await;
            code == 200 && items(&v) == NODES
        },
    )
    .await;
}
