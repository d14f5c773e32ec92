//! Which client certificates and identity headers are trusted: built from
//! the `kube-system/extension-apiserver-authentication` ConfigMap, with the
//! `--client-ca-file` and `--requestheader-*` flags overriding it field by
//! field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use http::HeaderName;

use super::x509::{CaBundle, CertError};

/// Namespace and name of the ConfigMap kube-apiserver publishes.
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CONFIGMAP_NAME: &str = "extension-apiserver-authentication";

/// A source that cannot be turned into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A CA file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A CA bundle is not usable.
    #[error("{what}: {source}")]
    Ca {
        what: String,
        #[source]
        source: CertError,
    },
    /// A list value in the ConfigMap is not a JSON array of strings.
    #[error("ConfigMap key {key}: {source}")]
    List {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A header name is not valid.
    #[error("invalid header name {0:?}")]
    Header(String),
}

/// Front-proxy (request header) authentication settings.
#[derive(Debug, Clone)]
pub struct RequestHeader {
    /// CA that signs the front-proxy client certificate.
    pub ca: CaBundle,
    /// Common names allowed to act as front proxy; empty: any the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<HeaderName>,
    pub uid_headers: Vec<HeaderName>,
    pub group_headers: Vec<HeaderName>,
    /// Lower-case prefixes of extra headers, e.g. `x-remote-extra-`.
    pub extra_prefixes: Vec<String>,
}

impl RequestHeader {
    /// Every header name that carries identity, for stripping.
    pub fn is_identity_header(&self, name: &HeaderName) -> bool {
        self.username_headers.contains(name)
            || self.uid_headers.contains(name)
            || self.group_headers.contains(name)
            || self
                .extra_prefixes
                .iter()
                .any(|p| name.as_str().starts_with(p.as_str()))
    }
}

/// The trusted certificate authorities and header names.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// CA for client certificates (CN = user, O = groups).
    pub client_ca: Option<CaBundle>,
    pub request_header: Option<RequestHeader>,
}

/// Flag values; `None` means "take it from the ConfigMap".
#[derive(Debug, Clone, Default)]
pub struct AuthFlags {
    pub client_ca_file: Option<PathBuf>,
    pub requestheader_client_ca_file: Option<PathBuf>,
    pub requestheader_allowed_names: Option<Vec<String>>,
    pub requestheader_username_headers: Option<Vec<String>>,
    pub requestheader_uid_headers: Option<Vec<String>>,
    pub requestheader_group_headers: Option<Vec<String>>,
    pub requestheader_extra_headers_prefix: Option<Vec<String>>,
}

const DEFAULT_USERNAME: &str = "x-remote-user";
const DEFAULT_UID: &str = "x-remote-uid";
const DEFAULT_GROUP: &str = "x-remote-group";
const DEFAULT_EXTRA: &str = "x-remote-extra-";

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn bundle(what: String, pem: &[u8]) -> Result<CaBundle, ConfigError> {
    CaBundle::from_pem(pem).map_err(|source| ConfigError::Ca { what, source })
}

/// A list value: JSON array in the ConfigMap; a missing key is empty.
fn cm_list(data: &BTreeMap<String, String>, key: &'static str) -> Result<Vec<String>, ConfigError> {
    match data.get(key).map(|s| s.trim()) {
        None | Some("") => Ok(Vec::new()),
        Some(s) => serde_json::from_str(s).map_err(|source| ConfigError::List { key, source }),
    }
}

fn headers(names: Vec<String>) -> Result<Vec<HeaderName>, ConfigError> {
    names
        .into_iter()
        .filter(|n| !n.trim().is_empty())
        .map(|n| {
            HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::Header(n))
        })
        .collect()
}

/// Flag value, else ConfigMap value, else default (when the ConfigMap has
/// no such key either).
fn pick(
    flag: &Option<Vec<String>>,
    data: &BTreeMap<String, String>,
    key: &'static str,
    default: &str,
) -> Result<Vec<String>, ConfigError> {
    if let Some(v) = flag {
        return Ok(v.clone());
    }
    if data.contains_key(key) {
        return cm_list(data, key);
    }
    Ok(vec![default.to_owned()])
}

