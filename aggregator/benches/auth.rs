//! Cost of authenticating one API request by certificate (the front proxy's
//! with identity headers, and a plain client certificate): chain
//! verification against the CA in force plus subject parsing, done per
//! request. Run: `cargo bench -p metrics-aggregator --bench auth`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use divan::Bencher;
use http::HeaderMap;
use metrics_aggregator::auth::authn::Authenticator;
use metrics_aggregator::auth::config::{AuthConfig, AuthFlags};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::CertificateDer;

fn main() {
    metrics_proto::tls::install_crypto_provider();
    divan::main();
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn client(issuer: &CertifiedIssuer<'static, KeyPair>, cn: &str) -> Vec<CertificateDer<'static>> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name.push(DnType::OrganizationName, "dev");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    vec![p.signed_by(&key, issuer).unwrap().der().clone()]
}

struct Setup {
    authn: Authenticator,
    proxy: Vec<CertificateDer<'static>>,
    user: Vec<CertificateDer<'static>>,
    rt: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let (proxy_ca, client_ca) = (ca("front-proxy-ca"), ca("client-ca"));
    let data: BTreeMap<String, String> = [
        ("client-ca-file", client_ca.pem()),
        ("requestheader-client-ca-file", proxy_ca.pem()),
        (
            "requestheader-allowed-names",
            r#"["front-proxy-client"]"#.into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = AuthConfig::build(&AuthFlags::default(), Some(&data)).unwrap();
    Setup {
        authn: Authenticator::new(config, None),
        proxy: client(&proxy_ca, "front-proxy-client"),
        user: client(&client_ca, "alice"),
        rt: tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap(),
    }
}

#[divan::bench]
fn front_proxy_with_headers(b: Bencher) {
    let s = setup();
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-remote-user",
        "system:kube-controller-manager".parse().unwrap(),
    );
    headers.append("x-remote-group", "system:authenticated".parse().unwrap());
    headers.insert(
        "x-remote-extra-authentication.kubernetes.io%2fcredential-id",
        "JTI=0f4c".parse().unwrap(),
    );
    b.bench_local(|| {
        let mut h = headers.clone();
        let user =
            s.rt.block_on(s.authn.authenticate(&s.proxy, &mut h))
                .unwrap();
        assert_eq!(user.name, "system:kube-controller-manager");
    });
}

#[divan::bench]
fn client_certificate(b: Bencher) {
    let s = setup();
    b.bench_local(|| {
        let mut h = HeaderMap::new();
        let user =
            s.rt.block_on(s.authn.authenticate(&s.user, &mut h))
                .unwrap();
        assert_eq!(user.name, "alice");
    });
}
