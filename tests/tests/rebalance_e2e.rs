//! A membership change: two replicas (R=1), then a third joins through the
//! peers file. Agents move the nodes the new replica now owns to it within
//! seconds, and no node is missing from any answer meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use metrics_e2e::cgroupfs::write_atomic;
use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_e2e::procs::{free_port, shared_cert, start_agent, start_aggregator, AggregatorProc};
use metrics_proto::ring;
use serde_json::Value;

const NODES: usize = 6;

fn peers_text(ids: &[String], ports: &[u16]) -> String {
    ids.iter()
        .zip(ports)
        .map(|(id, p)| format!("{id}=https://127.0.0.1:{p}\n"))
        .collect()
}

async fn get(agg: &AggregatorProc, path: &str) -> Option<String> {
    let (code, _, body) = https::get(&format!("{}{path}", agg.api_url()), &agg.ca, &[])
        .await
        .ok()?;
    (code == 200).then_some(body)
}

async fn node_names(agg: &AggregatorProc) -> Vec<String> {
    let Some(body) = get(agg, "/apis/metrics.k8s.io/v1beta1/nodes").await else {
        return vec![];
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["items"].as_array().map_or(vec![], |a| {
        a.iter()
            .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    })
}

async fn held(agg: &AggregatorProc) -> Option<usize> {
    let text = get(agg, "/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix("metrics_aggregator_nodes "))
        .and_then(|v| v.trim().parse().ok())
}

async fn start(
    dir: &Path,
    id: &str,
    grpc: u16,
    peers_file: &Path,
    cert: &(String, String),
) -> AggregatorProc {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).unwrap();
    start_aggregator(
        &d,
        &[
            &format!("--shard-id={id}"),
            &format!("--peers-file={}", peers_file.display()),
            "--replication-factor=1",
            // Wide enough that a live peer on a loaded machine is never
            // counted as missing.
            "--peer-timeout=3s",
            &format!("--grpc-port={grpc}"),
            &format!("--tls-cert-file={}", cert.0),
            &format!("--tls-private-key-file={}", cert.1),
        ],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_takes_its_nodes_without_a_gap() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cert = shared_cert(dir.path());
    let ids: Vec<String> = (0..3).map(|i| format!("agg-{i}")).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers_file = dir.path().join("peers");
    write_atomic(&peers_file, &peers_text(&ids[..2], &ports[..2]));

    let a0 = start(dir.path(), &ids[0], ports[0], &peers_file, &cert).await;
    let a1 = start(dir.path(), &ids[1], ports[1], &peers_file, &cert).await;

    let names: Vec<String> = (0..NODES).map(|i| format!("node-{i}")).collect();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok").unwrap();
    let mut keep = Vec::new();
    for name in &names {
        let node = FakeNode::one_pod(name);
        let k = kubelet::start(node, "tok", dir.path()).await.unwrap();
        let args = [
            k.agent_flags(&token),
            vec![
                format!("--aggregator-ca-file={}", cert.0),
                format!("--aggregator=https://127.0.0.1:{}", ports[0]),
                "--metric-resolution=1s".into(),
            ],
        ]
        .concat();
        keep.push((start_agent(dir.path(), name, &args).unwrap(), k));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while node_names(&a0).await != names {
        assert!(
            Instant::now() < deadline,
            "two replicas never served every node"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The third replica joins: it starts as a standby, then the longer
    // list is published.
    let a2 = start(dir.path(), &ids[2], ports[2], &peers_file, &cert).await;
    let moving: Vec<&String> = names
        .iter()
        .filter(|n| ring::owners(&ids, n, 1)[0] == ids[2])
        .collect();
    write_atomic(&peers_file, &peers_text(&ids, &ports));
    let changed = Instant::now();

    // No gap: every poll of every old replica lists every node, until the
    // new one holds exactly what it owns.
    let mut moved_after = None;
    while changed.elapsed() < Duration::from_secs(30) {
        for agg in [&a0, &a1] {
            assert_eq!(
                node_names(agg).await,
                names,
                "a node went missing {:?} after the change",
                changed.elapsed()
            );
        }
        if moved_after.is_none() && held(&a2).await == Some(moving.len()) {
            moved_after = Some(changed.elapsed());
        }
        if moved_after.is_some() && node_names(&a2).await == names {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = moved_after.unwrap_or_else(|| {
        panic!(
            "{} nodes never reached agg-2: {}",
            moving.len(),
            a2.proc.log_text()
        )
    });
    // Reload (2 s) plus one report period, with wide slack for a loaded
    // machine.
    assert!(took < Duration::from_secs(15), "moving took {took:?}");
    assert_eq!(
        node_names(&a2).await,
        names,
        "the new replica answers for the whole cluster"
    );
}
