//! Discovery documents for the metrics.k8s.io group: legacy
//! (`APIGroupList`, `APIGroup`, `APIResourceList`, byte-compatible with
//! metrics-server) and aggregated discovery (`apidiscovery.k8s.io` v2 and
//! v2beta1) when kube-apiserver asks for it.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue};

const GROUP_VERSION: &str = r#"{"groupVersion":"metrics.k8s.io/v1beta1","version":"v1beta1"}"#;

/// `GET /apis/metrics.k8s.io/v1beta1`.
pub const RESOURCE_LIST: &str = r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"metrics.k8s.io/v1beta1","resources":[{"name":"nodes","singularName":"","namespaced":false,"kind":"NodeMetrics","verbs":["get","list","watch"]},{"name":"pods","singularName":"","namespaced":true,"kind":"PodMetrics","verbs":["get","list","watch"]}]}"#;

fn group_json() -> String {
    format!(
        r#"{{"name":"metrics.k8s.io","versions":[{GROUP_VERSION}],"preferredVersion":{GROUP_VERSION}}}"#
    )
}

/// `GET /apis/metrics.k8s.io`.
pub fn group() -> String {
    let g = group_json();
    format!(r#"{{"kind":"APIGroup","apiVersion":"v1",{}"#, &g[1..])
}

/// `GET /apis` (legacy form).
pub fn group_list() -> String {
    format!(
        r#"{{"kind":"APIGroupList","apiVersion":"v1","groups":[{}]}}"#,
        group_json()
    )
}

/// The aggregated discovery document for `version` (`v2` or `v2beta1`).
pub fn aggregated(version: &str) -> String {
    let resource = |name: &str, kind: &str, scope: &str| {
        format!(
            r#"{{"resource":"{name}","responseKind":{{"group":"","version":"","kind":"{kind}"}},"scope":"{scope}","singularResource":"","verbs":["get","list","watch"]}}"#
        )
    };
    format!(
        r#"{{"kind":"APIGroupDiscoveryList","apiVersion":"apidiscovery.k8s.io/{version}","metadata":{{}},"items":[{{"metadata":{{"name":"metrics.k8s.io","creationTimestamp":null}},"versions":[{{"version":"v1beta1","resources":[{},{}],"freshness":"Current"}}]}}]}}"#,
        resource("nodes", "NodeMetrics", "Cluster"),
        resource("pods", "PodMetrics", "Namespaced"),
    )
}

/// Which aggregated discovery version the Accept header asks for first.
pub fn wanted_aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for media in accept.split(',') {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        let has = |p: &str| params.contains(&p);
        if params.first() == Some(&"application/json")
            && has("g=apidiscovery.k8s.io")
            && has("as=APIGroupDiscoveryList")
        {
            if has("v=v2") {
                return Some("v2");
            }
            if has("v=v2beta1") {
                return Some("v2beta1");
            }
        }
    }
    None
}

fn etag(body: &str) -> String {
    // FNV-1a: stable and enough to tell documents apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{h:016X}\"")
}

/// `GET /apis`, answering aggregated discovery when asked.
pub fn apis(headers: &HeaderMap) -> Response {
    let Some(version) = wanted_aggregated(headers) else {
        return json(group_list());
    };
    let body = aggregated(version);
    let content_type =
        format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    let mut resp = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::ETAG, etag(&body)),
            (header::CACHE_CONTROL, "public".to_owned()),
            (header::VARY, "Accept".to_owned()),
        ],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str("Accept") {
        resp.headers_mut().insert(header::VARY, v);
    }
    resp
}

/// A JSON response.
pub fn json(body: impl Into<axum::body::Body>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_documents_parse_and_name_the_group() {
        let list: serde_json::Value = serde_json::from_str(&group_list()).unwrap();
        assert_eq!(list["groups"][0]["preferredVersion"]["version"], "v1beta1");
        let g: serde_json::Value = serde_json::from_str(&group()).unwrap();
        assert_eq!(g["kind"], "APIGroup");
        assert_eq!(g["name"], "metrics.k8s.io");
        assert_eq!(g["versions"][0]["groupVersion"], "metrics.k8s.io/v1beta1");
    }

    #[test]
    fn aggregated_accept_negotiation() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"));
        assert_eq!(wanted_aggregated(&h), Some("v2"));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, */*"),
        );
        assert_eq!(wanted_aggregated(&h), None);
        let v: serde_json::Value = serde_json::from_str(&aggregated("v2")).unwrap();
        let res = &v["items"][0]["versions"][0]["resources"];
        assert_eq!(res[0]["responseKind"]["kind"], "NodeMetrics");
        assert_eq!(res[1]["scope"], "Namespaced");
    }
}
