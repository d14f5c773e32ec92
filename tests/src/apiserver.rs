//! A stand-in Kubernetes API server for tests: real HTTPS (a test CA),
//! bearer-token client authentication, and the real JSON wire format of
//! TokenReview, SubjectAccessReview, and get/list/watch of ConfigMaps, Pods,
//! Nodes and EndpointSlices (including metadata-only lists and watches,
//! field and label selectors, resourceVersions and watch replay).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderMap, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

use crate::pki::{Leaf, TestCa};

/// The audience kube-apiserver gives tokens by default.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// What a token reviews as.
#[derive(Debug, Clone)]
pub enum TokenEntry {
    Valid {
        username: String,
        uid: String,
        groups: Vec<String>,
        extra: BTreeMap<String, Vec<String>>,
        audiences: Vec<String>,
    },
    /// Reviews as unauthenticated with this error (e.g. expired).
    Invalid(String),
}

/// The authorization policy: SAR spec → (allowed, reason).
pub type Policy = Box<dyn Fn(&Value) -> (bool, String) + Send + Sync>;

#[derive(Clone)]
struct Event {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Objects {
    rv: u64,
    /// (resource, namespace, name) → object.
    items: BTreeMap<(String, String, String), Value>,
    log: Vec<Event>,
}

struct ApiState {
    admin_token: String,
    objects: Mutex<Objects>,
    events: broadcast::Sender<Event>,
    tokens: Mutex<HashMap<String, TokenEntry>>,
    policy: Mutex<Policy>,
    token_reviews: AtomicU64,
    access_reviews: AtomicU64,
    requests: Mutex<Vec<String>>,
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

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "pods" => ("Pod", "v1"),
        "nodes" => ("Node", "v1"),
        "configmaps" => ("ConfigMap", "v1"),
        "endpointslices" => ("EndpointSlice", "discovery.k8s.io/v1"),
        _ => ("Unknown", "v1"),
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
            .route("/api/{*rest}", get(read))
            .route("/apis/{*rest}", get(read))
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

    /// Creates or replaces `object` (its `metadata.namespace`/`name`) as
    /// `resource` (e.g. "pods"), notifying watchers.
    pub fn apply(&self, resource: &str, mut object: Value) {
        let Ok(mut objs) = self.state.objects.lock() else {
            return;
        };
        objs.rv += 1;
        let rv = objs.rv;
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (kind, api_version) = kind_of(resource);
        object["kind"] = json!(kind);
        object["apiVersion"] = json!(api_version);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{resource}-{ns}-{name}"));
        }
        let key = (resource.to_owned(), ns, name);
        let kind = if objs.items.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        objs.items.insert(key, object.clone());
        let ev = Event {
            rv,
            resource: resource.to_owned(),
            kind,
            object,
        };
        objs.log.push(ev.clone());
        let _ = self.state.events.send(ev);
    }

    /// Deletes an object, notifying watchers.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) {
        let Ok(mut objs) = self.state.objects.lock() else {
            return;
        };
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        let Some(mut object) = objs.items.remove(&key) else {
            return;
        };
        objs.rv += 1;
        let rv = objs.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ev = Event {
            rv,
            resource: resource.to_owned(),
            kind: "DELETED",
            object,
        };
        objs.log.push(ev.clone());
        let _ = self.state.events.send(ev);
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

async fn token_review(State(s): State<Arc<ApiState>>, body: Bytes) -> Response {
    s.token_reviews.fetch_add(1, Ordering::SeqCst);
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let entry = s.tokens.lock().ok().and_then(|t| t.get(token).cloned());
    let st = match entry {
        Some(TokenEntry::Valid {
            username,
            uid,
            groups,
            extra,
            audiences,
        }) => {
            let auds: Vec<String> = if wanted.is_empty() {
                audiences.clone()
            } else {
                wanted
                    .iter()
                    .filter(|a| audiences.contains(a))
                    .cloned()
                    .collect()
            };
            if auds.is_empty() {
                json!({"authenticated": false, "error": "token audiences is invalid for the target audiences"})
            } else {
                json!({
                    "authenticated": true,
                    "user": {"username": username, "uid": uid, "groups": groups, "extra": extra},
                    "audiences": auds,
                })
            }
        }
        Some(TokenEntry::Invalid(e)) => json!({"authenticated": false, "error": e}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    json_response(&json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": review["spec"],
        "status": st,
    }))
}

async fn access_review(State(s): State<Arc<ApiState>>, body: Bytes) -> Response {
    s.access_reviews.fetch_add(1, Ordering::SeqCst);
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let (allowed, reason) = match s.policy.lock() {
        Ok(p) => p(&review["spec"]),
        Err(_) => (false, "policy poisoned".into()),
    };
    let mut st = json!({"allowed": allowed});
    if !reason.is_empty() {
        st["reason"] = json!(reason);
    }
    json_response(&json!({
        "kind": "SubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": review["spec"],
        "status": st,
    }))
}

/// A parsed object path: resource, namespace (empty: all), name (empty: collection).
fn parse_path(path: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (*ns, rest),
        _ => ("", rest),
    };
    match rest {
        [res] => Some((res.to_string(), ns.to_owned(), String::new())),
        [res, name] => Some((res.to_string(), ns.to_owned(), name.to_string())),
        _ => None,
    }
}

struct Filter {
    namespace: String,
    fields: Vec<(String, String)>,
    labels: Vec<(String, String)>,
}

