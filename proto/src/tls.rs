//! TLS pieces both binaries share: the single crypto provider (ring), PEM
//! loading with typed errors, and client configurations (a CA file, or no
//! verification when the operator asks for it).

use std::path::{Path, PathBuf};

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Errors loading TLS material from files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("reading PEM from {path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file held no certificate.
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    /// A client certificate and key that do not go together.
    #[error("client certificate {path}: {source}")]
    ClientCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// A CA bundle could not be added to the trust store.
    #[error("CA bundle {path}: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Installs ring as the process-wide rustls provider. Call first in `main`;
/// calling it again is harmless.
pub fn install_crypto_provider() {
    // An Err only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        path: path.to_owned(),
        source,
    })
}

/// Builds a root store from a PEM CA bundle.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// How a client checks a server's certificate.
#[derive(Debug, Clone)]
pub enum Verify<'a> {
    /// Against the CAs in this PEM file, read again when it changes.
    CaFile(&'a Path),
    /// Against a bundle the caller replaces at run time.
    Roots(Arc<crate::roots::DynamicRoots>),
    /// Not at all (`--*-insecure-tls`).
    Insecure,
}

/// A client config with the given verification and ALPN protocols.
pub fn client_config(verify: Verify<'_>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_identity(verify, alpn, None)
}

/// [`client_config`] presenting the certificate and key in these PEM
/// files, when given.
pub fn client_config_with_identity(
    verify: Verify<'_>,
    alpn: &[&[u8]],
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::CaFile(path) => {
            crate::roots::DynamicRoots::from_file(path, crate::roots::FILE_RECHECK)?
        }
        Verify::Roots(roots) => roots,
        Verify::Insecure => Arc::new(AcceptAnyCert::default()),
    };
    let builder = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::ClientCert {
                path: cert.to_owned(),
                source,
            })?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The handshake signature checks of the process's crypto provider, for
/// verifiers that skip or defer certificate checks but must still make
/// the peer prove it holds the key.
#[derive(Debug, Clone)]
pub struct SignatureCheck(Arc<rustls::crypto::CryptoProvider>);

impl Default for SignatureCheck {
    fn default() -> Self {
        SignatureCheck(
            rustls::crypto::CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider())),
        )
    }
}

impl SignatureCheck {
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts any server certificate but still checks the handshake
/// signatures, so the session keys belong to whoever holds the key.
#[derive(Debug, Default)]
struct AcceptAnyCert(SignatureCheck);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}
