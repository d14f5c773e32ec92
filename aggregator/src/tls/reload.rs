//! The serving certificate as a hot-swappable resolver: a changed
//! `--tls-cert-file`/`--tls-private-key-file` (including a Secret volume's
//! `..data` symlink swap) is loaded without a restart; open connections keep
//! the certificate they were made with, new handshakes get the new one.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::{Identity, ServingError};
use metrics_proto::tls::{load_certs, load_key, TlsError};

/// Resolves every handshake to the current certificate.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

/// Reads and checks a certificate/key pair.
pub fn load(id: &Identity) -> Result<CertifiedKey, ServingError> {
    certified(load_certs(&id.cert)?, &load_key(&id.key)?)
}

/// A chain and its key, checked to go together.
fn certified(
    certs: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<CertifiedKey, ServingError> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key)?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match()?;
    Ok(certified)
}

/// Builds a certificate/key pair from PEM text.
pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, ServingError> {
    use rustls::pki_types::pem::PemObject;
    let memory = || std::path::PathBuf::from("<memory>");
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: memory(),
            source,
        })?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| TlsError::Pem {
            path: memory(),
            source,
        })?;
    certified(certs, &key)
}

impl ReloadingCert {
    pub fn new(id: &Identity) -> Result<Arc<Self>, ServingError> {
        Ok(Self::with(load(id)?))
    }

    /// Starts with `certified`, replaced by [`set`](Self::set).
    pub fn with(certified: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(certified),
        })
    }

    /// New handshakes get `certified`.
    pub fn set(&self, certified: CertifiedKey) {
        self.current.store(Arc::new(certified));
    }

    /// Checks `id`'s files every `every` and swaps in a changed, valid
    /// pair; an invalid one is logged and the current pair kept.
    pub async fn watch(self: Arc<Self>, id: Identity, every: Duration, cancel: CancellationToken) {
        let paths = vec![id.cert.clone(), id.key.clone()];
        crate::files::on_change(paths, every, cancel, || match load(&id) {
            Ok(ck) => {
                self.current.store(Arc::new(ck));
                tracing::info!(cert = %id.cert.display(), "serving certificate reloaded");
            }
            Err(e) => tracing::warn!(
                cert = %id.cert.display(),
                error = %e,
                "changed serving certificate not usable; keeping the current one"
            ),
        })
        .await
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
