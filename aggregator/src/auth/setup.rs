//! Builds delegated authentication and authorization from flags: Kubernetes
//! clients, the initial configuration (flags, then the ConfigMap), and the
//! token checks of agents and peer replicas.

use std::sync::Arc;
use std::time::Duration;

use metrics_proto::kubeclient::{self, KubeClientError};

use super::args::AuthArgs;
use super::authn::Authenticator;
use super::authz::{AllowPaths, Authorizer};
use super::callers::{CallerAuth, Purpose};
use super::config::{AuthConfig, ConfigError};
use super::token::TokenReviewer;
use super::Auth;

/// How long start-up waits for the ConfigMap before serving without it.
const CONFIGMAP_WAIT: Duration = Duration::from_secs(5);

/// Delegated auth could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Client(#[from] KubeClientError),
    #[error("authentication flags: {0}")]
    Config(#[from] ConfigError),
}

/// Everything delegated auth needs at run time.
pub struct Delegated {
    pub auth: Arc<Auth>,
    pub agents: Arc<CallerAuth>,
    /// Where the authentication configuration comes from, for the watchers.
    pub config: Arc<super::watch::ConfigSource>,
    pub peers: Arc<CallerAuth>,
    /// Client for the ConfigMap watch (the authentication kubeconfig).
    pub authn_client: kube::Client,
}

/// Clients, initial configuration and reviewers.
pub async fn setup(args: &AuthArgs) -> Result<Delegated, SetupError> {
    let authn_path = args
        .authentication_kubeconfig
        .as_deref()
        .or(args.kubeconfig.as_deref());
    let authz_path = args
        .authorization_kubeconfig
        .as_deref()
        .or(args.kubeconfig.as_deref());
    let authn_client = kubeclient::client(authn_path).await?;
    let authz_client = kubeclient::client(authz_path).await?;
    let flags = args.flags();
    // Flag-provided CA files must be readable before serving.
    let initial = AuthConfig::build(&flags, None)?;
    let ttl = args.authentication_token_webhook_cache_ttl;
    let authn = Arc::new(Authenticator::new(
        initial,
        Some(TokenReviewer::new(authn_client.clone(), Vec::new(), ttl)),
    ));
    let config = super::watch::ConfigSource::new(flags, Arc::clone(&authn));
    if config.needs_configmap() {
        config.load_once(authn_client.clone(), CONFIGMAP_WAIT).await;
    }
    let authz = Authorizer::new(
        authz_client,
        AllowPaths::new(args.authorization_always_allow_paths.clone()),
        args.authorization_webhook_cache_authorized_ttl,
        args.authorization_webhook_cache_unauthorized_ttl,
    );
    let reviewer = || {
        TokenReviewer::new(
            authn_client.clone(),
            vec![args.agent_token_audience.clone()],
            ttl,
        )
    };
    let agents = CallerAuth::new(reviewer(), &args.agent_service_accounts, Purpose::Reports);
    let peers = CallerAuth::new(
        reviewer(),
        &args.peer_service_accounts,
        Purpose::PeerQueries,
    );
    Ok(Delegated {
        auth: Arc::new(Auth { authn, authz }),
        agents: Arc::new(agents),
        config,
        peers: Arc::new(peers),
        authn_client,
    })
}
