//! The one mapping from API errors to `kind: Status` responses, with the
//! messages, reasons and details metrics-server (k8s.io/apiserver) uses.

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use serde::Serialize;

use crate::api::selector::SelectorError;

/// An API request that cannot be answered with an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// `<resource>.metrics.k8s.io "<name>" not found`.
    #[error("{resource}.metrics.k8s.io {name:?} not found")]
    NotFound {
        resource: &'static str,
        name: String,
    },
    /// A path this server does not serve.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// Malformed query (selectors).
    #[error("{0}")]
    BadRequest(String),
    /// Verb not supported on the resource (watch, writes).
    #[error("{verb} is not supported on resources of kind \"{resource}.metrics.k8s.io\"")]
    MethodNotSupported {
        verb: String,
        resource: &'static str,
    },
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
            ApiError::NotFound { .. } | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotSupported { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::MethodNotSupported { .. } => "MethodNotAllowed",
        }
    }

    /// The Status body as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let details = match self {
            ApiError::NotFound { resource, name } => Some(Details {
                name: Some(name),
                group: Some("metrics.k8s.io"),
                kind: Some(resource),
            }),
            ApiError::NoRoute => Some(Details {
                name: None,
                group: None,
                kind: None,
            }),
            ApiError::MethodNotSupported { resource, .. } => Some(Details {
                name: None,
                group: Some("metrics.k8s.io"),
                kind: Some(resource),
            }),
            ApiError::BadRequest(_) => None,
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code(),
            [(header::CONTENT_TYPE, "application/json")],
            self.to_json(),
        )
            .into_response()
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
    fn watch_is_method_not_allowed() {
        let e = ApiError::MethodNotSupported {
            verb: "watch".into(),
            resource: "nodes",
        };
        let body: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(body["code"], 405);
        assert_eq!(
            body["message"],
            "watch is not supported on resources of kind \"nodes.metrics.k8s.io\""
        );
        assert_eq!(body["reason"], "MethodNotAllowed");
    }
}
