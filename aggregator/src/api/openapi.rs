//! OpenAPI documents for metrics.k8s.io/v1beta1: `/openapi/v2` (Swagger
//! 2.0), `/openapi/v3` (the index) and `/openapi/v3/apis/metrics.k8s.io/v1beta1`
//! (OpenAPI 3.0), so kube-apiserver's OpenAPI aggregation has the group and
//! `kubectl explain` can describe its kinds. Each document is built once;
//! answers carry an `ETag`, and `If-None-Match` with it is a 304, which is
//! what kube-apiserver sends every minute.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

const GROUP: &str = "metrics.k8s.io";
const VERSION: &str = "v1beta1";
const PREFIX: &str = "io.k8s.metrics.pkg.apis.metrics.v1beta1";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
/// Path of the group's OpenAPI v3 document, relative to the server.
pub const V3_GROUP_PATH: &str = "/openapi/v3/apis/metrics.k8s.io/v1beta1";

/// A built document and its ETag.
struct Doc {
    /// Shared, so each answer is a reference count, not a copy.
    body: bytes::Bytes,
    etag: String,
}

impl Doc {
    fn new(v: &Value) -> Self {
        let body = v.to_string();
        let etag = format!("\"{:016X}\"", xxhash_rust::xxh3::xxh3_64(body.as_bytes()));
        Doc {
            body: body.into(),
            etag,
        }
    }

