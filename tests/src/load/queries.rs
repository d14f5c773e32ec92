//! API clients for the load generator: the four queries that matter
//! (an HPA-style namespace + selector list, one pod GET, all nodes, all
//! pods), each answer timed to its last byte and checked for completeness
//! against what the simulated cluster holds.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use xxhash_rust::xxh3::xxh3_64;

use super::workload::Shape;

/// The queries measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueryKind {
    /// `namespaces/NS/pods?labelSelector=app=X`: one Deployment's pods.
    Hpa,
    /// `namespaces/NS/pods/NAME`.
    PodGet,
    /// `nodes`.
    Nodes,
    /// `pods`.
    Pods,
}

impl QueryKind {
    pub const ALL: [QueryKind; 4] = [Self::Hpa, Self::PodGet, Self::Nodes, Self::Pods];
}

/// One answer, checked.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub latency: Duration,
    /// 200 with every object the cluster holds for the query.
    pub complete: bool,
    /// The answer carried a `Warning` header.
    pub warned: bool,
    /// Why it was incomplete.
    pub problem: Option<String>,
    /// now − each checked object's `timestamp`, ms.
    pub ages_ms: Vec<f64>,
}

/// A keep-alive HTTPS client toward every replica's API.
#[derive(Clone)]
pub struct Api {
    client: crate::https::HttpsClient,
    pub bases: Vec<String>,
}

impl Api {
    /// Trusts the CA in `ca`; `bases` are `https://HOST:PORT`.
    pub fn new(ca: &Path, bases: Vec<String>) -> anyhow::Result<Self> {
        Ok(Self {
            client: crate::https::client(ca)?,
            bases,
        })
    }

    /// GETs `path` (under `/apis/metrics.k8s.io/v1beta1/`) from replica
    /// `replica`, timing it to the last byte.
    pub async fn get(
        &self,
        replica: usize,
        path: &str,
    ) -> anyhow::Result<(StatusCode, HeaderMap, Bytes, Duration)> {
        self.get_as(replica, path, "application/json").await
    }

    /// [`get`](Self::get) with an `Accept` header.
    pub async fn get_as(
        &self,
        replica: usize,
        path: &str,
        accept: &str,
    ) -> anyhow::Result<(StatusCode, HeaderMap, Bytes, Duration)> {
        let url = format!(
            "{}/apis/metrics.k8s.io/v1beta1/{path}",
            self.bases[replica % self.bases.len()]
        );
        let started = Instant::now();
        let resp = self
            .client
            .request(
                http::Request::get(url)
                    .header(http::header::ACCEPT, accept)
                    .body(Empty::new())?,
            )
            .await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, body, started.elapsed()))
    }
}

/// Deterministic choices for one client.
pub struct Picker(u64);

impl Picker {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self, below: usize) -> usize {
        self.0 = xxh3_64(&self.0.to_le_bytes());
        (self.0 % below.max(1) as u64) as usize
    }
}

fn age_ms(item: &serde_json::Value, now_ns: i64) -> Option<f64> {
    let ts = metrics_proto::time::parse_rfc3339(item["timestamp"].as_str()?)?;
    Some((now_ns - ts) as f64 / 1e6)
}

fn count(body: &[u8], needle: &[u8]) -> usize {
    body.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Runs one query of `kind` against replica `replica` and checks it.
pub async fn one(
    api: &Api,
    shape: &Shape,
    kind: QueryKind,
    replica: usize,
    pick: &mut Picker,
) -> Outcome {
    let (path, want): (String, usize) = match kind {
        QueryKind::Hpa => {
            let app = pick.next(shape.apps());
            let sel: String =
                form_urlencoded::byte_serialize(format!("app={}", shape.app_name(app)).as_bytes())
                    .collect();
            (
                format!(
                    "namespaces/{}/pods?labelSelector={sel}",
                    shape.namespace(app)
                ),
                shape.app_size(app),
            )
        }
        QueryKind::PodGet => {
            let (ns, name) = shape.pod_key(pick.next(shape.total_pods()));
            (format!("namespaces/{ns}/pods/{name}"), 1)
        }
        QueryKind::Nodes => ("nodes".into(), shape.nodes),
        QueryKind::Pods => ("pods".into(), shape.total_pods()),
    };
    let (status, headers, body, latency) = match api.get(replica, &path).await {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                latency: Duration::ZERO,
                complete: false,
                warned: false,
                problem: Some(format!("{path}: {e:#}")),
                ages_ms: Vec::new(),
            }
        }
    };
    let now_ns = metrics_proto::time::unix_nanos(SystemTime::now());
    let warned = headers.contains_key(http::header::WARNING);
    let mut ages_ms = Vec::new();
    let got = if status != StatusCode::OK {
        0
    } else if kind == QueryKind::Pods {
        // Every object has one window; parsing 150,000 objects would cost
        // the client more than the server.
        count(&body, b"\"window\":")
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) if kind == QueryKind::PodGet => {
                ages_ms.extend(age_ms(&v, now_ns));
                usize::from(v["metadata"]["name"].is_string())
            }
            Ok(v) => {
                let items = v["items"].as_array().cloned().unwrap_or_default();
                ages_ms.extend(items.iter().filter_map(|i| age_ms(i, now_ns)));
                items.len()
            }
            Err(_) => 0,
        }
    };
    let complete = status == StatusCode::OK && got == want;
    Outcome {
        latency,
        complete,
        warned,
        problem: (!complete).then(|| {
            format!(
                "{path}: {status}, {got} of {want} objects{}",
                headers
                    .get(http::header::WARNING)
                    .and_then(|w| w.to_str().ok())
                    .map(|w| format!(", warning {w}"))
                    .unwrap_or_default()
            )
        }),
        ages_ms,
    }
}

/// `clients` concurrent clients, each running `count` queries of `kind`
/// (spread over the replicas), stopping early at `limit`.
pub async fn run(
    api: &Api,
    shape: Shape,
    kind: QueryKind,
    clients: usize,
    count: usize,
    limit: Duration,
) -> Vec<Outcome> {
    let deadline = Instant::now() + limit;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let api = api.clone();
        tasks.spawn(async move {
            let mut pick = Picker::new(0x1000 + c as u64 * 7919 + kind as u64);
            let mut out = Vec::with_capacity(count);
            for i in 0..count {
                if Instant::now() >= deadline {
                    break;
                }
                out.push(one(&api, &shape, kind, c + i, &mut pick).await);
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap_or_default());
    }
    all
}
