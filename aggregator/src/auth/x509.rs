//! Client certificate checks: the chain against a CA bundle (client-auth key
//! usage, validity) and the subject's CN and O as user and groups.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::user::User;

/// Why a certificate bundle or a presented chain was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The CA bundle holds no usable certificate.
    #[error("CA bundle: {0}")]
    Bundle(String),
    /// The chain does not verify against the CA bundle.
    #[error("verifying certificate failed: {0}")]
    Verify(#[from] rustls::Error),
    /// The leaf is not parseable X.509.
    #[error("parsing the client certificate: {0}")]
    Parse(String),
}

/// A CA bundle ready to verify client chains.
#[derive(Clone)]
pub struct CaBundle {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaBundle")
    }
}

impl CaBundle {
    /// Parses a PEM bundle (one or more CERTIFICATE blocks).
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| CertError::Bundle(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| CertError::Bundle(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(CertError::Bundle("no certificates".into()));
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| CertError::Bundle(e.to_string()))?;
        Ok(Self { verifier })
    }

    /// Verifies `chain` (leaf first) now, for client authentication.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), CertError> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| CertError::Parse("empty chain".into()))?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())?;
        Ok(())
    }
}

/// The leaf's subject: CN as the user name, each O as a group.
pub fn subject_user(leaf: &CertificateDer<'_>) -> Result<User, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Ok(User {
        name,
        groups,
        ..User::default()
    })
}