    /// 200 with the body, or 304 when the client holds this version.
    fn answer(&self, headers: &HeaderMap, immutable: bool) -> Response {
        let cache = if immutable {
            "public, immutable, max-age=31536000"
        } else {
            "no-cache, private"
        };
        let matches = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                let t = t.trim();
                t == "*" || t.trim_start_matches("W/") == self.etag
            });
        let common = [
            (header::ETAG, self.etag.clone()),
            (header::CACHE_CONTROL, cache.to_owned()),
            (header::VARY, "Accept".to_owned()),
        ];
        if matches {
            return (StatusCode::NOT_MODIFIED, common).into_response();
        }
        let mut resp = (common, self.body.clone()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

fn gvk(kind: &str) -> Value {
    json!([{ "group": GROUP, "kind": kind, "version": VERSION }])
}

/// Every schema, with references made by `r` (the two OpenAPI versions
/// put definitions in different places).
fn schemas(r: &dyn Fn(&str) -> Value) -> Map<String, Value> {
    let string = |d: &str| json!({ "type": "string", "description": d });
    let usage = |what: &str| {
        json!({
            "type": "object",
            "description": format!("{what}: cpu (cores) and memory (working set, bytes)."),
            "additionalProperties": r(QUANTITY),
        })
    };
    let api_version =
        string("APIVersion names the versioned schema of this object: metrics.k8s.io/v1beta1.");
    let kind = string("Kind is the REST resource this object represents.");
    let timestamp = json!({
        "description": "Time of the newest sample of the window.",
        "allOf": [r(&format!("{META}.Time"))],
    });
    let window = json!({
        "description": "Length of the interval [timestamp - window, timestamp] the usage is measured over.",
        "allOf": [r(&format!("{META}.Duration"))],
    });
    let object_meta = json!({
        "description": "Standard object metadata: name, namespace (pods), labels of the object measured, and the time of the answer.",
        "default": {},
        "allOf": [r(&format!("{META}.ObjectMeta"))],
    });
    let list_meta = json!({
        "description": "Standard list metadata.",
        "default": {},
        "allOf": [r(&format!("{META}.ListMeta"))],
    });
    let list = |item: &str, kind_name: &str| {
        json!({
            "description": format!("{kind_name} is a list of {item}."),
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": api_version,
                "kind": kind,
                "metadata": list_meta,
                "items": {
                    "description": format!("The {item} objects."),
                    "type": "array",
                    "items": { "default": {}, "allOf": [r(&format!("{PREFIX}.{item}"))] },
                },
            },
            "x-kubernetes-group-version-kind": gvk(kind_name),
        })
    };
    let mut m = Map::new();
    m.insert(
        format!("{PREFIX}.ContainerMetrics"),
        json!({
            "description": "Resource usage of one container of a pod.",
            "type": "object",
            "required": ["name", "usage"],
            "properties": {
                "name": { "type": "string", "default": "", "description": "Container name, as in the pod's spec." },
                "usage": usage("Usage of the container"),
            },
        }),
    );
    m.insert(
        format!("{PREFIX}.NodeMetrics"),
        json!({
            "description": "Resource usage of a node, measured over a window.",
            "type": "object",
            "required": ["timestamp", "window", "usage"],
            "properties": {
                "apiVersion": api_version,
                "kind": kind,
                "metadata": object_meta,
                "timestamp": timestamp,
                "window": window,
                "usage": usage("Usage of the whole node"),
            },
            "x-kubernetes-group-version-kind": gvk("NodeMetrics"),
        }),
    );
    m.insert(
        format!("{PREFIX}.NodeMetricsList"),
        list("NodeMetrics", "NodeMetricsList"),
    );
    m.insert(
        format!("{PREFIX}.PodMetrics"),
        json!({
            "description": "Resource usage of a pod's containers, measured over one window.",
            "type": "object",
            "required": ["timestamp", "window", "containers"],
            "properties": {
                "apiVersion": api_version,
                "kind": kind,
                "metadata": object_meta,
                "timestamp": timestamp,
                "window": window,
                "containers": {
                    "description": "Usage of each container with samples in the window.",
                    "type": "array",
                    "items": { "default": {}, "allOf": [r(&format!("{PREFIX}.ContainerMetrics"))] },
                    "x-kubernetes-list-type": "atomic",
                },
            },
            "x-kubernetes-group-version-kind": gvk("PodMetrics"),
        }),
    );
    m.insert(
        format!("{PREFIX}.PodMetricsList"),
        list("PodMetrics", "PodMetricsList"),
    );
    m.insert(
        QUANTITY.to_owned(),
        string("A fixed-point number with a unit suffix, as Kubernetes writes resource amounts: 250m, 1500000n, 128Mi."),
    );
    m.insert(
        format!("{META}.Time"),
        json!({ "type": "string", "format": "date-time", "description": "RFC 3339 time in UTC, to the second." }),
    );
    m.insert(
        format!("{META}.Duration"),
        string("A Go duration: 15s, 1m0s, 10.5s."),
    );
    m.insert(
        format!("{META}.ObjectMeta"),
        json!({
            "description": "Metadata every persisted or served object may carry.",
            "type": "object",
            "properties": {
                "name": string("Name, unique within the namespace (the node or pod measured)."),
                "namespace": string("Namespace of the pod; empty for nodes."),
                "labels": {
                    "type": "object",
                    "description": "Labels of the node or pod measured.",
                    "additionalProperties": { "type": "string", "default": "" },
                },
                "annotations": {
                    "type": "object",
                    "description": "Unstructured key-value data.",
                    "additionalProperties": { "type": "string", "default": "" },
                },
                "creationTimestamp": {
                    "description": "Time the answer was made.",
                    "allOf": [r(&format!("{META}.Time"))],
                },
                "uid": string("Unique ID; not set on metrics."),
                "resourceVersion": string("Opaque version; not set on metrics."),
                "generateName": string("Prefix for generated names; not set on metrics."),
                "selfLink": string("Deprecated; not set."),
            },
        }),
    );
    m.insert(
        format!("{META}.ListMeta"),
        json!({
            "description": "Metadata of a list.",
            "type": "object",
            "properties": {
                "resourceVersion": string("Opaque version of the list; empty for metrics."),
                "continue": string("Token to fetch the next chunk; never set (lists are whole)."),
                "remainingItemCount": { "type": "integer", "format": "int64", "description": "Items after this chunk; never set." },
                "selfLink": string("Deprecated; not set."),
            },
        }),
    );
    m
}

