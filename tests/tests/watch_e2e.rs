//! `?watch=true` over real connections, as reports arrive over gRPC:
//! ADDED for what is there, MODIFIED for each new window, DELETED when a
//! pod leaves its node's report, only what the selector matches; a watch
//! resumed from a resourceVersion sends only what is newer; bookmarks;
//! a timeout ends the stream cleanly; protobuf watch frames decoded by an
//! independent decoder (k8s-pb); `kubectl get --watch` prints the rows of
//! a Table watch; and a client that never reads is cut off, its watch
//! counted as stalled, while the server goes on serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use prost::Message;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use metrics_e2e::https::{self, Streaming};
use metrics_e2e::procs::{start_aggregator, AggregatorProc};
use metrics_e2e::reports::node_report;
use metrics_e2e::wait::eventually;
use metrics_proto::v1::ingest_client::IngestClient;
use metrics_proto::v1::{ContainerUsage, NodeReport, PodUsage};

const V1: &str = "/apis/metrics.k8s.io/v1beta1";
const WAIT: Duration = Duration::from_secs(30);

fn pod(name: &str, app: &str, millicores: u64, ts: i64) -> PodUsage {
    PodUsage {
        namespace: "team".into(),
        name: name.into(),
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())])
            .into_iter()
            .collect(),
        timestamp_unix_nanos: ts,
        window_nanos: 1_000_000_000,
        containers: vec![ContainerUsage {
            name: "c".into(),
            cpu_nanocores: millicores * 1_000_000,
            memory_working_set_bytes: 1 << 20,
            swap_bytes: 0,
        }],
    }
}

fn now_ns() -> i64 {
    metrics_proto::time::unix_nanos(std::time::SystemTime::now())
}

