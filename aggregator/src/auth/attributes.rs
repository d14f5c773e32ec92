//! What a request asks to do, in the terms of Kubernetes authorization
//! (k8s.io/apiserver's RequestInfo): a verb on a resource, or a verb on a
//! non-resource path.

use http::Method;

/// Authorization attributes of one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        version: String,
        resource: String,
        subresource: String,
        namespace: String,
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

fn is_watch(query: Option<&str>) -> bool {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
}

impl Attributes {
    /// Parses `path` and `query` of a request with `method`.
    pub fn from_request(method: &Method, path: &str, query: Option<&str>) -> Self {
        let non_resource = || Attributes::NonResource {
            verb: method.as_str().to_ascii_lowercase(),
            path: path.to_owned(),
        };
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["apis", group, version, rest @ ..] if !rest.is_empty() => ((*group, *version), rest),
            ["api", version, rest @ ..] if !rest.is_empty() => (("", *version), rest),
            _ => return non_resource(),
        };
        let mut verb = match *method {
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => return non_resource(),
        }
        .to_owned();
        let mut namespace = "";
        let mut rest = rest;
        if rest[0] == "namespaces" && rest.len() > 1 {
            namespace = rest[1];
            if rest.len() > 2 {
                rest = &rest[2..];
            }
        }
        let resource = rest[0];
        let name = rest.get(1).copied().unwrap_or_default();
        let subresource = rest.get(2).copied().unwrap_or_default();
        if name.is_empty() {
            if verb == "get" {
                verb = if is_watch(query) { "watch" } else { "list" }.to_owned();
            } else if verb == "delete" {
                verb = "deletecollection".to_owned();
            }
        }
        Attributes::Resource {
            verb,
            group: group.0.to_owned(),
            version: group.1.to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The path of a non-resource request.
    pub fn path(&self) -> Option<&str> {
        match self {
            Attributes::NonResource { path, .. } => Some(path),
            Attributes::Resource { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(method: Method, path: &str, query: Option<&str>) -> (String, String, String, String) {
        match Attributes::from_request(&method, path, query) {
            Attributes::Resource {
                verb,
                resource,
                namespace,
                name,
                group,
                version,
                ..
            } => {
                assert_eq!(group, "metrics.k8s.io");
                assert_eq!(version, "v1beta1");
                (verb, resource, namespace, name)
            }
            other => panic!("{path}: {other:?}"),
        }
    }

    fn t(a: &str, b: &str, c: &str, d: &str) -> (String, String, String, String) {
        (a.into(), b.into(), c.into(), d.into())
    }

    #[test]
    fn metrics_paths() {
        let p = "/apis/metrics.k8s.io/v1beta1";
        assert_eq!(
            res(Method::GET, &format!("{p}/nodes"), None),
            t("list", "nodes", "", "")
        );
        assert_eq!(
            res(Method::GET, &format!("{p}/nodes/n1"), None),
            t("get", "nodes", "", "n1")
        );
        assert_eq!(
            res(Method::GET, &format!("{p}/pods"), Some("watch=true")),
            t("watch", "pods", "", "")
        );
        assert_eq!(
            res(
                Method::GET,
                &format!("{p}/namespaces/ns/pods"),
                Some("labelSelector=a%3Db")
            ),
            t("list", "pods", "ns", "")
        );
        assert_eq!(
            res(Method::GET, &format!("{p}/namespaces/ns/pods/web"), None),
            t("get", "pods", "ns", "web")
        );
        assert_eq!(
            res(Method::DELETE, &format!("{p}/pods"), None),
            t("deletecollection", "pods", "", "")
        );
    }

    #[test]
    fn discovery_is_non_resource() {
        for p in [
            "/apis",
            "/apis/metrics.k8s.io",
            "/apis/metrics.k8s.io/v1beta1",
            "/healthz",
            "/",
        ] {
            assert_eq!(
                Attributes::from_request(&Method::GET, p, None),
                Attributes::NonResource {
                    verb: "get".into(),
                    path: p.into()
                }
            );
        }
    }
}