/// Query parameters of a list (v2 form; v3 wraps `type` in `schema`).
fn list_params(v3: bool) -> Vec<Value> {
    let p = |name: &str, d: &str, ty: &str| {
        if v3 {
            json!({ "name": name, "in": "query", "description": d, "schema": { "type": ty, "uniqueItems": true } })
        } else {
            json!({ "name": name, "in": "query", "description": d, "type": ty, "uniqueItems": true })
        }
    };
    vec![
        p(
            "labelSelector",
            "Only objects whose labels match this selector.",
            "string",
        ),
        p(
            "fieldSelector",
            "Only objects whose fields match this selector (metadata.name, metadata.namespace).",
            "string",
        ),
        p("watch", "Stream ADDED, MODIFIED and DELETED events as new windows arrive, instead of answering once.", "boolean"),
        p("resourceVersion", "With watch: only objects sampled after this version (a sample time in ns); an older one than the data kept gets a 410 Expired event.", "string"),
        p("timeoutSeconds", "With watch: end the watch after this many seconds.", "integer"),
        p("allowWatchBookmarks", "With watch: send BOOKMARK events carrying the newest version sent.", "boolean"),
        p("sendInitialEvents", "With watch: every current object as ADDED, then a BOOKMARK marking the end of them (needs resourceVersionMatch=NotOlderThan and allowWatchBookmarks).", "boolean"),
        p("resourceVersionMatch", "With sendInitialEvents: NotOlderThan.", "string"),
    ]
}

fn path_param(name: &str, d: &str, v3: bool) -> Value {
    if v3 {
        json!({ "name": name, "in": "path", "required": true, "description": d, "schema": { "type": "string", "uniqueItems": true } })
    } else {
        json!({ "name": name, "in": "path", "required": true, "description": d, "type": "string", "uniqueItems": true })
    }
}

const PRODUCES: [&str; 3] = [
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

/// Every operation, keyed by path.
fn paths(v3: bool, r: &dyn Fn(&str) -> Value) -> Map<String, Value> {
    let op = |id: &str, action: &str, kind: &str, schema: &str, d: &str| {
        let mut responses = Map::new();
        if v3 {
            let content: Map<String, Value> = PRODUCES
                .iter()
                .map(|t| ((*t).to_owned(), json!({ "schema": r(schema) })))
                .collect();
            responses.insert(
                "200".into(),
                json!({ "description": "OK", "content": content }),
            );
        } else {
            responses.insert(
                "200".into(),
                json!({ "description": "OK", "schema": r(schema) }),
            );
        }
        responses.insert("401".into(), json!({ "description": "Unauthorized" }));
        let mut o = json!({
            "description": d,
            "tags": ["metrics_v1beta1"],
            "operationId": id,
            "responses": responses,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": { "group": GROUP, "version": VERSION, "kind": kind },
        });
        if !v3 {
            if let Some(m) = o.as_object_mut() {
                m.insert("consumes".into(), json!(["*/*"]));
                m.insert("produces".into(), json!(PRODUCES));
                m.insert("schemes".into(), json!(["https"]));
            }
        }
        o
    };
    let base = format!("/apis/{GROUP}/{VERSION}");
    let node_list = format!("{PREFIX}.NodeMetricsList");
    let node = format!("{PREFIX}.NodeMetrics");
    let pod_list = format!("{PREFIX}.PodMetricsList");
    let pod = format!("{PREFIX}.PodMetrics");
    let name = path_param("name", "Name of the object.", v3);
    let ns = path_param("namespace", "Namespace of the objects.", v3);
    let mut m = Map::new();
    m.insert(
        format!("{base}/nodes"),
        json!({
            "get": op("listMetricsV1beta1NodeMetrics", "list", "NodeMetrics", &node_list, "Usage of every node."),
            "parameters": list_params(v3),
        }),
    );
    m.insert(
        format!("{base}/nodes/{{name}}"),
        json!({
            "get": op("readMetricsV1beta1NodeMetrics", "get", "NodeMetrics", &node, "Usage of one node."),
            "parameters": [name],
        }),
    );
    m.insert(
        format!("{base}/pods"),
        json!({
            "get": op("listMetricsV1beta1PodMetricsForAllNamespaces", "list", "PodMetrics", &pod_list, "Usage of every pod."),
            "parameters": list_params(v3),
        }),
    );
    let mut ns_params = vec![ns.clone()];
    ns_params.extend(list_params(v3));
    m.insert(
        format!("{base}/namespaces/{{namespace}}/pods"),
        json!({
            "get": op("listMetricsV1beta1NamespacedPodMetrics", "list", "PodMetrics", &pod_list, "Usage of the pods of a namespace."),
            "parameters": ns_params,
        }),
    );
    m.insert(
        format!("{base}/namespaces/{{namespace}}/pods/{{name}}"),
        json!({
            "get": op("readMetricsV1beta1NamespacedPodMetrics", "get", "PodMetrics", &pod, "Usage of one pod."),
            "parameters": [name, ns],
        }),
    );
    m
}

fn info() -> Value {
    json!({ "title": "metrics-aggregator", "version": env!("CARGO_PKG_VERSION") })
}

/// The Swagger 2.0 document (`v3` false) or the group's OpenAPI 3.0 one;
/// the two put definitions in different places.
fn document(v3: bool) -> Doc {
    let prefix = if v3 {
        "#/components/schemas/"
    } else {
        "#/definitions/"
    };
    let r = |name: &str| json!({ "$ref": format!("{prefix}{name}") });
    let (paths, schemas) = (paths(v3, &r), schemas(&r));
    Doc::new(&if v3 {
        json!({
            "openapi": "3.0.0",
            "info": info(),
            "paths": paths,
            "components": { "schemas": schemas },
        })
    } else {
        json!({ "swagger": "2.0", "info": info(), "paths": paths, "definitions": schemas })
    })
}

fn v2() -> &'static Doc {
    static DOC: OnceLock<Doc> = OnceLock::new();
    DOC.get_or_init(|| document(false))
}

