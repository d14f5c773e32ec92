//! The serving certificate: given files, or a self-signed one generated in
//! `--cert-dir` (kept there and reused on restart).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

use metrics_proto::tls::TlsError;

pub mod bootstrap;
pub mod client_auth;
pub mod pki;
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

/// Uses `cert`/`key` when given; otherwise reuses or creates a self-signed
/// pair in `cert_dir` valid for `names` (DNS names and IP addresses).
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
    if id.cert.exists() && id.key.exists() {
        return Ok(id);
    }
    let certified = rcgen::generate_simple_self_signed(names.to_vec())?;
    write_file(&id.key, &certified.signing_key.serialize_pem(), true)?;
    write_file(&id.cert, &certified.cert.pem(), false)?;
    tracing::info!(cert = %id.cert.display(), "generated a self-signed serving certificate");
    Ok(id)
}

/// A rustls server config serving `cert` and offering `alpn`; with
/// `client_certs`, clients may present a certificate, checked per request.
pub fn server_config(
    cert: Arc<ReloadingCert>,
    alpn: &[&[u8]],
    client_certs: bool,
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder();
    let builder = if client_certs {
        builder.with_client_cert_verifier(client_auth::DeferredClientCert::new())
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
