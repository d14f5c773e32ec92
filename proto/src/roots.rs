//! Trust anchors that change while the process runs: a CA bundle file
//! re-read when it changes (a ConfigMap or Secret volume updated by the
//! kubelet), or a bundle set in memory (the aggregator's own PKI). Open
//! connections keep the trust they were made with; the next handshake
//! uses the new bundle. A bundle that does not parse is logged and the
//! last good one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::tls::TlsError;

/// How long a bundle file read stays current before the next handshake
/// reads it again.
pub const FILE_RECHECK: Duration = Duration::from_secs(10);

/// A server certificate verifier whose CA bundle can be replaced.
#[derive(Debug)]
pub struct DynamicRoots {
    verifier: ArcSwap<WebPkiServerVerifier>,
    file: Option<FileSource>,
}

#[derive(Debug)]
struct FileSource {
    path: PathBuf,
    recheck: Duration,
    /// When the file was last read, and what it held.
    last: Mutex<(Instant, Vec<u8>)>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A verifier trusting every certificate in the PEM `bundle`; `origin`
/// names the bundle in errors.
fn build(bundle: &[u8], origin: &Path) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        path: origin.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_slice_iter(bundle)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: origin.to_owned(),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: origin.to_owned(),
            source,
        })?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::BadCa {
            path: origin.to_owned(),
            source: rustls::Error::General(e.to_string()),
        })
}

impl DynamicRoots {
    /// Trusts the CAs in the PEM `bundle` until [`set_pem`](Self::set_pem).
    pub fn from_pem(bundle: &[u8]) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            verifier: ArcSwap::new(build(bundle, Path::new("<memory>"))?),
            file: None,
        }))
    }

    /// Trusts the CAs in the file at `path`, read again on a handshake
    /// once the last read is `recheck` old.
    pub fn from_file(path: &Path, recheck: Duration) -> Result<Arc<Self>, TlsError> {
        let bytes = std::fs::read(path).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            source: rustls_pki_types::pem::Error::Io(e),
        })?;
        Ok(Arc::new(Self {
            verifier: ArcSwap::new(build(&bytes, path)?),
            file: Some(FileSource {
                path: path.to_owned(),
                recheck,
                last: Mutex::new((Instant::now(), bytes)),
            }),
        }))
    }

    /// Replaces the trusted CAs with those in the PEM `bundle`; an
    /// unusable bundle is refused and the current one kept.
    pub fn set_pem(&self, bundle: &[u8]) -> Result<(), TlsError> {
        self.verifier.store(build(bundle, Path::new("<memory>"))?);
        Ok(())
    }

    /// Re-reads the bundle file when the last read is old enough.
    fn refresh(&self) {
        let Some(f) = &self.file else { return };
        let Ok(mut last) = f.last.lock() else { return };
        if last.0.elapsed() < f.recheck {
            return;
        }
        last.0 = Instant::now();
        let bytes = match std::fs::read(&f.path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %f.path.display(), error = %e, "CA bundle unreadable; keeping the last one read");
                return;
            }
        };
        if bytes == last.1 {
            return;
        }
        match build(&bytes, &f.path) {
            Ok(v) => {
                self.verifier.store(v);
                last.1 = bytes;
                tracing::info!(path = %f.path.display(), "CA bundle changed; new connections verify with it");
            }
            Err(e) => {
                tracing::warn!(path = %f.path.display(), error = %e, "changed CA bundle not usable; keeping the last good one");
                last.1 = bytes;
            }
        }
    }
}

impl ServerCertVerifier for DynamicRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.refresh();
        self.verifier.load().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.load().supported_verify_schemes()
    }
}
