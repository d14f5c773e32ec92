//! Stored objects and their get, list and watch: selectors, metadata-only
//! answers, resourceVersions, and watches that replay from a version.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::{json_response, status, ApiState, FakeApiServer};

/// The longest a gathered GET waits for the others (`gather_gets`).
const GATHER_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(super) struct Event {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
pub(super) struct Objects {
    rv: u64,
    /// (resource, namespace, name) → object.
    items: BTreeMap<(String, String, String), Value>,
    log: Vec<Event>,
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "pods" => ("Pod", "v1"),
        "nodes" => ("Node", "v1"),
        "configmaps" => ("ConfigMap", "v1"),
        "secrets" => ("Secret", "v1"),
        "endpointslices" => ("EndpointSlice", "discovery.k8s.io/v1"),
        "apiservices" => ("APIService", "apiregistration.k8s.io/v1"),
        _ => ("Unknown", "v1"),
    }
}

impl FakeApiServer {
    /// Creates or replaces `object` (its `metadata.namespace`/`name`) as
    /// `resource` (e.g. "pods"), notifying watchers.
    pub fn apply(&self, resource: &str, object: Value) {
        let _ = store(&self.state, resource, object, false);
    }

    /// The stored object, if any.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let objs = self.state.objects.lock().ok()?;
        objs.items
            .get(&(resource.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
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

/// Stores `object` as `resource` and notifies watchers; with `create_only`
/// refuses (None) when one of that name exists, checked under the same lock.
fn store(state: &ApiState, resource: &str, object: Value, create_only: bool) -> Option<Value> {
    let mut objs = state.objects.lock().ok()?;
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = (resource.to_owned(), ns, name);
    if create_only && objs.items.contains_key(&key) {
        return None;
    }
    Some(write_locked(&mut objs, state, key, object))
}

/// Stores `object` under `key` with the next resourceVersion and notifies
/// watchers; the caller holds the lock.
fn write_locked(
    objs: &mut Objects,
    state: &ApiState,
    key: (String, String, String),
    mut object: Value,
) -> Value {
    let (resource, ns, name) = key.clone();
    let exists = objs.items.contains_key(&key);
    objs.rv += 1;
    let rv = objs.rv;
    let (kind, api_version) = kind_of(&resource);
    object["kind"] = json!(kind);
    object["apiVersion"] = json!(api_version);
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if object["metadata"]["uid"].is_null() {
        object["metadata"]["uid"] = json!(format!("uid-{resource}-{ns}-{name}"));
    }
    let kind = if exists { "MODIFIED" } else { "ADDED" };
    objs.items.insert(key, object.clone());
    let ev = Event {
        rv,
        resource,
        kind,
        object: object.clone(),
    };
    objs.log.push(ev.clone());
    let _ = state.events.send(ev);
    object
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` deletes,
/// anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

async fn body_json(req: Request) -> Result<Value, Response> {
    let body = axum::body::to_bytes(req.into_body(), 4 << 20)
        .await
        .map_err(|_| status(StatusCode::BAD_REQUEST, "BadRequest", "body"))?;
    serde_json::from_slice::<Value>(&body)
        .map_err(|_| status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON"))
}

/// Writes `next` over the stored object under one lock: 404 when there is
/// none, 409 Conflict when `expect_rv` is given and is not the stored
/// resourceVersion (optimistic concurrency, as kube-apiserver does).
fn update(
    state: &ApiState,
    key: (String, String, String),
    expect_rv: Option<String>,
    next: impl FnOnce(&Value) -> Value,
) -> Response {
    let Ok(mut objs) = state.objects.lock() else {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "poisoned",
        );
    };
    let Some(current) = objs.items.get(&key) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} {:?} not found", key.0, key.2),
        );
    };
    let rv = current["metadata"]["resourceVersion"].as_str();
    if expect_rv.is_some() && expect_rv.as_deref() != rv {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                key.0, key.2
            ),
        );
    }
    let mut object = next(current);
    object["metadata"]["name"] = json!(key.2);
    if !key.1.is_empty() {
        object["metadata"]["namespace"] = json!(key.1);
    }
    object["metadata"]["uid"] = current["metadata"]["uid"].clone();
    json_response(&write_locked(&mut objs, state, key, object))
}

/// PUT to an object: replaces it, honouring `metadata.resourceVersion`.
pub(super) async fn replace(State(s): State<Arc<ApiState>>, req: Request) -> Response {
    let Some(key) = parse_path(req.uri().path()).filter(|(_, _, n)| !n.is_empty()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such object");
    };
    let object = match body_json(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if object["metadata"]["name"].as_str() != Some(key.2.as_str()) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the name of the object does not match the name on the URL",
        );
    }
    let expect = object["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_owned);
    update(&s, key, expect, |_| object.clone())
}

/// PATCH with `application/merge-patch+json`.
pub(super) async fn patch(State(s): State<Arc<ApiState>>, req: Request) -> Response {
    let Some(key) = parse_path(req.uri().path()).filter(|(_, _, n)| !n.is_empty()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such object");
    };
    let merge = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/merge-patch+json"));
    if !merge {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "this stand-in takes merge patches only",
        );
    }
    let p = match body_json(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let expect = p["metadata"]["resourceVersion"].as_str().map(str::to_owned);
    update(&s, key, expect, |current| {
        let mut next = current.clone();
        merge_patch(&mut next, &p);
        next
    })
}

/// POST to a collection: creates the object, or answers 409 AlreadyExists
/// when one of that name exists, as kube-apiserver does.
pub(super) async fn create(State(s): State<Arc<ApiState>>, req: Request) -> Response {
    let Some((resource, namespace, name)) = parse_path(req.uri().path()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such collection");
    };
    if !name.is_empty() {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "POST goes to a collection",
        );
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), 4 << 20).await else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "body");
    };
    let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name is required",
        );
    };
    if !namespace.is_empty() {
        object["metadata"]["namespace"] = json!(namespace);
    }
    match store(&s, &resource, object, true) {
        Some(stored) => {
            let mut r = json_response(&stored);
            *r.status_mut() = StatusCode::CREATED;
            r
        }
        None => status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{resource} {name:?} already exists"),
        ),
    }
}

pub(super) async fn read(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    req: Request,
) -> Response {
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
        // Read first, then wait: every gathered GET sees the state from
        // before any of their callers could act on an answer.
        let found = s.objects.lock().ok().and_then(|o| {
            o.items
                .get(&(resource.clone(), namespace, name.clone()))
                .cloned()
        });
        let barrier = s.get_barrier.lock().ok().and_then(|b| b.clone());
        if let Some(b) = barrier {
            // Bounded: a caller whose GET never arrives (its request failed
            // on the way) must fail the test, not hang the ones that came.
            let released = tokio::time::timeout(GATHER_WAIT, b.wait()).await;
            if released
                .as_ref()
                .map_or(true, tokio::sync::BarrierWaitResult::is_leader)
            {
                if let Ok(mut slot) = s.get_barrier.lock() {
                    *slot = None;
                }
            }
        }
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
