//! Properties of the authentication inputs that come from the network or
//! from the cluster: request paths, identity headers and ConfigMap values
//! never panic, identity headers never survive authentication, and a
//! request without a certificate is never anyone but anonymous.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use metrics_aggregator::auth::attributes::Attributes;
use metrics_aggregator::auth::authn::Authenticator;
use metrics_aggregator::auth::config::{AuthConfig, AuthFlags};
use metrics_aggregator::auth::user::User;
use proptest::prelude::*;

fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().pem()
}

fn authenticator() -> Authenticator {
    let data: BTreeMap<String, String> = [
        ("client-ca-file", ca_pem()),
        ("requestheader-client-ca-file", ca_pem()),
        (
            "requestheader-allowed-names",
            r#"["front-proxy-client"]"#.into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Authenticator::new(
        AuthConfig::build(&AuthFlags::default(), Some(&data)).unwrap(),
        None,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_path_has_attributes(path in "(/[a-z0-9.%-]{0,12}){0,8}", query in "[a-z=&%]{0,20}") {
        let a = Attributes::from_request(&Method::GET, &path, Some(&query));
        if let Attributes::Resource { verb, .. } = a {
            prop_assert!(["get", "list", "watch"].contains(&verb.as_str()));
            prop_assert!(path.starts_with("/api"));
        }
    }

    #[test]
    fn headers_without_a_certificate_are_anonymous_and_stripped(
        headers in proptest::collection::vec(
            ("x-remote-(user|group|uid|extra-[a-z%0-9]{1,10})", "[ -~]{0,30}"),
            0..8,
        )
    ) {
        let authn = authenticator();
        let mut map = HeaderMap::new();
        for (k, v) in &headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
                map.append(k, v);
            }
        }
        map.insert("accept", HeaderValue::from_static("application/json"));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let user = rt.block_on(authn.authenticate(&[], &mut map)).unwrap();
        prop_assert_eq!(user, User::anonymous());
        prop_assert!(map.keys().all(|k| !k.as_str().starts_with("x-remote-")), "{:?}", map);
        prop_assert_eq!(map.len(), 1);
    }

    #[test]
    fn configmap_values_never_panic(
        entries in proptest::collection::btree_map(
            "(client-ca-file|requestheader-[a-z-]{0,20})",
            "[ -~\n]{0,60}",
            0..6,
        )
    ) {
        let _ = AuthConfig::build(&AuthFlags::default(), Some(&entries));
    }
}
