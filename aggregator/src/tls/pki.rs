//! The pipeline's own certificate authority, bootstrapped through the
//! Kubernetes API for installs that bring no certificate files: one CA,
//! kept in a Secret that exactly one replica creates (a replica whose
//! create conflicts adopts the one that won), and serving certificates
//! issued from it to each replica.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Keys of the CA Secret.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";

/// How often a replica tries again when creates keep conflicting and the
/// winner's Secret cannot be read back (it was deleted in between).
const ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("Secret {name}: {reason}")]
    Secret { name: String, reason: String },
    #[error("Secret {0}: created and deleted by others {ATTEMPTS} times in a row")]
    Contended(String),
}

/// A CA certificate and its key, as PEM.
#[derive(Clone)]
pub struct Ca {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A certificate issued by a [`Ca`], as PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Whether [`ensure_ca`] made the CA or found one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Adopted,
}

impl Ca {
    /// A new CA named `name`, valid from now for `validity`.
    pub fn generate(name: &str, validity: Duration) -> Result<Self, PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(3600)).into();
        p.not_after = (now + validity).into();
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CA from PEM, checked by building an issuer from it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let ca = Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        };
        ca.issuer()?;
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// A serving certificate for `names` (DNS names or IP addresses), also
    /// usable as a client certificate between replicas, valid for
    /// `validity`.
    pub fn issue_serving(&self, names: &[String], validity: Duration) -> Result<Issued, PkiError> {
        let mut p = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            p.distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(300)).into();
        p.not_after = (now + validity).into();
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn to_secret(&self, name: &str) -> Secret {
        let data = BTreeMap::from([
            (
                CA_CERT_KEY.to_owned(),
                ByteString(self.cert_pem.as_bytes().to_vec()),
            ),
            (
                CA_KEY_KEY.to_owned(),
                ByteString(self.key_pem.as_bytes().to_vec()),
            ),
        ]);
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_owned(),
                    "metrics-pipeline".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    fn from_secret(name: &str, s: &Secret) -> Result<Self, PkiError> {
        let field = |key: &str| -> Result<String, PkiError> {
            let bytes =
                s.data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .ok_or_else(|| PkiError::Secret {
                        name: name.to_owned(),
                        reason: format!("no {key}"),
                    })?;
            String::from_utf8(bytes.0.clone()).map_err(|_| PkiError::Secret {
                name: name.to_owned(),
                reason: format!("{key} is not PEM text"),
            })
        };
        Self::from_pem(&field(CA_CERT_KEY)?, &field(CA_KEY_KEY)?).map_err(|e| PkiError::Secret {
            name: name.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// The CA kept in Secret `name`: read if it exists, else created here.
/// When several replicas start at once, exactly one create succeeds; the
/// others get a conflict and read the winner's Secret, so every replica
/// ends with the same CA.
pub async fn ensure_ca(
    api: &Api<Secret>,
    name: &str,
    validity: Duration,
) -> Result<(Ca, Outcome), PkiError> {
    for _ in 0..ATTEMPTS {
        if let Some(s) = api.get_opt(name).await? {
            return Ok((Ca::from_secret(name, &s)?, Outcome::Adopted));
        }
        let ca = Ca::generate("metrics-pipeline-ca", validity)?;
        match api
            .create(&PostParams::default(), &ca.to_secret(name))
            .await
        {
            Ok(_) => return Ok((ca, Outcome::Created)),
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                tracing::info!(
                    secret = name,
                    "another replica created the CA first; using theirs"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(PkiError::Contended(name.to_owned()))
}
