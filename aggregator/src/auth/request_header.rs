//! Front-proxy identity headers (`X-Remote-User`, `X-Remote-Group`,
//! `X-Remote-Extra-<key>`, `X-Remote-Uid`), read only after the proxy's
//! client certificate has been verified, and stripped from every request.

use http::HeaderMap;

use super::config::RequestHeader;
use super::user::User;

/// The user the proxy asserts; `None` when no username header is set.
pub fn user_from_headers(cfg: &RequestHeader, headers: &HeaderMap) -> Option<User> {
    let first = |names: &[http::HeaderName]| {
        names.iter().find_map(|n| {
            headers
                .get_all(n)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| !v.is_empty())
                .map(str::to_owned)
        })
    };
    let name = first(&cfg.username_headers)?;
    let uid = first(&cfg.uid_headers).unwrap_or_default();
    let groups = cfg
        .group_headers
        .iter()
        .flat_map(|n| headers.get_all(n).iter())
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let mut user = User {
        name,
        uid,
        groups,
        ..User::default()
    };
    for (hname, value) in headers {
        let Some(prefix) = cfg
            .extra_prefixes
            .iter()
            .find(|p| hname.as_str().starts_with(p.as_str()))
        else {
            continue;
        };
        let key = unescape(&hname.as_str()[prefix.len()..]).to_lowercase();
        if key.is_empty() {
            continue;
        }
        if let Ok(v) = value.to_str() {
            user.extra.entry(key).or_default().push(v.to_owned());
        }
    }
    Some(user)
}

/// Removes every identity header of `cfg` (and the defaults when there is
/// no configuration) so nothing later can mistake them for verified.
pub fn strip(cfg: Option<&RequestHeader>, headers: &mut HeaderMap) {
    let doomed: Vec<_> = headers
        .keys()
        .filter(|n| match cfg {
            Some(c) => c.is_identity_header(n),
            None => n.as_str().starts_with("x-remote-"),
        })
        .cloned()
        .collect();
    for n in doomed {
        headers.remove(&n);
    }
}

/// Percent-decoding of an extra key (`%2f` → `/`); invalid escapes stay.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::config::{AuthConfig, AuthFlags};
    use std::collections::BTreeMap;

    fn cfg() -> RequestHeader {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let data: BTreeMap<String, String> = [(
            "requestheader-client-ca-file".to_owned(),
            p.self_signed(&key).unwrap().pem(),
        )]
        .into_iter()
        .collect();
        AuthConfig::build(&AuthFlags::default(), Some(&data))
            .unwrap()
            .request_header
            .unwrap()
    }

    #[test]
    fn user_groups_and_extra() {
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.append("x-remote-group", "dev".parse().unwrap());
        h.append("x-remote-group", "ops".parse().unwrap());
        h.insert("x-remote-uid", "u-1".parse().unwrap());
        h.insert(
            "x-remote-extra-authentication.kubernetes.io%2fcredential-id",
            "JTI=abc".parse().unwrap(),
        );
        h.append("x-remote-extra-scopes", "a".parse().unwrap());
        h.append("x-remote-extra-scopes", "b".parse().unwrap());
        let u = user_from_headers(&cfg(), &h).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.uid, "u-1");
        assert_eq!(u.groups, vec!["dev", "ops"]);
        assert_eq!(
            u.extra["authentication.kubernetes.io/credential-id"],
            vec!["JTI=abc"]
        );
        assert_eq!(u.extra["scopes"], vec!["a", "b"]);
    }

    #[test]
    fn no_username_no_user() {
        let mut h = HeaderMap::new();
        h.insert("x-remote-group", "system:masters".parse().unwrap());
        assert!(user_from_headers(&cfg(), &h).is_none());
    }

    #[test]
    fn strip_removes_identity_headers_only() {
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.insert("x-remote-extra-foo", "1".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        strip(Some(&cfg()), &mut h);
        assert_eq!(h.len(), 1);
        let mut h2 = HeaderMap::new();
        h2.insert("x-remote-group", "system:masters".parse().unwrap());
        strip(None, &mut h2);
        assert!(h2.is_empty());
    }

    #[test]
    fn unescape_keys() {
        assert_eq!(unescape("a%2fb"), "a/b");
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("%zz"), "%zz");
    }
}
