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

/// How far before now a certificate's validity starts, for clocks a
/// little behind: `most`, or a tenth of a short validity, so that the
/// share of life used up (which drives renewal) stays about the same.
fn backdate(validity: Duration, most: Duration) -> Duration {
    (validity / 10).min(most)
}

/// Common name of the CAs this module makes.
pub const CA_NAME: &str = "metrics-pipeline-ca";

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
    #[error("certificate: {0}")]
    Parse(String),
    #[error("trust bundle: {0}")]
    Trust(#[from] metrics_proto::tls::TlsError),
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
        p.not_before = (now - backdate(validity, Duration::from_secs(3600))).into();
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
    /// `validity` or until the CA expires, whichever comes first.
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
        p.not_before = (now - backdate(validity, Duration::from_secs(300))).into();
        // Never past the CA: a chain is only as valid as its issuer.
        p.not_after = (now + validity).min(self.not_after()?).into();
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// When this certificate stops being valid.
    pub fn not_after(&self) -> Result<SystemTime, PkiError> {
        Ok(validity(&self.cert_pem)?.1)
    }
}

/// Keys of the CA Secret.
pub const NEXT_CERT_KEY: &str = "next.crt";
pub const NEXT_KEY_KEY: &str = "next.key";
pub const PREVIOUS_CERT_KEY: &str = "previous.crt";
/// Annotation on the CA Secret: when the next CA was first published
/// (Unix seconds).
pub const NEXT_PUBLISHED_AT: &str = "metrics-pipeline.io/next-ca-published-at";

/// The validity period (not before, not after) of the first certificate in
/// `pem`.
pub fn validity(pem: &str) -> Result<(SystemTime, SystemTime), PkiError> {
    let bad = |reason: String| PkiError::Parse(reason);
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let at = |t: i64| {
        u64::try_from(t)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .map_err(|_| bad(format!("time {t} before 1970")))
    };
    let v = cert.validity();
    Ok((at(v.not_before.timestamp())?, at(v.not_after.timestamp())?))
}

/// The CAs of one installation: `current` signs; `next`, once published
/// for long enough, replaces it; `previous` stays trusted until it
/// expires, so certificates it signed keep verifying while replicas move
/// to the new one.
#[derive(Debug, Clone)]
pub struct CaSet {
    pub current: Ca,
    /// The next CA and when it was first published.
    pub next: Option<(Ca, SystemTime)>,
    /// The retired CA's certificate (PEM).
    pub previous: Option<String>,
}

/// A change [`CaSet::plan`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The current CA is past two thirds of its life: publish a next one.
    AddNext,
    /// The next CA has been published long enough: it signs from now on.
    Promote,
    /// The current CA has expired (nothing verifies with it): replace it
    /// at once.
    Replace,
    /// The retired CA has expired: stop publishing it.
    DropPrevious,
}

fn unexpired(pem: &str, now: SystemTime) -> bool {
    validity(pem).is_ok_and(|(_, after)| after > now)
}

impl CaSet {
    /// Every CA clients should trust now, as one PEM bundle: the current,
    /// the next and the previous one, leaving out expired ones.
    pub fn bundle(&self, now: SystemTime) -> String {
        let mut out = String::new();
        let mut add = |pem: &str| {
            if unexpired(pem, now) {
                out.push_str(pem.trim_end());
                out.push('\n');
            }
        };
        add(&self.current.cert_pem);
        if let Some((next, _)) = &self.next {
            add(&next.cert_pem);
        }
        if let Some(prev) = &self.previous {
            add(prev);
        }
        out
    }

    /// What should change at `now`, if anything. A next CA is promoted only
    /// once it has been published for `propagation` and `published` says
    /// the bundle holding it is out where clients read it.
    pub fn plan(
        &self,
        now: SystemTime,
        propagation: Duration,
        published: bool,
    ) -> Result<Option<Step>, PkiError> {
        let (before, after) = validity(&self.current.cert_pem)?;
        if after <= now {
            return Ok(Some(Step::Replace));
        }
        if let Some((_, at)) = &self.next {
            let due = now.duration_since(*at).is_ok_and(|d| d >= propagation);
            return Ok((due && published).then_some(Step::Promote));
        }
        let life = after.duration_since(before).unwrap_or_default();
        let left = after.duration_since(now).unwrap_or_default();
        if left < life / 3 {
            return Ok(Some(Step::AddNext));
        }
        if self.previous.as_deref().is_some_and(|p| !unexpired(p, now)) {
            return Ok(Some(Step::DropPrevious));
        }
        Ok(None)
    }