fn v3_group() -> &'static Doc {
    static DOC: OnceLock<Doc> = OnceLock::new();
    DOC.get_or_init(|| document(true))
}

fn v3_index() -> &'static Doc {
    static DOC: OnceLock<Doc> = OnceLock::new();
    DOC.get_or_init(|| {
        let hash = v3_group().etag.trim_matches('"').to_owned();
        Doc::new(&json!({
            "paths": {
                format!("apis/{GROUP}/{VERSION}"): {
                    "serverRelativeURL": format!("{V3_GROUP_PATH}?hash={hash}"),
                },
            },
        }))
    })
}

/// `GET /openapi/v2`.
pub fn openapi_v2(headers: &HeaderMap) -> Response {
    v2().answer(headers, false)
}

/// `GET /openapi/v3`.
pub fn openapi_v3(headers: &HeaderMap) -> Response {
    v3_index().answer(headers, false)
}

/// `GET /openapi/v3/apis/metrics.k8s.io/v1beta1`; with the current
/// `?hash=` the answer may be cached for good.
pub fn openapi_v3_group(headers: &HeaderMap, query: Option<&str>) -> Response {
    let doc = v3_group();
    let hash = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "hash")
        .map(|(_, v)| v.into_owned());
    doc.answer(headers, hash.as_deref() == Some(doc.etag.trim_matches('"')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` points at a schema the document has.
    fn refs_resolve(doc: &Value, prefix: &str, defs: &Map<String, Value>) {
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(doc, &mut refs);
        assert!(refs.len() > 10);
        for r in refs {
            let name = r.strip_prefix(prefix).unwrap();
            assert!(defs.contains_key(name), "{r}");
        }
    }

    #[test]
    fn documents_are_self_contained() {
        let v2: Value = serde_json::from_slice(&v2().body).unwrap();
        refs_resolve(
            &v2,
            "#/definitions/",
            v2["definitions"].as_object().unwrap(),
        );
        assert_eq!(v2["paths"].as_object().unwrap().len(), 5);
        let v3: Value = serde_json::from_slice(&v3_group().body).unwrap();
        refs_resolve(
            &v3,
            "#/components/schemas/",
            v3["components"]["schemas"].as_object().unwrap(),
        );
        let index: Value = serde_json::from_slice(&v3_index().body).unwrap();
        let url = index["paths"]["apis/metrics.k8s.io/v1beta1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with(V3_GROUP_PATH));
    }
}
