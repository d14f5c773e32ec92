//! A stand-in Kubernetes API server for tests: real HTTPS (a test CA),
//! bearer-token client authentication, and the real JSON wire format of
//! TokenReview, SubjectAccessReview, and get/list/watch of ConfigMaps, Pods,
//! Nodes and EndpointSlices (including metadata-only lists and watches,
//! field and label selectors, resourceVersions and watch replay).

mod fixtures;
mod objects;
mod reviews;

pub use fixtures::{authentication_configmap, endpoint_slice};
pub use reviews::{service_account_token, Policy, TokenEntry, API_AUDIENCE};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::pki::{Leaf, TestCa};
use objects::{create, read, Objects};
use reviews::{access_review, token_review};

struct ApiState {
    admin_token: String,
    objects: Mutex<Objects>,
    events: broadcast::Sender<objects::Event>,
    tokens: Mutex<HashMap<String, TokenEntry>>,
    policy: Mutex<Policy>,
    token_reviews: AtomicU64,
    access_reviews: AtomicU64,
    requests: Mutex<Vec<String>>,
    /// While set, GETs of one object wait until this many are waiting.
    get_barrier: Mutex<Option<Arc<tokio::sync::Barrier>>>,
}

/// A running stand-in API server on 127.0.0.1.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    /// Its CA certificate file.
    pub ca_file: PathBuf,
    /// The bearer token its clients use.
    pub admin_token: String,
    state: Arc<ApiState>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_response(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

impl FakeApiServer {
    /// Starts on 127.0.0.1:0 with a new CA written into `dir`. Every
    /// access review is denied until [`set_policy`](Self::set_policy).
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let ca = TestCa::new(dir, "fake-apiserver-ca")?;
        let serving = ca.issue(
            dir,
            "fake-apiserver",
            Leaf::Server(&["127.0.0.1", "localhost"]),
            false,
        )?;
        let certs = metrics_proto::tls::load_certs(&serving.cert)?;
        let key = metrics_proto::tls::load_key(&serving.key)?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let admin_token = format!("admin-{}", std::process::id());
        let (events, _) = broadcast::channel(1024);
        let state = Arc::new(ApiState {
            admin_token: admin_token.clone(),
            objects: Mutex::new(Objects::default()),
            events,
            tokens: Mutex::new(HashMap::new()),
            policy: Mutex::new(Box::new(|_| (false, String::new()))),
            token_reviews: AtomicU64::new(0),
            access_reviews: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            get_barrier: Mutex::new(None),
        });
        let app = Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .route(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                post(access_review),
            )
            .route(
                "/api/{*rest}",
                get(read)
                    .post(create)
                    .put(objects::replace)
                    .patch(objects::patch),
            )
            .route(
                "/apis/{*rest}",
                get(read)
                    .post(create)
                    .put(objects::replace)
                    .patch(objects::patch),
            )
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                authenticate,
            ))
            .with_state(Arc::clone(&state));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn =
                        builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
                    // Connections (watches included) end when the server stops.
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            ca_file: ca.file.clone(),
            admin_token,
            state,
            stop,
            task,
        })
    }

    /// The next `n` GETs of single objects wait for one another (a minute
    /// at most), so `n` clients that read then create all read before any
    /// creates.
    pub fn gather_gets(&self, n: usize) {
        if let Ok(mut b) = self.state.get_barrier.lock() {
            *b = Some(Arc::new(tokio::sync::Barrier::new(n)));
        }
    }

    /// Stops serving: the listener closes and every open connection,
    /// watches included, is cut, as when the API server goes away.
    pub fn shut_down(&self) {
        self.task.abort();
        let _ = self.stop.send(true);
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Writes a kubeconfig for this server (its CA, the admin token) to
    /// `dir/<name>` and returns its path.
    pub fn kubeconfig(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: admin\ncurrent-context: fake\nusers:\n- name: admin\n  user:\n    token: {}\n",
                self.url(),
                self.ca_file.display(),
                self.admin_token
            ),
        )?;
        Ok(path)
    }

    /// Registers `token` as reviewing to `entry`.
    pub fn set_token(&self, token: &str, entry: TokenEntry) {
        if let Ok(mut t) = self.state.tokens.lock() {
            t.insert(token.to_owned(), entry);
        }
    }

    /// Replaces the authorization policy.
    pub fn set_policy(&self, policy: impl Fn(&Value) -> (bool, String) + Send + Sync + 'static) {
        if let Ok(mut p) = self.state.policy.lock() {
            *p = Box::new(policy);
        }
    }

    /// TokenReviews answered so far.
    pub fn token_reviews(&self) -> u64 {
        self.state.token_reviews.load(Ordering::SeqCst)
    }

    /// SubjectAccessReviews answered so far.
    pub fn access_reviews(&self) -> u64 {
        self.state.access_reviews.load(Ordering::SeqCst)
    }

    /// Request lines seen so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

/// Clients must present the admin token, as a real API server would
/// require some credential.
async fn authenticate(
    State(s): State<Arc<ApiState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Ok(mut r) = s.requests.lock() {
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        r.push(format!("{} {} accept={accept}", req.method(), req.uri()));
    }
    let expected = format!("Bearer {}", s.admin_token);
    if req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    next.run(req).await
}
