//! The CA bootstrap against the stand-in API server (real list/get/create
//! wire format, 409 AlreadyExists on a second create): replicas starting
//! at once end with one CA, stored once; certificates it issues verify
//! against it and not against another CA; a damaged Secret is reported,
//! never replaced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use metrics_aggregator::tls::pki::{ensure_ca, Ca, Outcome};
use metrics_e2e::apiserver::FakeApiServer;

const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn der(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Whether a server presenting `leaf_pem` as `name` is trusted by a client
/// trusting only `ca_pem`.
fn verifies(ca_pem: &str, leaf_pem: &str, name: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for c in der(ca_pem) {
        roots.add(c).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let leaf = der(leaf_pem).remove(0);
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

async fn secrets(api: &FakeApiServer, dir: &std::path::Path) -> Api<Secret> {
    let kubeconfig = api.kubeconfig(dir, "pki.kubeconfig").unwrap();
    let client = metrics_proto::kubeclient::client(Some(&kubeconfig))
        .await
        .unwrap();
    Api::namespaced(client, "kube-system")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_end_with_one_ca() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApiServer::start(dir.path()).await.unwrap();
    let secrets = secrets(&api, dir.path()).await;
    // Four replicas at once, all reading before any creates.
    api.gather_gets(4);
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let s = secrets.clone();
            tokio::spawn(async move { ensure_ca(&s, "metrics-pipeline-ca", YEAR).await })
        })
        .collect();
    let mut got = Vec::new();
    for r in runs {
        got.push(r.await.unwrap().unwrap());
    }
    let created = got.iter().filter(|(_, o)| *o == Outcome::Created).count();
    assert_eq!(created, 1, "exactly one replica creates the CA");
    let posts = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST /api/v1/namespaces/kube-system/secrets"))
        .count();
    assert_eq!(
        posts,
        4,
        "every replica tried to create it: {:?}",
        api.requests()
    );
    let first = got[0].0.cert_pem().to_owned();
    assert!(got.iter().all(|(ca, _)| ca.cert_pem() == first));
    // The stored Secret holds that CA.
    let stored = api
        .object("secrets", "kube-system", "metrics-pipeline-ca")
        .unwrap();
    let stored: Secret = serde_json::from_value(stored).unwrap();
    let data = stored.data.unwrap();
    assert_eq!(String::from_utf8(data["ca.crt"].0.clone()).unwrap(), first);
    assert!(String::from_utf8(data["ca.key"].0.clone())
        .unwrap()
        .contains("PRIVATE KEY"));

    // A later start adopts it.
    let (again, outcome) = ensure_ca(&secrets, "metrics-pipeline-ca", YEAR)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Adopted);
    assert_eq!(again.cert_pem(), first);

    // What it issues verifies against it, for the names asked, and not
    // against another CA.
    let names = vec![
        "metrics-aggregator.kube-system.svc".to_string(),
        "metrics-aggregator-0.metrics-aggregator-peers.kube-system.svc".to_string(),
    ];
    let leaf = again.issue_serving(&names, YEAR / 4).unwrap();
    assert!(verifies(&first, &leaf.cert_pem, &names[0]));
    assert!(verifies(&first, &leaf.cert_pem, &names[1]));
    assert!(!verifies(&first, &leaf.cert_pem, "elsewhere.example.com"));
    let foreign = Ca::generate("someone-else", YEAR).unwrap();
    assert!(!verifies(foreign.cert_pem(), &leaf.cert_pem, &names[0]));
    // The key that comes with it is the one the certificate names.
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            der(&leaf.cert_pem),
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        );
    assert!(cfg.as_mut().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_ca_secret_is_reported_not_replaced() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApiServer::start(dir.path()).await.unwrap();
    api.apply(
        "secrets",
        serde_json::json!({"metadata": {"namespace": "kube-system", "name": "metrics-pipeline-ca"},
            "data": {"ca.crt": "bm90IGEgY2VydA=="}}),
    );
    let secrets = secrets(&api, dir.path()).await;
    let err = ensure_ca(&secrets, "metrics-pipeline-ca", YEAR)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no ca.key"), "{err}");
    let stored = api
        .object("secrets", "kube-system", "metrics-pipeline-ca")
        .unwrap();
    assert_eq!(stored["data"]["ca.crt"], "bm90IGEgY2VydA==");
}
