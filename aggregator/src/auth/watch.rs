//! Keeps the authentication configuration current: the
//! `kube-system/extension-apiserver-authentication` ConfigMap is read once
//! before serving and then watched, and CA files given by flags are checked
//! for changes; either rebuilds the configuration from both. A broken
//! update is logged and the previous configuration kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio_util::sync::CancellationToken;

use super::authn::Authenticator;
use super::config::{AuthConfig, AuthFlags, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE};

/// Flags plus the last ConfigMap data, and the authenticator they feed.
pub struct ConfigSource {
    flags: AuthFlags,
    configmap: Mutex<Option<BTreeMap<String, String>>>,
    authn: Arc<Authenticator>,
}

impl ConfigSource {
    pub fn new(flags: AuthFlags, authn: Arc<Authenticator>) -> Arc<Self> {
        Arc::new(Self {
            flags,
            configmap: Mutex::new(None),
            authn,
        })
    }

    /// Whether the ConfigMap supplies anything the flags leave open.
    pub fn needs_configmap(&self) -> bool {
        AuthConfig::needs_configmap(&self.flags)
    }

    /// CA files named by flags.
    fn files(&self) -> Vec<PathBuf> {
        [
            &self.flags.client_ca_file,
            &self.flags.requestheader_client_ca_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    fn set_configmap(&self, data: Option<BTreeMap<String, String>>) {
        match self.configmap.lock() {
            Ok(mut g) => *g = data,
            Err(poisoned) => *poisoned.into_inner() = data,
        }
        self.rebuild();
    }

    /// Builds the configuration from the flags and the last ConfigMap data.
    pub fn rebuild(&self) {
        let data = match self.configmap.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match AuthConfig::build(&self.flags, data.as_ref()) {
            Ok(cfg) => {
                tracing::info!(
                    client_ca = cfg.client_ca.is_some(),
                    front_proxy = cfg.request_header.is_some(),
                    "authentication configuration loaded"
                );
                self.authn.set_config(cfg);
            }
            Err(e) => {
                tracing::error!(error = %e, "authentication configuration refused; keeping the previous one")
            }
        }
    }

    /// Reads the ConfigMap once (waiting at most `timeout`) and applies it.
    pub async fn load_once(&self, client: kube::Client, timeout: Duration) {
        let api: Api<ConfigMap> = Api::namespaced(client, CONFIGMAP_NAMESPACE);
        match tokio::time::timeout(timeout, api.get_opt(CONFIGMAP_NAME)).await {
            Ok(Ok(cm)) => self.set_configmap(cm.and_then(|c| c.data)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}; will keep watching")
            }
            Err(_) => tracing::warn!(
                "reading {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} timed out; will keep watching"
            ),
        }
    }

    /// Applies every change of the ConfigMap until `cancel` fires.
    pub async fn watch_configmap(self: Arc<Self>, client: kube::Client, cancel: CancellationToken) {
        let api: Api<ConfigMap> = Api::namespaced(client, CONFIGMAP_NAMESPACE);
        let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP_NAME}"));
        let stream = watcher::watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                e = stream.next() => e,
            };
            match event {
                Some(Ok(Event::Apply(cm) | Event::InitApply(cm))) => self.set_configmap(cm.data),
                Some(Ok(Event::Delete(_))) => {
                    tracing::warn!("{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} was deleted");
                    self.set_configmap(None)
                }
                Some(Ok(Event::Init | Event::InitDone)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}")
                }
                None => return,
            }
        }
    }

    /// Rebuilds when a flag-given CA file changes (checked every `every`)
    /// until `cancel` fires.
    pub async fn watch_files(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        crate::files::on_change(self.files(), every, cancel, || self.rebuild()).await
    }
}
