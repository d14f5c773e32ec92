//! Keeps the authentication configuration in step with the
//! `kube-system/extension-apiserver-authentication` ConfigMap: read once
//! before serving, then watched; a broken update keeps the previous one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio_util::sync::CancellationToken;

use super::authn::Authenticator;
use super::config::{AuthConfig, AuthFlags, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE};

fn apply(authn: &Authenticator, flags: &AuthFlags, data: Option<&BTreeMap<String, String>>) {
    match AuthConfig::build(flags, data) {
        Ok(cfg) => {
            tracing::info!(
                client_ca = cfg.client_ca.is_some(),
                front_proxy = cfg.request_header.is_some(),
                "authentication configuration loaded"
            );
            authn.set_config(cfg);
        }
        Err(e) => {
            tracing::error!(error = %e, "authentication configuration refused; keeping the previous one")
        }
    }
}

/// Reads the ConfigMap once (waiting at most `timeout`) and applies it.
pub async fn load_once(
    client: kube::Client,
    flags: &AuthFlags,
    authn: &Authenticator,
    timeout: Duration,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, CONFIGMAP_NAMESPACE);
    match tokio::time::timeout(timeout, api.get_opt(CONFIGMAP_NAME)).await {
        Ok(Ok(cm)) => apply(authn, flags, cm.as_ref().and_then(|c| c.data.as_ref())),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}; will keep watching")
        }
        Err(_) => tracing::warn!(
            "reading {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} timed out; will keep watching"
        ),
    }
}

/// Applies every change of the ConfigMap until `cancel` fires.
pub async fn watch(
    client: kube::Client,
    flags: AuthFlags,
    authn: Arc<Authenticator>,
    cancel: CancellationToken,
) {
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
            Some(Ok(Event::Apply(cm) | Event::InitApply(cm))) => {
                apply(&authn, &flags, cm.data.as_ref())
            }
            Some(Ok(Event::Delete(_))) => {
                tracing::warn!("{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} was deleted");
                apply(&authn, &flags, None)
            }
            Some(Ok(Event::Init | Event::InitDone)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}")
            }
            None => return,
        }
    }
}