    /// The set after `step`; new CAs are valid for `validity`.
    pub fn apply(
        &self,
        step: Step,
        now: SystemTime,
        validity: Duration,
    ) -> Result<CaSet, PkiError> {
        let mut set = self.clone();
        match step {
            Step::AddNext => set.next = Some((Ca::generate(CA_NAME, validity)?, now)),
            Step::Promote => {
                if let Some((next, _)) = set.next.take() {
                    set.previous = Some(std::mem::replace(&mut set.current, next).cert_pem);
                }
            }
            Step::Replace => {
                set = CaSet {
                    current: Ca::generate(CA_NAME, validity)?,
                    next: None,
                    previous: None,
                }
            }
            Step::DropPrevious => set.previous = None,
        }
        Ok(set)
    }

    /// As a Secret named `name` (no resourceVersion).
    pub fn to_secret(&self, name: &str) -> Secret {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        let mut data = BTreeMap::from([
            (CA_CERT_KEY.to_owned(), bytes(&self.current.cert_pem)),
            (CA_KEY_KEY.to_owned(), bytes(&self.current.key_pem)),
        ]);
        let mut annotations = BTreeMap::new();
        if let Some((next, at)) = &self.next {
            data.insert(NEXT_CERT_KEY.to_owned(), bytes(&next.cert_pem));
            data.insert(NEXT_KEY_KEY.to_owned(), bytes(&next.key_pem));
            let secs = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            annotations.insert(NEXT_PUBLISHED_AT.to_owned(), secs.to_string());
        }
        if let Some(prev) = &self.previous {
            data.insert(PREVIOUS_CERT_KEY.to_owned(), bytes(prev));
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_owned(),
                    "metrics-pipeline".to_owned(),
                )])),
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Reads the set from Secret `name`; a damaged Secret is an error,
    /// never silently replaced.
    pub fn from_secret(name: &str, s: &Secret) -> Result<Self, PkiError> {
        let bad = |reason: String| PkiError::Secret {
            name: name.to_owned(),
            reason,
        };
        let field = |key: &str| -> Result<Option<String>, PkiError> {
            match s.data.as_ref().and_then(|d| d.get(key)) {
                None => Ok(None),
                Some(b) => String::from_utf8(b.0.clone())
                    .map(Some)
                    .map_err(|_| bad(format!("{key} is not PEM text"))),
            }
        };
        let required = |key: &str| field(key)?.ok_or_else(|| bad(format!("no {key}")));
        let current = Ca::from_pem(&required(CA_CERT_KEY)?, &required(CA_KEY_KEY)?)
            .map_err(|e| bad(e.to_string()))?;
        let next = match (field(NEXT_CERT_KEY)?, field(NEXT_KEY_KEY)?) {
            (Some(cert), Some(key)) => {
                let ca = Ca::from_pem(&cert, &key).map_err(|e| bad(format!("next CA: {e}")))?;
                let at = s
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(NEXT_PUBLISHED_AT))
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                    .ok_or_else(|| bad(format!("next CA without a valid {NEXT_PUBLISHED_AT}")))?;
                Some((ca, at))
            }
            (None, None) => None,
            _ => return Err(bad("next CA with only one of next.crt and next.key".into())),
        };
        let previous = field(PREVIOUS_CERT_KEY)?;
        if let Some(p) = &previous {
            validity(p).map_err(|e| bad(format!("previous CA: {e}")))?;
        }
        Ok(Self {
            current,
            next,
            previous,
        })
    }
}

/// A [`CaSet`] as stored, with the resourceVersion to update it by.
#[derive(Debug, Clone)]
pub struct Stored {
    pub set: CaSet,
    pub resource_version: Option<String>,
}

/// The CA kept in Secret `name`: read if it exists, else created here.
/// When several replicas start at once, exactly one create succeeds; the
/// others get a conflict and read the winner's Secret, so every replica
/// ends with the same CA.
pub async fn ensure_ca(
    api: &Api<Secret>,
    name: &str,
    validity: Duration,
) -> Result<(Stored, Outcome), PkiError> {
    for _ in 0..ATTEMPTS {
        if let Some(s) = api.get_opt(name).await? {
            let stored = Stored {
                set: CaSet::from_secret(name, &s)?,
                resource_version: s.metadata.resource_version,
            };
            return Ok((stored, Outcome::Adopted));
        }
        let set = CaSet {
            current: Ca::generate(CA_NAME, validity)?,
            next: None,
            previous: None,
        };
        match api
            .create(&PostParams::default(), &set.to_secret(name))
            .await
        {
            Ok(created) => {
                let stored = Stored {
                    set,
                    resource_version: created.metadata.resource_version,
                };
                return Ok((stored, Outcome::Created));
            }
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