/// One node's report stream, sending what the test says when it says.
struct Node {
    name: String,
    tx: mpsc::Sender<NodeReport>,
    sequence: u64,
    _inbound: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn open(agg: &AggregatorProc, name: &str) -> Self {
        let (tx, rx) = mpsc::channel(4);
        let mut client = IngestClient::new(agg.grpc_channel().await.unwrap());
        let mut inbound = client
            .report(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let inbound = tokio::spawn(async move {
            let _client = client;
            while let Ok(Some(_)) = inbound.message().await {}
        });
        Self {
            name: name.into(),
            tx,
            sequence: 0,
            _inbound: inbound,
        }
    }

    async fn report(&mut self, pods: Vec<PodUsage>) {
        self.sequence += 1;
        let mut r = NodeReport {
            sequence: self.sequence,
            pods,
            ..node_report(&self.name, 60_000)
        };
        r.labels_version = metrics_proto::labels::version(&r);
        self.tx.send(r).await.unwrap();
    }
}

/// Reads newline-delimited JSON events.
struct JsonEvents {
    stream: Streaming,
    buf: BytesMut,
}

impl JsonEvents {
    async fn open(agg: &AggregatorProc, path: &str, accept: &str) -> Self {
        let stream = https::stream(agg.api, &agg.ca, path, &[("accept", accept)], None)
            .await
            .unwrap();
        assert_eq!(stream.status, 200, "{path}");
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// The next event; None when the stream ended cleanly.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(i + 1);
                return Some(
                    serde_json::from_slice(&line)
                        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line))),
                );
            }
            match self.stream.chunk(WAIT).await.unwrap() {
                Some(data) => self.buf.extend_from_slice(&data),
                None => {
                    assert!(self.buf.is_empty(), "a partial event at the end");
                    return None;
                }
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    async fn next_change(&mut self) -> Value {
        loop {
            let e = self.next().await.expect("the watch ended");
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }
}

fn summary(e: &Value) -> (String, String, String) {
    (
        e["type"].as_str().unwrap_or("").to_owned(),
        e["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        e["object"]["containers"][0]["usage"]["cpu"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    )
}

fn s(t: &str, n: &str, cpu: &str) -> (String, String, String) {
    (t.into(), n.into(), cpu.into())
}

async fn metric(agg: &AggregatorProc, line_start: &str) -> Option<f64> {
    let (_, _, body) = https::get(&format!("{}/metrics", agg.api_url()), &agg.ca, &[])
        .await
        .ok()?;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_watch_follows_reports_with_selector_resume_bookmarks_and_timeout() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(
        dir.path(),
        &[
            "--watch-poll-interval=200ms",
            "--watch-bookmark-interval=1s",
            // An HTTP/1.1 watch client sends nothing after its request:
            // the connection must not count as idle while events stream.
            "--idle-connection-timeout=2s",
        ],
    )
    .await
    .unwrap();
    let mut node = Node::open(&agg, "w-node").await;
    let t0 = now_ns() - 3_000_000_000;
    node.report(vec![
        pod("a", "web", 10, t0),
        pod("b", "web", 20, t0),
        pod("c", "db", 30, t0),
    ])
    .await;
    let list = format!("{}{V1}/namespaces/team/pods", agg.api_url());
    let listed = eventually(WAIT, async || {
        let (_, _, body) = https::get(&list, &agg.ca, &[]).await.unwrap();
        serde_json::from_str::<Value>(&body).unwrap_or_default()["items"]
            .as_array()
            .map(Vec::len)
            == Some(3)
    })
    .await;
    assert!(listed);

    let path = format!(
        "{V1}/namespaces/team/pods?watch=1&labelSelector=app%3Dweb&allowWatchBookmarks=true"
    );
    let mut w = JsonEvents::open(&agg, &path, "application/json").await;
    assert_eq!(
        w.stream.headers["content-type"], "application/json",
        "{:?}",
        w.stream.headers
    );
    // What is there, as ADDED, in name order; c is not selected.
    let first = w.next_change().await;
    assert_eq!(summary(&first), s("ADDED", "a", "10m"));
    assert_eq!(first["object"]["kind"], "PodMetrics");
    assert_eq!(first["object"]["apiVersion"], "metrics.k8s.io/v1beta1");
    assert_eq!(
        first["object"]["metadata"]["resourceVersion"],
        t0.to_string()
    );
    assert_eq!(first["object"]["metadata"]["labels"]["app"], "web");
    assert_eq!(summary(&w.next_change().await), s("ADDED", "b", "20m"));

    // A new window for a and c; b is gone from the node.
    let t1 = t0 + 1_000_000_000;
    node.report(vec![pod("a", "web", 11, t1), pod("c", "db", 31, t1)])
        .await;
    let mut changes = vec![
        summary(&w.next_change().await),
        summary(&w.next_change().await),
    ];
    changes.sort();
    assert_eq!(
        changes,
        [s("DELETED", "b", "20m"), s("MODIFIED", "a", "11m")]
    );

    // Bookmarks carry the newest version sent.
    let bookmark = w.next().await.expect("the watch ended");
    assert_eq!(
        bookmark["type"], "BOOKMARK",
        "no change was made, yet: {bookmark}"
    );
    assert_eq!(bookmark["object"]["kind"], "PodMetrics");
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        t1.to_string()
    );

    // A watch resumed from a's version sends nothing until a newer window.
    let resumed = format!(
        "{V1}/namespaces/team/pods?watch=true&labelSelector=app%3Dweb&resourceVersion={t1}"
    );
    let mut r = JsonEvents::open(&agg, &resumed, "application/json").await;
    let t2 = t1 + 1_000_000_000;
    node.report(vec![pod("a", "web", 12, t2), pod("c", "db", 32, t2)])
        .await;
    assert_eq!(summary(&r.next_change().await), s("MODIFIED", "a", "12m"));
    assert_eq!(summary(&w.next_change().await), s("MODIFIED", "a", "12m"));

    // A version older than the data kept: 410 Expired, then the end.
    let mut old = JsonEvents::open(
        &agg,
        &format!("{V1}/pods?watch=true&resourceVersion=1000"),
        "application/json",
    )
    .await;
    let e = old.next().await.expect("an ERROR event");
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["kind"], "Status");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(old.next().await.is_none());

    // timeoutSeconds ends the stream cleanly, after the initial events.
    let started = std::time::Instant::now();
    let mut t = JsonEvents::open(
        &agg,
        &format!("{V1}/nodes?watch=true&timeoutSeconds=1"),
        "application/json",
    )
    .await;
    let node_event = t.next().await.expect("the node as ADDED");
    assert_eq!(
        (
            node_event["type"].as_str(),
            node_event["object"]["kind"].as_str()
        ),
        (Some("ADDED"), Some("NodeMetrics"))
    );
    assert!(t.next().await.is_none());
    assert!(started.elapsed() >= Duration::from_secs(1));

    // A single object can be watched too.
    let mut one = JsonEvents::open(
        &agg,
        &format!("{V1}/namespaces/team/pods/c?watch=true&timeoutSeconds=1"),
        "application/json",
    )
    .await;
    assert_eq!(summary(&one.next_change().await), s("ADDED", "c", "32m"));

    // sendInitialEvents: the current objects, then the bookmark that ends them.
    let mut init = JsonEvents::open(
        &agg,
        &format!("{V1}/namespaces/team/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"),
        "application/json",
    )
    .await;
    let mut initial = Vec::new();
    loop {
        let e = init.next().await.expect("events");
        if e["type"] == "BOOKMARK" {
            assert_eq!(
                e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true",
                "{e}"
            );
            assert_eq!(e["object"]["metadata"]["resourceVersion"], t2.to_string());
            break;
        }
        initial.push(summary(&e));
    }
    assert_eq!(initial, [s("ADDED", "a", "12m"), s("ADDED", "c", "32m")]);
    let (code, _, body) = https::get(
        &format!(
            "{}{V1}/pods?watch=true&sendInitialEvents=true",
            agg.api_url()
        ),
        &agg.ca,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["kind"],
        "Status"
    );
    // YAML has no watch framing.
    let (code, _, _) = https::get(
        &format!("{}{V1}/pods?watch=true", agg.api_url()),
        &agg.ca,
        &[("accept", "application/yaml")],
    )
    .await
    .unwrap();
    assert_eq!(code, 406);

    // The first watch outlived the idle timeout several times over and
    // still streams.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = w.next().await.expect("the first watch still streams");
    assert_eq!(later["type"], "BOOKMARK");

    // Closed watches are counted as such.
    drop((w, r, init));
    let counted = eventually(WAIT, async || {
        metric(
            &agg,
            "metrics_aggregator_watches_ended_total{reason=\"timeout\"}",
        )
        .await
        .is_some_and(|v| v >= 2.0)
            && metric(&agg, "metrics_aggregator_watches ").await == Some(0.0)
    })
    .await;
    assert!(counted, "{}", agg.proc.log_text());
}

/// Reads length-prefixed protobuf watch frames.
async fn next_frame(stream: &mut Streaming, buf: &mut BytesMut) -> Vec<u8> {
    loop {
        if buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() >= 4 + len {
                buf.advance(4);
                return buf.split_to(len).to_vec();
            }
        }
        let data = stream.chunk(WAIT).await.unwrap().expect("the watch ended");
        buf.extend_from_slice(&data);
    }
}

