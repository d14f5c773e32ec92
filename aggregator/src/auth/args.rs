//! Flags of delegated authentication and authorization, with
//! metrics-server's (k8s.io/apiserver's) names and defaults.

use std::path::PathBuf;
use std::time::Duration;

use metrics_proto::duration::parse_duration;

use super::config::AuthFlags;

/// Who may call the API and report to it.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// kubeconfig for TokenReview, SubjectAccessReview and watches (default: in-cluster).
    #[arg(long, env = "KUBECONFIG_PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// kubeconfig for TokenReview and the authentication ConfigMap (default: --kubeconfig).
    #[arg(long, env = "AUTHENTICATION_KUBECONFIG")]
    pub authentication_kubeconfig: Option<PathBuf>,

    /// kubeconfig for SubjectAccessReview (default: --kubeconfig).
    #[arg(long, env = "AUTHORIZATION_KUBECONFIG")]
    pub authorization_kubeconfig: Option<PathBuf>,

    /// CA bundle for client certificates (CN = user, O = groups); overrides the ConfigMap's.
    #[arg(long, env = "CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// CA bundle of the front proxy's client certificate; overrides the ConfigMap's.
    #[arg(long, env = "REQUESTHEADER_CLIENT_CA_FILE")]
    pub requestheader_client_ca_file: Option<PathBuf>,

    /// Common names allowed to act as front proxy (empty: any the CA signed).
    #[arg(long, value_delimiter = ',', env = "REQUESTHEADER_ALLOWED_NAMES")]
    pub requestheader_allowed_names: Option<Vec<String>>,

    /// Headers carrying the user name (default X-Remote-User).
    #[arg(long, value_delimiter = ',', env = "REQUESTHEADER_USERNAME_HEADERS")]
    pub requestheader_username_headers: Option<Vec<String>>,

    /// Headers carrying the user's UID (default X-Remote-Uid).
    #[arg(long, value_delimiter = ',', env = "REQUESTHEADER_UID_HEADERS")]
    pub requestheader_uid_headers: Option<Vec<String>>,

    /// Headers carrying groups (default X-Remote-Group).
    #[arg(long, value_delimiter = ',', env = "REQUESTHEADER_GROUP_HEADERS")]
    pub requestheader_group_headers: Option<Vec<String>>,

    /// Prefixes of headers carrying extra attributes (default X-Remote-Extra-).
    #[arg(
        long,
        value_delimiter = ',',
        env = "REQUESTHEADER_EXTRA_HEADERS_PREFIX"
    )]
    pub requestheader_extra_headers_prefix: Option<Vec<String>>,

    /// How long TokenReview answers (positive and negative) are cached.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "AUTHENTICATION_TOKEN_WEBHOOK_CACHE_TTL")]
    pub authentication_token_webhook_cache_ttl: Duration,

    /// How long allowed SubjectAccessReview answers are cached.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "AUTHORIZATION_WEBHOOK_CACHE_AUTHORIZED_TTL")]
    pub authorization_webhook_cache_authorized_ttl: Duration,

    /// How long denied SubjectAccessReview answers are cached.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "AUTHORIZATION_WEBHOOK_CACHE_UNAUTHORIZED_TTL")]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,

    /// Paths served without authorization (exact, or a prefix ending in *).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "/healthz,/readyz,/livez",
        env = "AUTHORIZATION_ALWAYS_ALLOW_PATHS"
    )]
    pub authorization_always_allow_paths: Vec<String>,

    /// Audience the tokens of agents and peer replicas must be issued for.
    #[arg(
        long,
        default_value = "metrics-aggregator",
        env = "AGENT_TOKEN_AUDIENCE"
    )]
    pub agent_token_audience: String,

    /// ServiceAccounts (NAMESPACE/NAME) whose tokens may send node reports.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-system/metrics-agent",
        env = "AGENT_SERVICE_ACCOUNTS"
    )]
    pub agent_service_accounts: Vec<String>,

    /// How often an open agent stream's token is reviewed again; the stream ends once
    /// the token is no longer valid (expired, or its pod deleted).
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "AGENT_TOKEN_RECHECK_INTERVAL")]
    pub agent_token_recheck_interval: Duration,

    /// ServiceAccounts (NAMESPACE/NAME) whose tokens may query this replica as a peer.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-system/metrics-aggregator",
        env = "PEER_SERVICE_ACCOUNTS"
    )]
    pub peer_service_accounts: Vec<String>,

    /// ServiceAccount token (audience --agent-token-audience) sent with queries to peers;
    /// read again when the copy in memory is over 10s old, so rotation needs no restart.
    #[arg(long, env = "PEER_TOKEN_FILE")]
    pub peer_token_file: Option<PathBuf>,
}

impl AuthArgs {
    /// The parts the ConfigMap may supply.
    pub fn flags(&self) -> AuthFlags {
        AuthFlags {
            client_ca_file: self.client_ca_file.clone(),
            requestheader_client_ca_file: self.requestheader_client_ca_file.clone(),
            requestheader_allowed_names: self.requestheader_allowed_names.clone(),
            requestheader_username_headers: self.requestheader_username_headers.clone(),
            requestheader_uid_headers: self.requestheader_uid_headers.clone(),
            requestheader_group_headers: self.requestheader_group_headers.clone(),
            requestheader_extra_headers_prefix: self.requestheader_extra_headers_prefix.clone(),
        }
    }
}
