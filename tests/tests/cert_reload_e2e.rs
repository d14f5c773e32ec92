//! The serving certificate is reloaded when a Secret volume swaps its
//! `..data` symlink: new handshakes (API and gRPC) get the new certificate,
//! a connection opened before the swap keeps working, and a broken pair is
//! refused while the current one stays in use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_e2e::https::connect;
use metrics_e2e::pki::{Leaf, Pair, TestCa};
use metrics_e2e::procs::start_aggregator;

/// Writes `pair` into a new timestamped directory of the Secret volume
/// `vol` and points `..data` at it atomically, as the kubelet does.
fn publish(vol: &Path, version: &str, cert_pem: &str, key_pem: &str) {
    let dir = vol.join(format!("..{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), key_pem).unwrap();
    let tmp = vol.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, vol.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = vol.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

fn serving(ca: &TestCa, dir: &Path, stem: &str) -> Pair {
    ca.issue(dir, stem, Leaf::Server(&["127.0.0.1", "localhost"]), false)
        .unwrap()
}

/// A TLS handshake with `addr` trusting only `ca`, offering `alpn`.
async fn handshake(addr: std::net::SocketAddr, ca: &Path, alpn: &[u8]) -> anyhow::Result<()> {
    let mut tls =
        (*metrics_proto::tls::client_config(metrics_proto::tls::Verify::CaFile(ca), &[alpn])?)
            .clone();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(rustls::pki_types::ServerName::from(addr.ip()), tcp)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_swaps_under_an_open_connection() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca1 = TestCa::new(d, "serving-ca-1").unwrap();
    let ca2 = TestCa::new(d, "serving-ca-2").unwrap();
    let (one, two) = (serving(&ca1, d, "one"), serving(&ca2, d, "two"));
    let vol = d.join("secret");
    std::fs::create_dir_all(&vol).unwrap();
    publish(&vol, "2026_11_23_a", &one.cert_pem, &one.key_pem);
    let agg = start_aggregator(
        d,
        &[
            &format!("--tls-cert-file={}", vol.join("tls.crt").display()),
            &format!("--tls-private-key-file={}", vol.join("tls.key").display()),
            "--tls-reload-interval=200ms",
        ],
    )
    .await
    .unwrap();

    let mut open = connect(agg.api, &ca1.file, None).await.unwrap();
    assert_eq!(open.get("/livez", &[]).await.unwrap().0, 200);
    assert_eq!(
        open.server_cert.as_ref(),
        metrics_proto::tls::load_certs(&one.cert).unwrap()[0].as_ref()
    );
    handshake(agg.grpc, &ca1.file, b"h2").await.unwrap();

    publish(&vol, "2026_11_23_b", &two.cert_pem, &two.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect(agg.api, &ca2.file, None).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "new certificate not served: {}",
            agg.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = connect(agg.api, &ca2.file, None).await.unwrap();
    assert_eq!(
        fresh.server_cert.as_ref(),
        metrics_proto::tls::load_certs(&two.cert).unwrap()[0].as_ref()
    );
    assert!(
        connect(agg.api, &ca1.file, None).await.is_err(),
        "old certificate still served"
    );
    handshake(agg.grpc, &ca2.file, b"h2").await.unwrap();
    assert!(handshake(agg.grpc, &ca1.file, b"h2").await.is_err());
    // The connection made before the swap was not dropped.
    assert_eq!(open.get("/livez", &[]).await.unwrap().0, 200);

    // A pair whose key does not match is refused; the current one stays.
    let three = serving(&ca1, d, "three");
    publish(&vol, "2026_11_23_c", &three.cert_pem, &two.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agg.proc.log_text().contains("not usable") {
        assert!(
            Instant::now() < deadline,
            "broken pair not noticed: {}",
            agg.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut after = connect(agg.api, &ca2.file, None).await.unwrap();
    assert_eq!(after.get("/livez", &[]).await.unwrap().0, 200);
}