fn pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|p| {
            let (k, v) = p.split_once("==").or_else(|| p.split_once('='))?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let md = &obj["metadata"];
        if !self.namespace.is_empty() && md["namespace"].as_str() != Some(&self.namespace) {
            return false;
        }
        let field = |k: &str| match k {
            "metadata.name" => md["name"].as_str(),
            "metadata.namespace" => md["namespace"].as_str(),
            "spec.nodeName" => obj["spec"]["nodeName"].as_str(),
            _ => None,
        };
        self.fields
            .iter()
            .all(|(k, v)| field(k) == Some(v.as_str()))
            && self
                .labels
                .iter()
                .all(|(k, v)| md["labels"][k.as_str()].as_str() == Some(v.as_str()))
    }
}

fn partial(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

async fn read(State(s): State<Arc<ApiState>>, headers: HeaderMap, req: Request) -> Response {
    let Some((resource, namespace, name)) = parse_path(req.uri().path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let metadata_only = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let shape = move |o: &Value| if metadata_only { partial(o) } else { o.clone() };
    if !name.is_empty() {
        let found = s.objects.lock().ok().and_then(|o| {
            o.items
                .get(&(resource.clone(), namespace, name.clone()))
                .cloned()
        });
        return match found {
            Some(o) => json_response(&shape(&o)),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{resource} {name:?} not found"),
            ),
        };
    }
    let filter = Filter {
        namespace,
        fields: pairs(query.get("fieldSelector").map_or("", String::as_str)),
        labels: pairs(query.get("labelSelector").map_or("", String::as_str)),
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watch {
        let Ok(objs) = s.objects.lock() else {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "poisoned",
            );
        };
        let items: Vec<Value> = objs
            .items
            .iter()
            .filter(|((r, _, _), o)| *r == resource && filter.matches(o))
            .map(|(_, o)| shape(o))
            .collect();
        let (kind, api_version) = if metadata_only {
            ("PartialObjectMetadataList", "meta.k8s.io/v1")
        } else {
            let (k, v) = kind_of(&resource);
            (k, v)
        };
        let kind = if metadata_only {
            kind.to_owned()
        } else {
            format!("{kind}List")
        };
        return json_response(&json!({
            "kind": kind, "apiVersion": api_version,
            "metadata": {"resourceVersion": objs.rv.to_string()},
            "items": items,
        }));
    }
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(60u64);
    let mut live = s.events.subscribe();
    let backlog: Vec<Event> = s
        .objects
        .lock()
        .map(|o| o.log.iter().filter(|e| e.rv > since).cloned().collect())
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let mut last = since;
        let line = |e: &Event| {
            let mut l = json!({"type": e.kind, "object": shape(&e.object)}).to_string();
            l.push('\n');
            Bytes::from(l)
        };
        for e in backlog {
            if e.resource == resource
                && filter.matches(&e.object)
                && tx.send(Ok(line(&e))).await.is_err()
            {
                return;
            }
            last = last.max(e.rv);
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                e = live.recv() => match e {
                    Ok(e) if e.rv > last => {
                        last = e.rv;
                        if e.resource == resource
                            && filter.matches(&e.object)
                            && tx.send(Ok(line(&e))).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "body"))
}

/// A token entry for a ServiceAccount, optionally bound to a pod on `node`.
pub fn service_account_token(
    namespace: &str,
    name: &str,
    node: Option<&str>,
    audiences: &[&str],
) -> TokenEntry {
    let mut extra = BTreeMap::new();
    extra.insert(
        "authentication.kubernetes.io/credential-id".to_owned(),
        vec![format!("JTI={namespace}-{name}")],
    );
    if let Some(node) = node {
        extra.insert(
            "authentication.kubernetes.io/node-name".to_owned(),
            vec![node.to_owned()],
        );
        extra.insert(
            "authentication.kubernetes.io/pod-name".to_owned(),
            vec![format!("{name}-{node}")],
        );
    }
    TokenEntry::Valid {
        username: format!("system:serviceaccount:{namespace}:{name}"),
        uid: format!("uid-sa-{namespace}-{name}"),
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".to_owned(),
        ],
        extra,
        audiences: audiences.iter().map(|s| s.to_string()).collect(),
    }
}

/// `kube-system/extension-apiserver-authentication` as kube-apiserver
/// publishes it, trusting `client_ca` for client certificates and
/// `front_proxy_ca` (CN `front-proxy-client`) for the front proxy.
pub fn authentication_configmap(client_ca: &str, front_proxy_ca: &str) -> Value {
    json!({
        "metadata": {"namespace": "kube-system", "name": "extension-apiserver-authentication"},
        "data": {
            "client-ca-file": client_ca,
            "requestheader-client-ca-file": front_proxy_ca,
            "requestheader-allowed-names": "[\"front-proxy-client\"]",
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
            "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
        }
    })
}

/// An EndpointSlice of `service` in kube-system with one ready endpoint:
/// the pod `pod` on 127.0.0.1, port `grpc` named "grpc". One slice per
/// replica lets replicas on one address differ by port.
pub fn endpoint_slice(service: &str, pod: &str, grpc: u16) -> Value {
    json!({
        "metadata": {
            "namespace": "kube-system",
            "name": format!("{service}-{pod}"),
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": ["127.0.0.1"],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": pod},
        }],
        "ports": [{"name": "grpc", "port": grpc, "protocol": "TCP"}],
    })
}
