//! A Kubernetes API client from a kubeconfig file, or the in-cluster
//! ServiceAccount when none is given (never `~/.kube/config` by accident).

use std::path::Path;

/// A client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    /// The kubeconfig file is unreadable or invalid.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Not in a cluster and no kubeconfig given.
    #[error("no --kubeconfig and not running in a cluster: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// The configuration cannot make a client (TLS material, proxy).
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client for `kubeconfig`, else the in-cluster configuration.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::incluster()?,
    };
    Ok(kube::Client::try_from(config)?)
}
