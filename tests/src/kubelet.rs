//! A fake kubelet for tests: HTTPS on 127.0.0.1 with a self-signed
//! certificate, serving `/metrics/resource` in the kubelet's [STABLE] text
//! format. Counters advance in real time at configured rates, so an agent
//! that computes rates correctly reports exactly those rates.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One container's steady behaviour.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub name: String,
    /// Runtime ID (64 hex digits) shown in the pod status.
    pub id: String,
    /// CPU use in cores (1.0 = one core).
    pub cores: f64,
    /// Constant working set, bytes.
    pub memory: u64,
}

/// One pod on the fake node.
#[derive(Debug, Clone)]
pub struct FakePod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub containers: Vec<FakeContainer>,
}

/// What the fake node reports.
#[derive(Debug, Clone)]
pub struct FakeNode {
    pub cores: f64,
    pub memory: u64,
    pub pods: Vec<FakePod>,
    /// Raw lines appended to every payload (e.g. malformed ones).
    pub extra_lines: Vec<String>,
}

impl FakeNode {
    /// A node using a quarter core and 1 GiB, with one pod
    /// `ns/pod-on-<node>` whose container `c` uses 0.05 cores and 1 MiB.
    pub fn one_pod(node: &str) -> Self {
        FakeNode {
            cores: 0.25,
            memory: 1 << 30,
            pods: vec![FakePod {
                uid: pod_uid(node),
                namespace: "ns".into(),
                name: format!("pod-on-{node}"),
                labels: BTreeMap::new(),
                containers: vec![FakeContainer {
                    name: "c".into(),
                    id: container_id(node),
                    cores: 0.05,
                    memory: 1 << 20,
                }],
            }],
            extra_lines: vec![],
        }
    }
}

/// A running fake kubelet; stops when dropped.
pub struct FakeKubelet {
    pub addr: SocketAddr,
    /// PEM of its self-signed certificate, for `--kubelet-certificate-authority`.
    pub ca_file: PathBuf,
    /// Bearer token it requires.
    pub token: String,
    scrapes: Arc<AtomicU64>,
    fault: Arc<AtomicU8>,
    grid_ms: Arc<AtomicU64>,
    gzip: Arc<Gzip>,
    task: JoinHandle<()>,
}

/// When the fake kubelet compresses, and how often it was asked to.
#[derive(Default)]
struct Gzip {
    /// Compress every answer, asked or not (as a proxy in front might).
    always: std::sync::atomic::AtomicBool,
    /// Requests that carried `Accept-Encoding: gzip`.
    asked: AtomicU64,
}

/// How `/metrics/resource` misbehaves (`/pods` keeps working).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    None = 0,
    /// 503, as a kubelet whose stats provider is broken answers.
    Unavailable,
    /// 500.
    ServerError,
    /// 200 with bytes that are not the text format.
    Garbage,
    /// 200 with every value 0.
    Zeros,
    /// 200 whose body stops half-way (a Content-Length it never reaches).
    CutBody,
    /// Accepts the request and never answers.
    Hang,
}

impl Fault {
    fn from_u8(v: u8) -> Self {
        [
            Fault::None,
            Fault::Unavailable,
            Fault::ServerError,
            Fault::Garbage,
            Fault::Zeros,
            Fault::CutBody,
            Fault::Hang,
        ]
        .get(usize::from(v))
        .copied()
        .unwrap_or(Fault::None)
    }
}

impl FakeKubelet {
    /// While set, every answer is gzip-compressed whether the request
    /// asked for it or not.
    pub fn set_gzip_always(&self, on: bool) {
        self.gzip.always.store(on, Ordering::Relaxed);
    }

    /// Number of requests that carried `Accept-Encoding: gzip`.
    pub fn gzip_asked(&self) -> u64 {
        self.gzip.asked.load(Ordering::Relaxed)
    }

    /// Number of authorised `/metrics/resource` requests served.
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The flags that point an agent at this kubelet with `token_file`.
    pub fn agent_flags(&self, token_file: &Path) -> Vec<String> {
        vec![
            format!("--kubelet-url={}", self.url()),
            format!("--kubelet-certificate-authority={}", self.ca_file.display()),
            format!("--kubelet-token-file={}", token_file.display()),
        ]
    }

    /// While set, `/metrics/resource` answers 503 (`/pods` keeps working),
    /// as a kubelet whose stats provider is broken does.
    pub fn set_failing(&self, failing: bool) {
        self.set_fault(if failing {
            Fault::Unavailable
        } else {
            Fault::None
        });
    }

