//! Authorization: always-allowed paths, then `system:masters`, then a
//! SubjectAccessReview (authorization.k8s.io/v1); allowed and denied answers
//! cached separately.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::Api;

use super::attributes::Attributes;
use super::cache::TtlCache;
use super::user::{User, MASTERS};

/// What the authorizer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, with the reviewer's reason (may be empty).
    Deny(String),
}

/// A review that could not be made; not cached.
#[derive(Debug, thiserror::Error)]
#[error("SubjectAccessReview failed: {0}")]
pub struct AuthzError(#[from] pub kube::Error);

/// Paths from `--authorization-always-allow-paths`: exact, or a prefix
/// ending in `*`.
#[derive(Debug, Clone, Default)]
pub struct AllowPaths(Vec<String>);

impl AllowPaths {
    pub fn new(paths: Vec<String>) -> Self {
        AllowPaths(paths)
    }

    pub fn matches(&self, path: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => p == path,
        })
    }
}

type Key = (User, Attributes);

/// Decides, asking kube-apiserver when the rules here do not.
pub struct Authorizer {
    client: kube::Client,
    always: AllowPaths,
    allowed: TtlCache<Key, ()>,
    denied: TtlCache<Key, String>,
}

impl Authorizer {
    pub fn new(
        client: kube::Client,
        always: AllowPaths,
        allowed_ttl: Duration,
        denied_ttl: Duration,
    ) -> Self {
        Self {
            client,
            always,
            allowed: TtlCache::new(allowed_ttl),
            denied: TtlCache::new(denied_ttl),
        }
    }

    /// The decision for `user` doing `attrs`.
    pub async fn authorize(&self, user: &User, attrs: &Attributes) -> Result<Decision, AuthzError> {
        if attrs.path().is_some_and(|p| self.always.matches(p)) || user.in_group(MASTERS) {
            return Ok(Decision::Allow);
        }
        let key = (user.clone(), attrs.clone());
        if self.allowed.get(&key).is_some() {
            return Ok(Decision::Allow);
        }
        if let Some(reason) = self.denied.get(&key) {
            return Ok(Decision::Deny(reason));
        }
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review(user, attrs))
            .await?;
        let status = answer.status.unwrap_or_default();
        if status.allowed {
            self.allowed.insert(key, ());
            Ok(Decision::Allow)
        } else {
            let reason = status.reason.unwrap_or_default();
            self.denied.insert(key, reason.clone());
            Ok(Decision::Deny(reason))
        }
    }
}

fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The SubjectAccessReview kube-apiserver expects for `user` and `attrs`.
pub fn review(user: &User, attrs: &Attributes) -> SubjectAccessReview {
    let mut spec = SubjectAccessReviewSpec {
        user: Some(user.name.clone()),
        uid: some(&user.uid),
        groups: Some(user.groups.clone()),
        extra: (!user.extra.is_empty()).then(|| user.extra.clone().into_iter().collect()),
        ..SubjectAccessReviewSpec::default()
    };
    match attrs {
        Attributes::Resource {
            verb,
            group,
            version,
            resource,
            subresource,
            namespace,
            name,
        } => {
            spec.resource_attributes = Some(ResourceAttributes {
                verb: some(verb),
                group: Some(group.clone()),
                version: some(version),
                resource: some(resource),
                subresource: some(subresource),
                namespace: some(namespace),
                name: some(name),
                ..ResourceAttributes::default()
            })
        }
        Attributes::NonResource { verb, path } => {
            spec.non_resource_attributes = Some(NonResourceAttributes {
                path: Some(path.clone()),
                verb: Some(verb.clone()),
            })
        }
    }
    SubjectAccessReview {
        spec,
        ..SubjectAccessReview::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_allow_paths() {
        let p = AllowPaths::new(vec!["/healthz".into(), "/debug/*".into()]);
        assert!(p.matches("/healthz"));
        assert!(!p.matches("/healthz/extra"));
        assert!(p.matches("/debug/pprof"));
        assert!(!p.matches("/metrics"));
    }

    #[test]
    fn review_carries_the_attributes() {
        let user = User {
            name: "alice".into(),
            groups: vec!["system:authenticated".into()],
            ..User::default()
        };
        let attrs = Attributes::from_request(
            &http::Method::GET,
            "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods",
            None,
        );
        let v = serde_json::to_value(review(&user, &attrs)).unwrap();
        assert_eq!(v["spec"]["user"], "alice");
        let ra = &v["spec"]["resourceAttributes"];
        assert_eq!(ra["group"], "metrics.k8s.io");
        assert_eq!(ra["version"], "v1beta1");
        assert_eq!(ra["resource"], "pods");
        assert_eq!(ra["verb"], "list");
        assert_eq!(ra["namespace"], "ns");
        assert!(ra.get("name").is_none());
        let nr = review(
            &user,
            &Attributes::from_request(&http::Method::GET, "/apis", None),
        );
        let v = serde_json::to_value(nr).unwrap();
        assert_eq!(v["spec"]["nonResourceAttributes"]["path"], "/apis");
        assert_eq!(v["spec"]["nonResourceAttributes"]["verb"], "get");
    }
}
