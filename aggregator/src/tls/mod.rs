//! The serving certificate: given files, or a self-signed one generated in
//! `--cert-dir` (kept there and reused on restart).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

use metrics_proto::tls::TlsError;

pub mod bootstrap;
pub mod client_auth;
pub mod pki;
pub mod policy;
pub mod reload;

pub use reload::ReloadingCert;

/// File names inside `--cert-dir`, as metrics-server names them.
pub const CERT_FILE: &str = "apiserver.crt";
pub const KEY_FILE: &str = "apiserver.key";

/// Failures building the serving identity.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving certificate and key do not match: {0}")]
    Config(#[from] rustls::Error),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
}

/// PEM paths of the certificate and key in use.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn write_file(path: &Path, data: &str, private: bool) -> Result<(), ServingError> {
    let err = |source| ServingError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    opts.open(path)
        .and_then(|mut f| f.write_all(data.as_bytes()))
        .map_err(err)
}

/// How long a generated self-signed certificate is valid.
pub const SELF_SIGNED_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// Uses `cert`/`key` when given; otherwise reuses or creates a self-signed
/// pair in `cert_dir` valid for `names` (DNS names and IP addresses). A
/// kept pair past two thirds of its life, or unreadable, is made anew.
pub fn identity(
    cert: Option<&Path>,
    key: Option<&Path>,
    cert_dir: &Path,
    names: &[String],
) -> Result<Identity, ServingError> {
    if let (Some(cert), Some(key)) = (cert, key) {
        return Ok(Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
        });
    }
    let id = Identity {
        cert: cert_dir.join(CERT_FILE),
        key: cert_dir.join(KEY_FILE),
    };
    if id.key.exists() && !self_signed_due(&id.cert) {
        return Ok(id);
    }
    write_self_signed(&id, names)?;
    Ok(id)
}

/// Whether the self-signed certificate at `path` is missing, unreadable,
/// or past two thirds of its life.
pub fn self_signed_due(path: &Path) -> bool {
    let Ok(pem) = std::fs::read_to_string(path) else {
        return true;
    };
    match pki::validity(&pem) {
        Ok((before, after)) => {
            let life = after.duration_since(before).unwrap_or_default();
            std::time::SystemTime::now() >= before + life * 2 / 3
        }
        Err(_) => true,
    }
}

/// Writes a new self-signed pair for `names`: subject
/// `CN=metrics-aggregator`, the names as SANs, valid for a year.
fn write_self_signed(id: &Identity, names: &[String]) -> Result<(), ServingError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "metrics-aggregator");
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + SELF_SIGNED_VALIDITY).into();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_file(&id.key, &key.serialize_pem(), true)?;
    write_file(&id.cert, &cert.pem(), false)?;
    tracing::info!(cert = %id.cert.display(), "generated a self-signed serving certificate");
    Ok(())
}

/// Makes the self-signed pair anew whenever it comes due, checked every
/// `every`; the file watcher then loads it. Runs until `cancel` fires.
pub async fn renew_self_signed(
    id: Identity,
    names: Vec<String>,
    every: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if self_signed_due(&id.cert) {
            if let Err(e) = write_self_signed(&id, &names) {
                tracing::warn!(error = %e, "renewing the self-signed certificate failed");
            }
        }
    }
}

/// A rustls server config serving `cert` and offering `alpn`, with the TLS
/// versions and suites of `policy`; with `client_certs`, clients may
/// present a certificate, checked per request.
pub fn server_config(
    policy: &policy::TlsPolicy,
    cert: Arc<ReloadingCert>,
    alpn: &[&[u8]],
    client_certs: bool,
) -> Result<Arc<ServerConfig>, ServingError> {
    let provider = policy.provider()?;
    let builder =
        ServerConfig::builder_with_provider(provider).with_protocol_versions(policy.versions())?;
    let builder = if client_certs {
        builder.with_client_cert_verifier(client_auth::DeferredClientCert::new())
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn subject_and_names(pem: &str) -> (String, Vec<String>) {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let names = cert
            .subject_alternative_name()
            .unwrap()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .map(|n| format!("{n}"))
                    .collect()
            })
            .unwrap_or_default();
        (cert.subject().to_string(), names)
    }

    #[test]
    fn the_generated_certificate_names_this_server_for_a_year_and_is_renewed_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let id = identity(None, None, dir.path(), &names).unwrap();
        let pem = std::fs::read_to_string(&id.cert).unwrap();
        let (subject, sans) = subject_and_names(&pem);
        assert_eq!(subject, "CN=metrics-aggregator");
        assert!(sans.iter().any(|s| s.contains("localhost")), "{sans:?}");
        assert!(sans.iter().any(|s| s.contains("7f:00:00:01")), "{sans:?}");
        let (before, after) = pki::validity(&pem).unwrap();
        let life = after.duration_since(before).unwrap();
        assert!(
            life >= SELF_SIGNED_VALIDITY
                && life <= SELF_SIGNED_VALIDITY + Duration::from_secs(7200),
            "{life:?}"
        );
        assert!(!self_signed_due(&id.cert));
        // Kept on the next start.
        identity(None, None, dir.path(), &names).unwrap();
        assert_eq!(std::fs::read_to_string(&id.cert).unwrap(), pem);

        // One past two thirds of its life is made anew.
        let mut p = rcgen::CertificateParams::new(names.clone()).unwrap();
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(300 * 86_400)).into();
        p.not_after = (now + Duration::from_secs(65 * 86_400)).into();
        let key = rcgen::KeyPair::generate().unwrap();
        let old = p.self_signed(&key).unwrap().pem();
        std::fs::write(&id.cert, &old).unwrap();
        assert!(self_signed_due(&id.cert));
        identity(None, None, dir.path(), &names).unwrap();
        let renewed = std::fs::read_to_string(&id.cert).unwrap();
        assert_ne!(renewed, old);
        assert!(!self_signed_due(&id.cert));
        // The new key matches the new certificate.
        assert!(reload::load(&id).is_ok());
    }
}