    /// From now on samples are taken on a grid of `ms` milliseconds (their
    /// times and counters as of the last grid point), as the kubelet's
    /// housekeeping does; 0 turns it off (samples at request time).
    pub fn set_timestamp_grid_ms(&self, ms: u64) {
        self.grid_ms.store(ms, Ordering::Relaxed);
    }

    /// `/metrics/resource` misbehaves as `fault` says from now on.
    pub fn set_fault(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::Relaxed);
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    node: FakeNode,
    t0: f64,
    /// Empty: callers authenticate with a client certificate instead.
    token: String,
    scrapes: Arc<AtomicU64>,
    fault: Arc<AtomicU8>,
    grid_ms: Arc<AtomicU64>,
    gzip: Arc<Gzip>,
}

impl State {
    /// The sample time of a scrape now, in seconds.
    fn sample_time(&self) -> f64 {
        let now = now_secs();
        match self.grid_ms.load(Ordering::Relaxed) {
            0 => now,
            ms => {
                let step = ms as f64 / 1000.0;
                (now / step).floor() * step
            }
        }
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The payload at `now` (seconds since the epoch): cumulative CPU is
/// `1000 + cores × (now − t0)` core-seconds, timestamps are `now` in ms.
pub fn render(node: &FakeNode, t0: f64, now: f64) -> String {
    let ts = (now * 1000.0) as i64;
    let elapsed = now - t0;
    let mut out = String::new();
    let fam = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}");
    };
    fam(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
    );
    for p in &node.pods {
        for c in &p.containers {
            let _ = writeln!(
                out,
                "container_cpu_usage_seconds_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {ts}",
                c.name, p.namespace, p.name, 1000.0 + c.cores * elapsed
            );
        }
    }
    fam(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
    );
    for p in &node.pods {
        for c in &p.containers {
            let _ = writeln!(
                out,
                "container_memory_working_set_bytes{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {ts}",
                c.name, p.namespace, p.name, c.memory
            );
        }
    }
    fam(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
    );
    for p in &node.pods {
        for c in &p.containers {
            let _ = writeln!(
                out,
                "container_start_time_seconds{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {ts}",
                c.name, p.namespace, p.name, t0 - 3600.0
            );
        }
    }
    fam(
        &mut out,
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
    );
    let _ = writeln!(
        out,
        "node_cpu_usage_seconds_total {} {ts}",
        5000.0 + node.cores * elapsed
    );
    fam(
        &mut out,
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
    );
    let _ = writeln!(out, "node_memory_working_set_bytes {} {ts}", node.memory);
    fam(
        &mut out,
        "scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
    );
    out.push_str("scrape_error 0\n");
    for l in &node.extra_lines {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The kubelet's `/pods` answer (a core/v1 PodList) for the fake node;
/// containers started at `t0 − 3600` s, as in [`render`].
pub fn pod_list(node: &FakeNode, t0: f64) -> String {
    let items: Vec<serde_json::Value> = node.pods.iter().map(|p| pod_object(p, t0)).collect();
    serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
        .to_string()
}

/// The fake node's pods as the Kubernetes API serves them: the same core/v1
/// Pods as [`pod_list`], bound to `node_name`.
pub fn api_pods(node: &FakeNode, node_name: &str, t0: f64) -> Vec<serde_json::Value> {
    node.pods
        .iter()
        .map(|p| {
            let mut o = pod_object(p, t0);
            o["spec"]["nodeName"] = serde_json::json!(node_name);
            o
        })
        .collect()
}

fn pod_object(p: &FakePod, t0: f64) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": p.name, "namespace": p.namespace, "uid": p.uid, "labels": p.labels},
        "spec": {"containers": p.containers.iter().map(|c| serde_json::json!({"name": c.name})).collect::<Vec<_>>()},
        "status": {
            "phase": "Running",
            "containerStatuses": p.containers.iter().map(|c| serde_json::json!({
                "name": c.name,
                "containerID": format!("containerd://{}", c.id),
                "state": {"running": {"startedAt": metrics_proto::time::format_rfc3339(((t0 - 3600.0) * 1e9) as i64)}},
            })).collect::<Vec<_>>()
        }
    })
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn handle(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !state.token.is_empty() && auth != Some(&format!("Bearer {}", state.token)) {
        return reply(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let gzip = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    if gzip {
        state.gzip.asked.fetch_add(1, Ordering::Relaxed);
    }
    let gzip = gzip || state.gzip.always.load(Ordering::Relaxed);
    let body = match req.uri().path() {
        "/metrics/resource" => match Fault::from_u8(state.fault.load(Ordering::Relaxed)) {
            Fault::None | Fault::Hang => {
                state.scrapes.fetch_add(1, Ordering::Relaxed);
                render(&state.node, state.t0, state.sample_time())
            }
            Fault::Unavailable => {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stats provider unavailable",
                );
            }
            Fault::ServerError => {
                return reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
            Fault::Garbage => {
                "\u{0}\u{1}\u{7f}<html>{{{ not the text format\n\u{feff}}}}\n".repeat(50)
            }
            Fault::Zeros => {
                let text = render(&state.node, state.t0, state.sample_time());
                zeroed(&text)
            }
            Fault::CutBody => {
                let text = render(&state.node, state.t0, state.sample_time());
                let mut r = reply(StatusCode::OK, text[..text.len() / 2].to_owned());
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, http::HeaderValue::from(text.len()));
                return r;
            }
        },
        "/pods" => pod_list(&state.node, state.t0),
        _ => return reply(StatusCode::NOT_FOUND, "404 page not found"),
    };
    if !gzip {
        return reply(StatusCode::OK, body);
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let compressed = enc.write_all(body.as_bytes()).and_then(|_| enc.finish());
    match compressed {
        Ok(bytes) => {
            let mut r = reply(StatusCode::OK, bytes);
            r.headers_mut().insert(
                header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
            r
        }
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `text` with every sample's value replaced by 0 (timestamps kept).
fn zeroed(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with('#') {
                return l.to_owned();
            }
            // `name{labels} value timestamp`: the value is the second field
            // from the end.
            let mut parts: Vec<&str> = l.rsplitn(3, ' ').collect();
            if parts.len() == 3 {
                parts[1] = "0";
                format!("{} {} {}", parts[2], parts[1], parts[0])
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A stable 64-hex-digit container ID for a name.
pub fn container_id(seed: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}").repeat(4)
}

/// A stable pod UID for a name.
pub fn pod_uid(seed: &str) -> String {
    let h = container_id(seed);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Starts a fake kubelet on 127.0.0.1:0 writing its CA into `dir`.
pub async fn start(node: FakeNode, token: &str, dir: &Path) -> anyhow::Result<FakeKubelet> {
    start_at(node, token, dir, now_secs()).await
}

/// Like [`start`], but callers must present a client certificate signed by
/// the CA in `client_ca` (PEM file) instead of a token, as a kubelet with
/// `--client-ca-file` and no webhook authentication requires.
pub async fn start_with_client_ca(
    node: FakeNode,
    dir: &Path,
    client_ca: &Path,
) -> anyhow::Result<FakeKubelet> {
    let mut roots = rustls::RootCertStore::empty();
    for c in metrics_proto::tls::load_certs(client_ca)? {
        roots.add(c)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
    start_inner(node, "", dir, now_secs(), Some(verifier)).await
}

/// Like [`start`], with counters anchored at `t0` (seconds since the epoch).
pub async fn start_at(
    node: FakeNode,
    token: &str,
    dir: &Path,
    t0: f64,
) -> anyhow::Result<FakeKubelet> {
    start_inner(node, token, dir, t0, None).await
}

async fn start_inner(
    node: FakeNode,
    token: &str,
    dir: &Path,
    t0: f64,
    client_certs: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> anyhow::Result<FakeKubelet> {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    let ca_file = dir.join(format!("kubelet-{}.crt", rand_suffix()));
    std::fs::write(&ca_file, cert.cert.pem())?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!(e))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_certs {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(vec![cert.cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let scrapes = Arc::new(AtomicU64::new(0));
    let fault = Arc::new(AtomicU8::new(Fault::None as u8));
    let grid_ms = Arc::new(AtomicU64::new(0));
    let gzip = Arc::new(Gzip::default());
    let state = Arc::new(State {
        node,
        t0,
        token: token.to_owned(),
        scrapes: Arc::clone(&scrapes),
        fault: Arc::clone(&fault),
        grid_ms: Arc::clone(&grid_ms),
        gzip: Arc::clone(&gzip),
    });
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let state = Arc::clone(&state);
                    async move {
                        let hang = req.uri().path() == "/metrics/resource"
                            && state.fault.load(Ordering::Relaxed) == Fault::Hang as u8;
                        if hang {
                            // Longer than any request timeout; the connection
                            // goes when the client gives up.
                            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        }
                        Ok::<_, Infallible>(handle(&state, &req))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(FakeKubelet {
        addr,
        ca_file,
        token: token.to_owned(),
        scrapes,
        fault,
        grid_ms,
        gzip,
        task,
    })
}

fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) * 1000 + N.fetch_add(1, Ordering::Relaxed)
}
