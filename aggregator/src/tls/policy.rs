//! `--tls-min-version` and `--tls-cipher-suites` with Kubernetes' names:
//! `VersionTLS12`/`VersionTLS13`, and IANA suite names as Go spells them.
//! As in Go, the suite list chooses among TLS 1.2 suites; TLS 1.3 suites
//! are always on when TLS 1.3 is. Suites rustls does not implement (the
//! CBC and RSA key-exchange ones Go still lists as insecure) are refused
//! by name.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

/// A flag value that names no TLS version or suite this server has.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("--tls-min-version {0:?}: use VersionTLS12 or VersionTLS13")]
    Version(String),
    #[error("--tls-cipher-suites: {0:?} is not supported (supported: {1})")]
    Suite(String, String),
    #[error("--tls-cipher-suites leaves no TLS 1.2 suite while TLS 1.2 is allowed")]
    Empty,
}

/// The TLS versions and suites the server offers.
#[derive(Debug, Clone, Default)]
pub struct TlsPolicy {
    /// Only TLS 1.3.
    pub tls13_only: bool,
    /// TLS 1.2 suites by name; all when empty.
    pub suites: Vec<String>,
}

/// The name Go gives a suite (`TLS_AES_128_GCM_SHA256` for TLS 1.3).
fn go_name(s: &SupportedCipherSuite) -> String {
    let name = format!("{:?}", s.suite());
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name,
    }
}

impl TlsPolicy {
    /// From the flags' values.
    pub fn parse(min_version: Option<&str>, suites: &[String]) -> Result<Self, PolicyError> {
        let tls13_only = match min_version {
            None | Some("" | "VersionTLS12") => false,
            Some("VersionTLS13") => true,
            Some(other) => return Err(PolicyError::Version(other.to_owned())),
        };
        let policy = Self {
            tls13_only,
            suites: suites
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        };
        policy.provider()?;
        Ok(policy)
    }

    /// The versions offered.
    pub fn versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
        if self.tls13_only {
            TLS13_ONLY
        } else {
            rustls::ALL_VERSIONS
        }
    }

    /// The process's provider with only the chosen TLS 1.2 suites.
    pub fn provider(&self) -> Result<Arc<CryptoProvider>, PolicyError> {
        let base = CryptoProvider::get_default()
            .map(|p| p.as_ref().clone())
            .unwrap_or_else(rustls::crypto::ring::default_provider);
        if self.suites.is_empty() {
            return Ok(Arc::new(base));
        }
        let known: Vec<String> = base.cipher_suites.iter().map(go_name).collect();
        for s in &self.suites {
            if !known.contains(s) {
                return Err(PolicyError::Suite(s.clone(), known.join(",")));
            }
        }
        let cipher_suites: Vec<SupportedCipherSuite> = base
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some() || self.suites.contains(&go_name(s)))
            .copied()
            .collect();
        if !self.tls13_only && !cipher_suites.iter().any(|s| s.tls13().is_none()) {
            return Err(PolicyError::Empty);
        }
        Ok(Arc::new(CryptoProvider {
            cipher_suites,
            ..base
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_gos_and_unknown_ones_are_refused() {
        let p = TlsPolicy::parse(
            Some("VersionTLS12"),
            &["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into()],
        )
        .unwrap();
        let names: Vec<String> = p
            .provider()
            .unwrap()
            .cipher_suites
            .iter()
            .map(go_name)
            .collect();
        assert!(names.contains(&"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".to_string()));
        assert!(
            names.contains(&"TLS_AES_128_GCM_SHA256".to_string()),
            "TLS 1.3 stays"
        );
        assert!(!names.contains(&"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_string()));
        assert!(matches!(
            TlsPolicy::parse(None, &["TLS_RSA_WITH_AES_128_CBC_SHA".into()]),
            Err(PolicyError::Suite(..))
        ));
        assert!(matches!(
            TlsPolicy::parse(Some("VersionTLS10"), &[]),
            Err(PolicyError::Version(_))
        ));
        assert!(matches!(
            TlsPolicy::parse(None, &["TLS_AES_128_GCM_SHA256".into()]),
            Err(PolicyError::Empty)
        ));
        assert_eq!(
            TlsPolicy::parse(Some("VersionTLS13"), &[])
                .unwrap()
                .versions()
                .len(),
            1
        );
    }
}
