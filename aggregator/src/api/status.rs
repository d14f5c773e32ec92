//! The one mapping from API errors to `kind: Status` responses, with the
//! messages, reasons and details metrics-server (k8s.io/apiserver) uses.

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use serde::Serialize;

use crate::api::selector::SelectorError;
use crate::auth::attributes::Attributes;

/// An API request that cannot be answered with an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// `<resource>.metrics.k8s.io "<name>" not found`.
    #[error("{resource}.metrics.k8s.io {name:?} not found")]
    NotFound {
        resource: &'static str,
        name: String,
    },
    /// A core object (standalone's Nodes) that does not exist:
    /// `nodes "<name>" not found`.
    #[error("{resource} {name:?} not found")]
    CoreNotFound {
        resource: &'static str,
        name: String,
    },
    /// A path this server does not serve.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// Malformed query (selectors).
    #[error("{0}")]
    BadRequest(String),
    /// Verb not supported on the resource (writes).
    #[error("{verb} is not supported on resources of kind \"{resource}.metrics.k8s.io\"")]
    MethodNotSupported {
        verb: String,
        resource: &'static str,
    },
    /// Credentials were presented and not accepted.
    #[error("Unauthorized")]
    Unauthorized,
    /// The authorizer said no.
    #[error("{}", forbidden_message(.user, .attrs, .reason))]
    Forbidden {
        user: String,
        attrs: Box<Attributes>,
        reason: String,
    },
    /// A review could not be made.
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// The answer cannot be given now (too many replicas did not answer).
    #[error("{0}")]
    Unavailable(String),
    /// A request URI longer than the server reads.
    #[error("the request URI is longer than {0} bytes")]
    UriTooLong(usize),
    /// Request headers larger or more numerous than the server reads.
    #[error("request headers exceed {0}")]
    HeadersTooLarge(&'static str),
    /// More requests in flight than `--max-requests-inflight`.
    #[error("Too many requests, please try again later.")]
    TooManyRequests,
    /// A watch from a resourceVersion older than the data kept.
    #[error("too old resource version: {0}")]
    Expired(String),
    /// No representation the `Accept` header allows.
    #[error("only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf")]
    NotAcceptable,
}

/// k8s.io/apiserver's wording: `pods.metrics.k8s.io is forbidden: User "u"
/// cannot list resource "pods" in API group "metrics.k8s.io" in the
/// namespace "ns"`, or `forbidden: User "u" cannot get path "/apis"`.
fn forbidden_message(user: &str, attrs: &Attributes, reason: &str) -> String {
    let (head, what) = match attrs {
        Attributes::NonResource { verb, path } => (
            "forbidden".to_owned(),
            format!("User {user:?} cannot {verb} path {path:?}"),
        ),
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
            ..
        } => {
            let qualified = if group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{group}")
            };
            let head = if name.is_empty() {
                format!("{qualified} is forbidden")
            } else {
                format!("{qualified} {name:?} is forbidden")
            };
            let full = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_owned()
            } else {
                format!("in the namespace {namespace:?}")
            };
            (
                head,
                format!(
                    "User {user:?} cannot {verb} resource {full:?} in API group {group:?} {scope}"
                ),
            )
        }
    };
    if reason.is_empty() {
        format!("{head}: {what}")
    } else {
        format!("{head}: {what}: {reason}")
    }
}

impl From<SelectorError> for ApiError {
    fn from(e: SelectorError) -> Self {
        ApiError::BadRequest(e.0)
    }
}

#[derive(Serialize)]
struct Details<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u32>,
}

#[derive(Serialize)]
struct Status<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    status: &'static str,
    message: String,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    code: u16,
}

#[derive(Serialize)]
struct Empty {}