impl AuthConfig {
    /// Combines flags with the ConfigMap's `data` (None when it is not
    /// available). The request-header part exists only with a CA.
    pub fn build(
        flags: &AuthFlags,
        data: Option<&BTreeMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let empty = BTreeMap::new();
        let data = data.unwrap_or(&empty);
        let client_ca = match &flags.client_ca_file {
            Some(path) => Some(bundle(path.display().to_string(), &read(path)?)?),
            None => match data.get("client-ca-file").filter(|s| !s.trim().is_empty()) {
                Some(pem) => Some(bundle(
                    format!("{CONFIGMAP_NAME} client-ca-file"),
                    pem.as_bytes(),
                )?),
                None => None,
            },
        };
        let rh_ca = match &flags.requestheader_client_ca_file {
            Some(path) => Some(bundle(path.display().to_string(), &read(path)?)?),
            None => match data
                .get("requestheader-client-ca-file")
                .filter(|s| !s.trim().is_empty())
            {
                Some(pem) => Some(bundle(
                    format!("{CONFIGMAP_NAME} requestheader-client-ca-file"),
                    pem.as_bytes(),
                )?),
                None => None,
            },
        };
        let request_header = match rh_ca {
            None => None,
            Some(ca) => Some(RequestHeader {
                ca,
                allowed_names: match &flags.requestheader_allowed_names {
                    Some(v) => v.clone(),
                    None => cm_list(data, "requestheader-allowed-names")?,
                },
                username_headers: headers(pick(
                    &flags.requestheader_username_headers,
                    data,
                    "requestheader-username-headers",
                    DEFAULT_USERNAME,
                )?)?,
                uid_headers: headers(pick(
                    &flags.requestheader_uid_headers,
                    data,
                    "requestheader-uid-headers",
                    DEFAULT_UID,
                )?)?,
                group_headers: headers(pick(
                    &flags.requestheader_group_headers,
                    data,
                    "requestheader-group-headers",
                    DEFAULT_GROUP,
                )?)?,
                extra_prefixes: pick(
                    &flags.requestheader_extra_headers_prefix,
                    data,
                    "requestheader-extra-headers-prefix",
                    DEFAULT_EXTRA,
                )?
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            }),
        };
        Ok(AuthConfig {
            client_ca,
            request_header,
        })
    }

    /// True when the ConfigMap is needed for something the flags leave open.
    pub fn needs_configmap(flags: &AuthFlags) -> bool {
        flags.client_ca_file.is_none() || flags.requestheader_client_ca_file.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn configmap_lists_are_json_arrays() {
        let data: BTreeMap<String, String> = [
            ("requestheader-client-ca-file", ca_pem()),
            (
                "requestheader-allowed-names",
                r#"["front-proxy-client"]"#.into(),
            ),
            (
                "requestheader-username-headers",
                r#"["X-Remote-User"]"#.into(),
            ),
            (
                "requestheader-group-headers",
                r#"["X-Remote-Group"]"#.into(),
            ),
            (
                "requestheader-extra-headers-prefix",
                r#"["X-Remote-Extra-"]"#.into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let c = AuthConfig::build(&AuthFlags::default(), Some(&data)).unwrap();
        assert!(c.client_ca.is_none());
        let rh = c.request_header.unwrap();
        assert_eq!(rh.allowed_names, vec!["front-proxy-client"]);
        assert_eq!(
            rh.username_headers,
            vec![HeaderName::from_static("x-remote-user")]
        );
        assert_eq!(rh.extra_prefixes, vec!["x-remote-extra-"]);
        assert_eq!(
            rh.uid_headers,
            vec![HeaderName::from_static("x-remote-uid")]
        );
    }

    #[test]
    fn flags_override_the_configmap() {
        let data: BTreeMap<String, String> = [
            ("requestheader-client-ca-file".to_owned(), ca_pem()),
            (
                "requestheader-allowed-names".to_owned(),
                r#"["front-proxy-client"]"#.to_owned(),
            ),
        ]
        .into_iter()
        .collect();
        let flags = AuthFlags {
            requestheader_allowed_names: Some(vec!["proxy-a".into()]),
            ..AuthFlags::default()
        };
        let c = AuthConfig::build(&flags, Some(&data)).unwrap();
        assert_eq!(c.request_header.unwrap().allowed_names, vec!["proxy-a"]);
    }

    #[test]
    fn broken_values_are_errors() {
        let data: BTreeMap<String, String> = [
            ("requestheader-client-ca-file".to_owned(), ca_pem()),
            (
                "requestheader-allowed-names".to_owned(),
                "front-proxy-client".to_owned(),
            ),
        ]
        .into_iter()
        .collect();
        assert!(matches!(
            AuthConfig::build(&AuthFlags::default(), Some(&data)),
            Err(ConfigError::List { .. })
        ));
        let data: BTreeMap<String, String> = [("client-ca-file".to_owned(), "not pem".to_owned())]
            .into_iter()
            .collect();
        assert!(matches!(
            AuthConfig::build(&AuthFlags::default(), Some(&data)),
            Err(ConfigError::Ca { .. })
        ));
    }
}
