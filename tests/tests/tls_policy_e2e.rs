//! `--tls-min-version` and `--tls-cipher-suites` are honoured on both
//! ports: a client below the minimum version, or offering only suites the
//! server was told not to use, fails the handshake; one within them
//! connects; names the server cannot honour stop it at start-up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::cipher_suite as suites;
use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use tokio::net::TcpStream;

use metrics_e2e::procs::{binary, start_aggregator};

/// Whether a client with these versions and suites completes a handshake.
async fn handshake(
    addr: SocketAddr,
    ca: &Path,
    versions: &[&'static SupportedProtocolVersion],
    offered: &[SupportedCipherSuite],
    alpn: &[u8],
) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for c in metrics_proto::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let provider = CryptoProvider {
        cipher_suites: offered.to_vec(),
        ..rustls::crypto::ring::default_provider()
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .is_ok()
}

const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_version_and_suites_are_honoured_on_both_ports() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let all12 = [
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    let all13 = [suites::TLS13_AES_128_GCM_SHA256];

    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let only13 = start_aggregator(&dir.path().join("a"), &["--tls-min-version=VersionTLS13"])
        .await
        .unwrap();
    for (port, alpn) in [(only13.api, &b"http/1.1"[..]), (only13.grpc, &b"h2"[..])] {
        assert!(
            !handshake(port, &only13.ca, TLS12, &all12, alpn).await,
            "{port}: TLS 1.2 accepted"
        );
        assert!(
            handshake(port, &only13.ca, TLS13, &all13, alpn).await,
            "{port}: TLS 1.3 refused"
        );
    }

    let one_suite = start_aggregator(
        &dir.path().join("b"),
        &["--tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
    )
    .await
    .unwrap();
    for (port, alpn) in [
        (one_suite.api, &b"http/1.1"[..]),
        (one_suite.grpc, &b"h2"[..]),
    ] {
        let ca = &one_suite.ca;
        assert!(
            !handshake(
                port,
                ca,
                TLS12,
                &[suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
                alpn
            )
            .await,
            "{port}: an unlisted suite was used"
        );
        assert!(
            handshake(
                port,
                ca,
                TLS12,
                &[suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384],
                alpn
            )
            .await,
            "{port}: the listed suite was refused"
        );
        // TLS 1.3 stays on, as in Go.
        assert!(handshake(port, ca, TLS13, &all13, alpn).await);
    }

    // Names it cannot honour stop it before it serves.
    for bad in [
        "--tls-min-version=VersionTLS10",
        "--tls-cipher-suites=TLS_RSA_WITH_AES_128_CBC_SHA",
    ] {
        let out = std::process::Command::new(binary("metrics-aggregator"))
            .args([
                bad,
                "--insecure-allow-anonymous",
                "--bind-address=127.0.0.1",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad.split('=').next().unwrap()), "{bad}: {err}");
    }
}
