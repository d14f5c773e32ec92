//! Serving certificates with no manual step: every replica takes the CA
//! from the Secret (creating it if it is the first), issues its own
//! serving certificate from it (the key never leaves the process), and
//! keeps the trust published where clients read it: the ConfigMap agents
//! mount and the APIService's `caBundle` kube-apiserver verifies with.
//!
//! Rotation has no moment where a client cannot verify: a new CA is first
//! added to the published bundle next to the current one, signs only once
//! it has been out for `--pki-ca-propagation`, and the retired CA stays in
//! the bundle until it expires. Any replica may take a step; the Secret is
//! updated by resourceVersion, so two replicas never take the same step
//! twice (the loser of a conflict re-reads on its next round).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Api;
use tokio_util::sync::CancellationToken;

use super::pki::{ensure_ca, validity, CaSet, Outcome, PkiError, Stored};
use super::reload::{from_pem, ReloadingCert};
use metrics_proto::roots::DynamicRoots;

/// Key of the published bundle in the ConfigMap (and the name agents read).
pub const BUNDLE_KEY: &str = "ca.crt";

/// What the bootstrap makes and keeps.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub secret: String,
    pub configmap: String,
    /// APIService whose caBundle is kept current.
    pub apiservice: Option<String>,
    /// DNS names and IP addresses of this replica's certificate.
    pub names: Vec<String>,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    pub propagation: Duration,
}

