//! A CA bundle file (a mounted ConfigMap or Secret) is read again when it
//! changes: the next handshake trusts the new CAs and stops trusting the
//! ones removed; a damaged file is ignored and the last good bundle kept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use metrics_e2e::pki::{Leaf, TestCa};
use metrics_proto::roots::DynamicRoots;

fn trusts(roots: &DynamicRoots, leaf: &Path) -> bool {
    let der = CertificateDer::from_pem_file(leaf).unwrap();
    roots
        .verify_server_cert(
            &der,
            &[],
            &ServerName::try_from("127.0.0.1").unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

fn swap(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_changed_bundle_file_is_trusted_on_the_next_handshake() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = TestCa::new(d, "old-ca").unwrap();
    let new = TestCa::new(d, "new-ca").unwrap();
    let old_leaf = old
        .issue(d, "old-leaf", Leaf::Server(&["127.0.0.1"]), false)
        .unwrap();
    let new_leaf = new
        .issue(d, "new-leaf", Leaf::Server(&["127.0.0.1"]), false)
        .unwrap();
    let bundle = d.join("mounted/ca.crt");
    std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
    std::fs::write(&bundle, &old.pem).unwrap();
    let roots = DynamicRoots::from_file(&bundle, Duration::ZERO).unwrap();
    assert!(trusts(&roots, &old_leaf.cert));
    assert!(!trusts(&roots, &new_leaf.cert));
    // The overlap: both CAs.
    swap(&bundle, &format!("{}{}", old.pem, new.pem));
    assert!(trusts(&roots, &old_leaf.cert));
    assert!(trusts(&roots, &new_leaf.cert));
    // The old one retired.
    swap(&bundle, &new.pem);
    assert!(!trusts(&roots, &old_leaf.cert));
    assert!(trusts(&roots, &new_leaf.cert));
    // A damaged or emptied file changes nothing.
    swap(&bundle, "-----BEGIN CERTIFICATE-----\nnot base64\n");
    assert!(trusts(&roots, &new_leaf.cert));
    swap(&bundle, "");
    assert!(trusts(&roots, &new_leaf.cert));
    assert!(!trusts(&roots, &old_leaf.cert));

    // Re-read no more often than asked.
    let slow =
        DynamicRoots::from_file(&bundle_with(d, &old.pem), Duration::from_secs(3600)).unwrap();
    swap(&d.join("slow.crt"), &new.pem);
    assert!(
        trusts(&slow, &old_leaf.cert),
        "not re-read within the interval"
    );
}

fn bundle_with(d: &Path, pem: &str) -> std::path::PathBuf {
    let p = d.join("slow.crt");
    std::fs::write(&p, pem).unwrap();
    p
}
