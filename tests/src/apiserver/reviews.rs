//! TokenReview and SubjectAccessReview as kube-apiserver answers them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde_json::{json, Value};

use super::{json_response, status, ApiState};

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

pub(super) async fn token_review(State(s): State<Arc<ApiState>>, body: Bytes) -> Response {
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

pub(super) async fn access_review(State(s): State<Arc<ApiState>>, body: Bytes) -> Response {
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
