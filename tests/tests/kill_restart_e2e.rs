//! The aggregator SIGKILLed and restarted under 200 agents: each agent
//! here is the real agent's router and senders (`metrics_agent::router`,
//! `transport`: backoff, jitter, shard maps) run in this process, one per
//! node, each with its own connection. Their reconnects are spread by the
//! jitter (the spread is printed and must not be a single instant), and
//! every node is served again within two resolutions of the restarted
//! replica starting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use metrics_agent::labels::Period;
use metrics_agent::router::Router;
use metrics_agent::transport::{answer_deadline, SenderCtx, Target};
use metrics_e2e::https;
use metrics_e2e::replicas::ReplicaSet;
use metrics_e2e::reports::node_report;
use metrics_e2e::wait::eventually;

const NODES: usize = 200;
const PERIOD: Duration = Duration::from_secs(5);

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn served_nodes(api: &str, ca: &std::path::Path) -> usize {
    let Ok((code, _, body)) =
        https::get(&format!("{api}/apis/metrics.k8s.io/v1beta1/nodes"), ca, &[]).await
    else {
        return 0;
    };
    if code != 200 {
        return 0;
    }
    serde_json::from_str::<Value>(&body).unwrap_or_default()["items"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_sigkill_are_spread_and_data_returns_within_two_resolutions() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // Without ingest batching, which would round every accept and answer to
    // its ticks and so hide the agents' own spread; the other end-to-end
    // tests run with it.
    let set = ReplicaSet::new(dir.path(), 1, 1, &["--ingest-batch-delay=0s"]);
    let mut agg = set.start(0).await.unwrap();
    let ca = agg.ca.clone();
    let api = agg.api_url();
    let tls = metrics_proto::tls::client_config(metrics_proto::tls::Verify::CaFile(&ca), &[b"h2"])
        .unwrap();

    let cancel = CancellationToken::new();
    let mut last_acks = Vec::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics_agent::metrics::AgentMetrics::register(
        &mut registry,
    ));
    for n in 0..NODES {
        let node = format!("node-{n:03}");
        let (tx, rx) = watch::channel(Some(Arc::new(Period::from_report(node_report(
            &node, 5_000,
        )))));
        // A fresh report every period, as the collector publishes them.
        let (name, stop) = (node.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERIOD);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let _ = tx.send(Some(Arc::new(Period::from_report(node_report(&name, 5_000)))));
                    }
                }
            }
        });
        let (maps_tx, maps_rx) = tokio::sync::mpsc::channel(8);
        let last_ack = Arc::new(AtomicI64::new(0));
        last_acks.push(Arc::clone(&last_ack));
        let ctx = SenderCtx {
            reports: rx,
            metrics: Arc::clone(&metrics),
            maps: maps_tx,
            last_ack_ms: last_ack,
            token_file: None,
            answer_deadline: answer_deadline(PERIOD),
        };
        let router = Router {
            node,
            period: PERIOD,
            bootstrap: vec![Target::new(&set.grpc_url(0), Some(Arc::clone(&tls))).unwrap()],
            tls: Some(Arc::clone(&tls)),
        };
        tokio::spawn(router.run(ctx, maps_rx, cancel.child_token()));
    }
    let all = eventually(Duration::from_secs(60), async || {
        served_nodes(&api, &ca).await == NODES
    })
    .await;
    assert!(all, "not every node was served at first");

    // SIGKILL, then the same replica again on the same ports.
    agg.proc.child.kill().await.unwrap();
    let killed_ms = unix_ms();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Times count from launching the replica again: it may take reports
    // before it says it is up.
    let restarted = Instant::now();
    let restarted_ms = unix_ms();
    agg = set.start(0).await.unwrap();

    let back = eventually(PERIOD * 2, async || {
        served_nodes(&agg.api_url(), &ca).await == NODES
    })
    .await;
    let full_after = restarted.elapsed();
    assert!(
        back,
        "{} of {NODES} nodes served {full_after:?} after the restart",
        served_nodes(&agg.api_url(), &ca).await
    );
    // A node can be served a moment before its agent reads the ack.
    let acked = eventually(Duration::from_secs(10), async || {
        last_acks
            .iter()
            .all(|a| a.load(Ordering::Relaxed) >= restarted_ms)
    })
    .await;
    assert!(acked, "not every agent saw an ack after the restart");
    // When each node's first report after the restart was accepted.
    let mut reconnect_ms: Vec<i64> = last_acks
        .iter()
        .map(|a| a.load(Ordering::Relaxed) - restarted_ms)
        .collect();
    reconnect_ms.sort_unstable();
    assert!(
        reconnect_ms[0] >= 0,
        "an ack from before the restart: {reconnect_ms:?}"
    );
    let pct = |p: usize| reconnect_ms[(reconnect_ms.len() - 1) * p / 100];
    println!(
        "{NODES} agents, killed {} ms before the restart: first accepted report after the restart at min {} ms, p10 {} ms, p50 {} ms, p90 {} ms, max {} ms; every node served {} ms after it",
        restarted_ms - killed_ms,
        pct(0),
        pct(10),
        pct(50),
        pct(90),
        pct(100),
        full_after.as_millis()
    );
    assert!(
        pct(90) - pct(10) >= 100,
        "reconnects were not spread: {reconnect_ms:?}"
    );
    cancel.cancel();
}
