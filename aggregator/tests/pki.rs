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

use metrics_aggregator::tls::pki::{ensure_ca, validity, Ca, CaSet, Outcome, Step};
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
    let first = got[0].0.set.current.cert_pem().to_owned();
    assert!(got
        .iter()
        .all(|(s, _)| s.set.current.cert_pem() == first && s.set.next.is_none()));
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
    let again = again.set.current;
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

fn at(base: std::time::SystemTime, secs: u64) -> std::time::SystemTime {
    base + Duration::from_secs(secs)
}

/// The rotation steps in order, at injected times (no waiting): a new CA
/// is published at two thirds of the current one's life, signs only once
/// it has been published for the propagation time (and only if the
/// bundle holding it is out), and the retired CA stays trusted until it
/// expires. At every moment, the bundle trusts whatever signs.
#[test]
fn rotation_publishes_first_signs_later_and_keeps_the_old_ca_until_it_expires() {
    metrics_proto::tls::install_crypto_provider();
    let validity_ = Duration::from_secs(3000);
    let propagation = Duration::from_secs(300);
    let first = Ca::generate("first", validity_).unwrap();
    let (born, dies) = validity(first.cert_pem()).unwrap();
    let set = CaSet {
        current: first.clone(),
        next: None,
        previous: None,
    };
    let t0 = std::time::SystemTime::now();
    assert_eq!(set.plan(t0, propagation, true).unwrap(), None);
    // Two thirds of the life (backdating included) is when the next one comes.
    let life = dies.duration_since(born).unwrap();
    let two_thirds = born + life * 2 / 3;
    let before = two_thirds - Duration::from_secs(5);
    assert_eq!(set.plan(before, propagation, true).unwrap(), None);
    let t1 = two_thirds + Duration::from_secs(5);
    assert_eq!(
        set.plan(t1, propagation, true).unwrap(),
        Some(Step::AddNext)
    );
    // The next CA lives longer, so it outlives the first one here too.
    let with_next = set.apply(Step::AddNext, t1, validity_ * 2).unwrap();
    let (second, published) = with_next.next.clone().unwrap();
    assert_eq!(published, t1);
    assert_eq!(
        with_next.current.cert_pem(),
        first.cert_pem(),
        "the old CA still signs"
    );
    let bundle = with_next.bundle(t1);
    assert!(bundle.contains(first.cert_pem().trim_end()));
    assert!(bundle.contains(second.cert_pem().trim_end()));
    // Not before the propagation time, and never while unpublished.
    assert_eq!(
        with_next.plan(at(t1, 299), propagation, true).unwrap(),
        None
    );
    assert_eq!(
        with_next.plan(at(t1, 301), propagation, false).unwrap(),
        None
    );
    let t2 = at(t1, 301);
    assert_eq!(
        with_next.plan(t2, propagation, true).unwrap(),
        Some(Step::Promote)
    );
    let promoted = with_next.apply(Step::Promote, t2, validity_).unwrap();
    assert_eq!(promoted.current.cert_pem(), second.cert_pem());
    assert!(promoted.next.is_none());
    assert_eq!(promoted.previous.as_deref(), Some(first.cert_pem()));
    // Certificates from either CA verify against the bundle after the switch.
    let names = vec!["metrics-aggregator.kube-system.svc".to_string()];
    let old_leaf = first.issue_serving(&names, YEAR).unwrap();
    let new_leaf = promoted.current.issue_serving(&names, YEAR).unwrap();
    let bundle = promoted.bundle(t2);
    assert!(verifies(&bundle, &old_leaf.cert_pem, &names[0]));
    assert!(verifies(&bundle, &new_leaf.cert_pem, &names[0]));
    // A leaf never outlives its CA.
    let (_, leaf_dies) = validity(&old_leaf.cert_pem).unwrap();
    assert!(leaf_dies <= dies);
    // Once the old CA has expired it leaves the bundle, then the Secret.
    let after_death = dies + Duration::from_secs(1);
    assert!(!promoted
        .bundle(after_death)
        .contains(first.cert_pem().trim_end()));
    assert_eq!(
        promoted.plan(after_death, propagation, true).unwrap(),
        Some(Step::DropPrevious)
    );
    let clean = promoted
        .apply(Step::DropPrevious, after_death, validity_)
        .unwrap();
    assert!(clean.previous.is_none());
    // A set stored and read back is the same set.
    let secret = with_next.to_secret("ca");
    let back = CaSet::from_secret("ca", &secret).unwrap();
    assert_eq!(back.current.cert_pem(), first.cert_pem());
    let (n, p) = back.next.unwrap();
    assert_eq!(n.cert_pem(), second.cert_pem());
    assert_eq!(
        p.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        t1.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    );
}

/// A CA found already expired (the cluster was off past its end) is
/// replaced at once: nothing verifies with it anyway.
#[test]
fn an_expired_ca_is_replaced_at_once() {
    metrics_proto::tls::install_crypto_provider();
    let ca = Ca::generate("short", Duration::from_secs(600)).unwrap();
    let set = CaSet {
        current: ca.clone(),
        next: None,
        previous: None,
    };
    let (_, dies) = validity(ca.cert_pem()).unwrap();
    let later = dies + Duration::from_secs(10);
    assert_eq!(
        set.plan(later, Duration::from_secs(60), true).unwrap(),
        Some(Step::Replace)
    );
    let fresh = set.apply(Step::Replace, later, YEAR).unwrap();
    assert_ne!(fresh.current.cert_pem(), ca.cert_pem());
    assert!(fresh.previous.is_none() && fresh.next.is_none());
}