impl Settings {
    /// How often a replica looks at the Secret and what it published:
    /// often enough to act well within every deadline, at most a minute.
    pub fn check_every(&self) -> Duration {
        let shortest = self
            .ca_validity
            .min(self.cert_validity)
            .min(self.propagation * 3);
        (shortest / 30).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// A running replica's share of the PKI.
pub struct Pki {
    settings: Settings,
    secrets: Api<Secret>,
    configmaps: Api<ConfigMap>,
    apiservices: Api<DynamicObject>,
    cert: Arc<ReloadingCert>,
    roots: Arc<DynamicRoots>,
    /// The CA certificate that signed the serving certificate in use.
    signed_by: String,
    /// When that certificate is replaced.
    renew_at: SystemTime,
    /// The bundle the peer verifier trusts.
    trusted: String,
    /// Whether a missing APIService was already reported.
    warned_apiservice: bool,
}

fn apiservice_resource() -> ApiResource {
    ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// How many times start-up tries the API before giving up, and the first
/// pause between tries (doubled each time).
const START_ATTEMPTS: u32 = 6;
const START_BACKOFF: Duration = Duration::from_secs(1);

impl Pki {
    /// Takes or creates the CA, issues this replica's certificate and
    /// publishes the trust bundle. A failure to publish is logged and
    /// retried by [`run`](Self::run); failing to reach the CA at all is an
    /// error after a few tries.
    pub async fn start(client: kube::Client, settings: Settings) -> Result<Self, PkiError> {
        let secrets = Api::namespaced(client.clone(), &settings.namespace);
        let mut pause = START_BACKOFF;
        let mut attempt = 1;
        let stored = loop {
            match ensure_ca(&secrets, &settings.secret, settings.ca_validity).await {
                Ok((stored, outcome)) => {
                    match outcome {
                        Outcome::Created => tracing::info!(
                            secret = %settings.secret,
                            namespace = %settings.namespace,
                            "created the CA"
                        ),
                        Outcome::Adopted => tracing::info!(
                            secret = %settings.secret,
                            namespace = %settings.namespace,
                            "using the existing CA"
                        ),
                    }
                    break stored;
                }
                Err(e @ (PkiError::Api(_) | PkiError::Contended(_)))
                    if attempt < START_ATTEMPTS =>
                {
                    tracing::warn!(error = %e, attempt, "CA not available yet; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let now = SystemTime::now();
        let (certified, renew_at) = issue(&stored.set, &settings)?;
        let trusted = stored.set.bundle(now);
        let mut pki = Self {
            secrets,
            configmaps: Api::namespaced(client.clone(), &settings.namespace),
            apiservices: Api::all_with(client, &apiservice_resource()),
            cert: ReloadingCert::with(certified),
            roots: DynamicRoots::from_pem(trusted.as_bytes())?,
            signed_by: stored.set.current.cert_pem().to_owned(),
            renew_at,
            trusted,
            warned_apiservice: false,
            settings,
        };
        if let Err(e) = pki.publish(&stored.set, now).await {
            tracing::warn!(error = %e, "publishing the CA bundle failed; trying again shortly");
        }
        Ok(pki)
    }

    /// The serving certificate, replaced on renewal.
    pub fn cert(&self) -> Arc<ReloadingCert> {
        Arc::clone(&self.cert)
    }

    /// The CAs peers are verified with, kept current.
    pub fn roots(&self) -> Arc<DynamicRoots> {
        Arc::clone(&self.roots)
    }

    /// Keeps the CA, the published bundle and the serving certificate
    /// current until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        let every = self.settings.check_every();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.round(SystemTime::now()).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("certificate upkeep works again");
                }
                Ok(()) => {}
                // Logged when it starts failing, then every so often.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "certificate upkeep failed; retrying every {every:?}");
                }
                Err(e) => tracing::debug!(error = %e, "certificate upkeep still failing"),
            }
        }
    }

    /// One look: read the CA set, publish it, take the next rotation step
    /// if one is due, and renew this replica's certificate if needed.
    pub async fn round(&mut self, now: SystemTime) -> Result<(), PkiError> {
        let s = self.settings.clone();
        let stored = match self.secrets.get_opt(&s.secret).await? {
            Some(secret) => Stored {
                set: CaSet::from_secret(&s.secret, &secret)?,
                resource_version: secret.metadata.resource_version,
            },
            None => {
                tracing::warn!(secret = %s.secret, "the CA Secret is gone; making a new CA");
                ensure_ca(&self.secrets, &s.secret, s.ca_validity).await?.0
            }
        };
        let mut set = stored.set;
        self.publish(&set, now).await?;
        if let Some(step) = set.plan(now, s.propagation, true)? {
            let next = set.apply(step, now, s.ca_validity)?;
            let mut secret = next.to_secret(&s.secret);
            secret.metadata.resource_version = stored.resource_version;
            match self
                .secrets
                .replace(&s.secret, &PostParams::default(), &secret)
                .await
            {
                Ok(_) => {
                    tracing::info!(?step, secret = %s.secret, "CA rotation step taken");
                    set = next;
                    self.publish(&set, now).await?;
                }
                // Another replica changed it first; its step is read next round.
                Err(e) if conflict(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        if set.current.cert_pem() != self.signed_by || now >= self.renew_at {
            let (certified, renew_at) = issue(&set, &self.settings)?;
            self.cert.set(certified);
            self.signed_by = set.current.cert_pem().to_owned();
            self.renew_at = renew_at;
            tracing::info!("serving certificate issued");
        }
        Ok(())
    }

    /// Writes the bundle of `set` into the ConfigMap and the APIService
    /// where it differs, and trusts it for peers. Ok once both hold it.
    async fn publish(&mut self, set: &CaSet, now: SystemTime) -> Result<(), PkiError> {
        let bundle = set.bundle(now);
        if bundle != self.trusted {
            self.roots.set_pem(bundle.as_bytes())?;
            self.trusted = bundle.clone();
        }
        self.publish_configmap(&bundle).await?;
        self.publish_apiservice(&bundle).await
    }

    async fn publish_configmap(&self, bundle: &str) -> Result<(), PkiError> {
        let name = &self.settings.configmap;
        let existing = self.configmaps.get_opt(name).await?;
        let held = existing
            .as_ref()
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(BUNDLE_KEY));
        if held.map(String::as_str) == Some(bundle) {
            return Ok(());
        }
        let mut cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/part-of".to_owned(),
                        "metrics-pipeline".to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some([(BUNDLE_KEY.to_owned(), bundle.to_owned())].into()),
            ..ConfigMap::default()
        };
        match existing {
            None => self.configmaps.create(&PostParams::default(), &cm).await?,
            Some(old) => {
                cm.metadata.resource_version = old.metadata.resource_version;
                self.configmaps
                    .replace(name, &PostParams::default(), &cm)
                    .await?
            }
        };
        tracing::info!(configmap = %name, "CA bundle published");
        Ok(())
    }

    async fn publish_apiservice(&mut self, bundle: &str) -> Result<(), PkiError> {
        let Some(name) = self.settings.apiservice.clone() else {
            return Ok(());
        };
        let Some(svc) = self.apiservices.get_opt(&name).await? else {
            if !self.warned_apiservice {
                self.warned_apiservice = true;
                tracing::warn!(apiservice = %name, "APIService not found; its caBundle is set once it exists");
            }
            return Ok(());
        };
        let spec = &svc.data["spec"];
        let held: Option<ByteString> = serde_json::from_value(spec["caBundle"].clone()).ok();
        let insecure = spec["insecureSkipTLSVerify"].as_bool() == Some(true);
        if !insecure && held.is_some_and(|b| b.0 == bundle.as_bytes()) {
            return Ok(());
        }
        let encoded = serde_json::to_value(ByteString(bundle.as_bytes().to_vec()))
            .map_err(|e| PkiError::Parse(e.to_string()))?;
        // kube-apiserver refuses a caBundle next to insecureSkipTLSVerify,
        // so both change in one patch.
        let patch = serde_json::json!({
            "spec": {"caBundle": encoded, "insecureSkipTLSVerify": false}
        });
        self.apiservices
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(apiservice = %name, "APIService caBundle set; kube-apiserver verifies this server");
        Ok(())
    }
}

/// This replica's certificate from the current CA of `set`, and when to
/// renew it (after two thirds of its life).
fn issue(set: &CaSet, s: &Settings) -> Result<(rustls::sign::CertifiedKey, SystemTime), PkiError> {
    let issued = set.current.issue_serving(&s.names, s.cert_validity)?;
    let (before, after) = validity(&issued.cert_pem)?;
    let life = after.duration_since(before).unwrap_or_default();
    let certified = from_pem(&issued.cert_pem, &issued.key_pem)
        .map_err(|e| PkiError::Parse(format!("issued certificate: {e}")))?;
    Ok((certified, before + life * 2 / 3))
}