fn unknown(body: &[u8]) -> k8s_pb::apimachinery::pkg::runtime::Unknown {
    assert_eq!(&body[..4], b"k8s\0", "the protobuf magic");
    k8s_pb::apimachinery::pkg::runtime::Unknown::decode(&body[4..]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_watch_frames_decode_with_an_independent_decoder() {
    use k8s_pb::apimachinery::pkg::apis::meta::v1::WatchEvent;
    use k8s_pb::metrics::pkg::apis::metrics::v1beta1::PodMetrics;
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(dir.path(), &["--watch-poll-interval=200ms"])
        .await
        .unwrap();
    let mut node = Node::open(&agg, "p-node").await;
    let t0 = now_ns() - 2_000_000_000;
    node.report(vec![pod("a", "web", 10, t0)]).await;

    let mut stream = https::stream(
        agg.api,
        &agg.ca,
        &format!("{V1}/namespaces/team/pods?watch=true"),
        &[(
            "accept",
            "application/vnd.kubernetes.protobuf;stream=watch, application/json",
        )],
        None,
    )
    .await
    .unwrap();
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.headers["content-type"],
        "application/vnd.kubernetes.protobuf;stream=watch"
    );
    let mut buf = BytesMut::new();
    let decode = |frame: Vec<u8>| {
        let outer = unknown(&frame);
        let tm = outer.type_meta.clone().unwrap();
        assert_eq!(tm.kind.as_deref(), Some("WatchEvent"));
        let event = WatchEvent::decode(outer.raw.as_deref().unwrap()).unwrap();
        let inner = unknown(&event.object.unwrap().raw.unwrap());
        assert_eq!(
            inner.type_meta.as_ref().and_then(|t| t.kind.as_deref()),
            Some("PodMetrics")
        );
        let pm = PodMetrics::decode(inner.raw.as_deref().unwrap()).unwrap();
        (event.r#type.unwrap(), pm)
    };
    // The proto field is named `type` in k8s-pb.
    let (t, pm) = decode(next_frame(&mut stream, &mut buf).await);
    assert_eq!(t, "ADDED");
    let meta = pm.metadata.unwrap();
    assert_eq!(meta.name.as_deref(), Some("a"));
    assert_eq!(meta.resource_version, Some(t0.to_string()));
    assert_eq!(pm.containers[0].usage["cpu"].string.as_deref(), Some("10m"));
    assert_eq!(
        pm.timestamp.unwrap().seconds,
        Some(t0.div_euclid(1_000_000_000))
    );

    node.report(vec![pod("a", "web", 15, t0 + 1_000_000_000)])
        .await;
    let (t, pm) = decode(next_frame(&mut stream, &mut buf).await);
    assert_eq!(t, "MODIFIED");
    assert_eq!(pm.containers[0].usage["cpu"].string.as_deref(), Some("15m"));
    node.report(vec![]).await;
    let (t, pm) = decode(next_frame(&mut stream, &mut buf).await);
    assert_eq!(t, "DELETED");
    assert_eq!(pm.metadata.unwrap().name.as_deref(), Some("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_prints_table_rows_as_windows_arrive() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(dir.path(), &["--watch-poll-interval=200ms"])
        .await
        .unwrap();
    let mut node = Node::open(&agg, "k-node").await;
    let t0 = now_ns() - 2_000_000_000;
    node.report(vec![pod("a", "web", 10, t0)]).await;
    let url = format!("{}{V1}/namespaces/team/pods/a", agg.api_url());
    assert!(
        eventually(WAIT, async || https::get(&url, &agg.ca, &[])
            .await
            .is_ok_and(|r| r.0 == 200))
        .await
    );

    let mut kubectl = tokio::process::Command::new("kubectl")
        .arg(format!("--kubeconfig={}", agg.kubeconfig.display()))
        .args(["get", "podmetrics", "-n", "team", "--watch"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl is required for this test (install kubernetes-client)");
    let stdout = kubectl.stdout.take().unwrap();
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut r = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = r.next_line().await {
            let _ = lines_tx.send(l);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = async |want: &[&str]| loop {
        let l = tokio::time::timeout(WAIT, lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no line like {want:?}; saw {seen:?}"))
            .unwrap_or_else(|| panic!("kubectl ended; saw {seen:?}"));
        let cells: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
        seen.push(l);
        if cells == want {
            return;
        }
    };
    wait_for(&["NAME", "CPU", "MEMORY", "WINDOW"]).await;
    wait_for(&["a", "10m", "1Mi", "1s"]).await;
    // A new window arrives as a new row.
    node.report(vec![pod("a", "web", 25, t0 + 1_000_000_000)])
        .await;
    wait_for(&["a", "25m", "1Mi", "1s"]).await;
    let _ = kubectl.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_is_cut_off_and_the_server_goes_on() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(
        dir.path(),
        &["--watch-poll-interval=100ms", "--watch-stall-timeout=2s"],
    )
    .await
    .unwrap();
    let mut node = Node::open(&agg, "s-node").await;
    let pods = |round: i64| {
        let ts = now_ns() - 1_000_000_000 + round;
        (0..1500)
            .map(|i| pod(&format!("pod-with-a-realistic-name-{i:05}"), "web", 10, ts))
            .collect::<Vec<_>>()
    };
    node.report(pods(0)).await;
    let url = format!(
        "{}{V1}/namespaces/team/pods/pod-with-a-realistic-name-00000",
        agg.api_url()
    );
    assert!(
        eventually(WAIT, async || https::get(&url, &agg.ca, &[])
            .await
            .is_ok_and(|r| r.0 == 200))
        .await
    );
    // A watcher with a tiny receive buffer that reads nothing, while every
    // pod gets a new window several times a second.
    let mut stuck = https::stream(
        agg.api,
        &agg.ca,
        &format!("{V1}/namespaces/team/pods?watch=true"),
        &[],
        Some(4096),
    )
    .await
    .unwrap();
    assert_eq!(stuck.status, 200);
    let feeding = tokio::spawn(async move {
        for round in 1..200 {
            node.report(pods(round)).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let cut = eventually(Duration::from_secs(60), async || {
        metric(
            &agg,
            "metrics_aggregator_watches_ended_total{reason=\"stalled\"}",
        )
        .await
        .is_some_and(|v| v >= 1.0)
    })
    .await;
    assert!(cut, "{}", agg.proc.log_text());
    assert_eq!(metric(&agg, "metrics_aggregator_watches ").await, Some(0.0));
    assert!(agg.proc.log_text().contains("took no event"));
    // The connection is gone: what it had buffered drains, then it
    // breaks (no clean end of the response).
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stuck.chunk(WAIT).await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    assert!(
        matches!(drained, Ok(Err(_))),
        "the stalled connection was not closed: {drained:?}"
    );
    feeding.abort();
    // Other requests are served meanwhile.
    let (code, _, _) = https::get(&url, &agg.ca, &[]).await.unwrap();
    assert_eq!(code, 200);
}