impl ApiError {
    /// HTTP status code of the error.
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::CoreNotFound { .. } | ApiError::NoRoute => {
                StatusCode::NOT_FOUND
            }
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotSupported { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            ApiError::Expired(_) => StatusCode::GONE,
        }
    }

    /// The Status `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::CoreNotFound { .. } | ApiError::NoRoute => {
                "NotFound"
            }
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::MethodNotSupported { .. } => "MethodNotAllowed",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::TooManyRequests => "TooManyRequests",
            ApiError::UriTooLong(_) => "RequestURITooLong",
            ApiError::HeadersTooLarge(_) => "RequestHeaderFieldsTooLarge",
            ApiError::NotAcceptable => "NotAcceptable",
            ApiError::Expired(_) => "Expired",
        }
    }

    /// The Status body as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let details = match self {
            ApiError::NotFound { resource, name } => Some(Details {
                name: Some(name),
                group: Some("metrics.k8s.io"),
                kind: Some(resource),
                retry_after_seconds: None,
            }),
            ApiError::CoreNotFound { resource, name } => Some(Details {
                name: Some(name),
                group: None,
                kind: Some(resource),
                retry_after_seconds: None,
            }),
            ApiError::NoRoute => Some(Details {
                name: None,
                group: None,
                kind: None,
                retry_after_seconds: None,
            }),
            ApiError::MethodNotSupported { resource, .. } => Some(Details {
                name: None,
                group: Some("metrics.k8s.io"),
                kind: Some(resource),
                retry_after_seconds: None,
            }),
            ApiError::TooManyRequests => Some(Details {
                name: None,
                group: None,
                kind: None,
                retry_after_seconds: Some(RETRY_AFTER_SECONDS),
            }),
            ApiError::BadRequest(_)
            | ApiError::Unauthorized
            | ApiError::Unavailable(_)
            | ApiError::UriTooLong(_)
            | ApiError::HeadersTooLarge(_)
            | ApiError::NotAcceptable
            | ApiError::Expired(_) => None,
            ApiError::Forbidden { attrs, .. } => Some(match attrs.as_ref() {
                Attributes::Resource {
                    group,
                    resource,
                    name,
                    ..
                } => Details {
                    name: (!name.is_empty()).then_some(name.as_str()),
                    group: (!group.is_empty()).then_some(group.as_str()),
                    kind: Some(resource.as_str()),
                    retry_after_seconds: None,
                },
                Attributes::NonResource { .. } => Details {
                    name: None,
                    group: None,
                    kind: None,
                    retry_after_seconds: None,
                },
            }),
            ApiError::Internal(_) => Some(Details {
                name: None,
                group: None,
                kind: None,
                retry_after_seconds: None,
            }),
        };
        let status = Status {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message: self.to_string(),
            reason: self.reason(),
            details,
            code: self.code().as_u16(),
        };
        serde_json::to_vec(&status).unwrap_or_default()
    }
}

/// What a 429 asks the client to wait, as kube-apiserver does.
pub const RETRY_AFTER_SECONDS: u32 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.code(),
            [(header::CONTENT_TYPE, "application/json")],
            self.to_json(),
        )
            .into_response();
        if matches!(self, ApiError::TooManyRequests) {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(RETRY_AFTER_SECONDS),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_metrics_server() {
        let e = ApiError::NotFound {
            resource: "podmetrics",
            name: "default/nope".into(),
        };
        assert_eq!(e.code(), StatusCode::NOT_FOUND);
        assert_eq!(
            String::from_utf8(e.to_json()).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"podmetrics.metrics.k8s.io \"default/nope\" not found","reason":"NotFound","details":{"name":"default/nope","group":"metrics.k8s.io","kind":"podmetrics"},"code":404}"#
        );
    }

    #[test]
    fn unauthorized_and_forbidden_match_the_apiserver() {
        assert_eq!(
            String::from_utf8(ApiError::Unauthorized.to_json()).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#
        );
        let path = ApiError::Forbidden {
            user: "system:anonymous".into(),
            attrs: Box::new(Attributes::from_request(
                &http::Method::GET,
                "/apis/metrics.k8s.io/v1beta1",
                None,
            )),
            reason: String::new(),
        };
        assert_eq!(
            String::from_utf8(path.to_json()).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"forbidden: User \"system:anonymous\" cannot get path \"/apis/metrics.k8s.io/v1beta1\"","reason":"Forbidden","details":{},"code":403}"#
        );
        let pods = ApiError::Forbidden {
            user: "alice".into(),
            attrs: Box::new(Attributes::from_request(
                &http::Method::GET,
                "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods/web",
                None,
            )),
            reason: "no RBAC policy matched".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&pods.to_json()).unwrap();
        assert_eq!(
            v["message"],
            "pods.metrics.k8s.io \"web\" is forbidden: User \"alice\" cannot get resource \"pods\" in API group \"metrics.k8s.io\" in the namespace \"ns\": no RBAC policy matched"
        );
        assert_eq!(v["details"]["kind"], "pods");
        assert_eq!(v["details"]["group"], "metrics.k8s.io");
        assert_eq!(v["details"]["name"], "web");
        let nodes = ApiError::Forbidden {
            user: "bob".into(),
            attrs: Box::new(Attributes::from_request(
                &http::Method::GET,
                "/apis/metrics.k8s.io/v1beta1/nodes",
                None,
            )),
            reason: String::new(),
        };
        assert_eq!(
            nodes.to_string(),
            "nodes.metrics.k8s.io is forbidden: User \"bob\" cannot list resource \"nodes\" in API group \"metrics.k8s.io\" at the cluster scope"
        );
    }

    #[test]
    fn writes_are_method_not_allowed() {
        let e = ApiError::MethodNotSupported {
            verb: "create".into(),
            resource: "nodes",
        };
        let body: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(body["code"], 405);
        assert_eq!(
            body["message"],
            "create is not supported on resources of kind \"nodes.metrics.k8s.io\""
        );
        assert_eq!(body["reason"], "MethodNotAllowed");
    }
}
