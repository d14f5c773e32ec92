//! Command-line flags of `metrics-aggregator`; metrics-server's names where
//! the meaning is the same.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use metrics_proto::duration::parse_duration;

/// Serves metrics.k8s.io/v1beta1 from reports streamed by metrics-agent.
#[derive(Debug, Clone, Parser)]
#[command(name = "metrics-aggregator", version)]
pub struct Args {
    /// Log verbosity as klog numbers it (-v 4 is debug, 6 trace); RUST_LOG, when set, wins.
    #[arg(short = 'v', long = "v", env = "V")]
    pub verbosity: Option<u8>,

    /// Address to serve the API and the ingest port on.
    #[arg(long, default_value = "0.0.0.0", env = "BIND_ADDRESS")]
    pub bind_address: IpAddr,

    /// HTTPS port of the metrics.k8s.io API (default 10250; OS-chosen in --standalone).
    #[arg(long, env = "SECURE_PORT")]
    pub secure_port: Option<u16>,

    /// gRPC port agents stream reports to (default 10251; OS-chosen in --standalone).
    #[arg(long, env = "GRPC_PORT")]
    pub grpc_port: Option<u16>,

    /// Directory for the generated self-signed certificate.
    #[arg(
        long,
        default_value = "apiserver.local.config/certificates",
        env = "CERT_DIR"
    )]
    pub cert_dir: PathBuf,

    /// Serving certificate (PEM); with --tls-private-key-file, replaces the generated one.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// Serving key (PEM).
    #[arg(long, env = "TLS_PRIVATE_KEY_FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,

    /// Lowest TLS version served: VersionTLS12 (default) or VersionTLS13.
    #[arg(long, env = "TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,

    /// TLS 1.2 cipher suites served, by IANA name as Go spells them (e.g.
    /// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); default: all rustls implements. TLS 1.3
    /// suites are always on.
    #[arg(long, env = "TLS_CIPHER_SUITES", value_delimiter = ',')]
    pub tls_cipher_suites: Vec<String>,

    /// Extra DNS names or IPs for the generated certificate (e.g. metrics-aggregator.kube-system.svc).
    #[arg(long = "tls-san", env = "TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,

    /// Where the serving certificate comes from when no --tls-cert-file is given:
    /// `kubernetes` bootstraps a CA through the API (Secret, ConfigMap, APIService
    /// caBundle), `self-signed` writes one into --cert-dir; `auto` is `kubernetes`
    /// when running in a cluster without --kubeconfig, else `self-signed`.
    #[arg(long, value_enum, default_value_t = PkiMode::Auto, env = "PKI")]
    pub pki: PkiMode,

    #[command(
        flatten,
        next_help_heading = "Certificates bootstrapped through the API (--pki)"
    )]
    pub pki_args: PkiArgs,

    /// Serve every request and accept every agent without authentication or authorization;
    /// only on a loopback --bind-address.
    #[arg(long, env = "INSECURE_ALLOW_ANONYMOUS")]
    pub insecure_allow_anonymous: bool,

    /// How often the serving certificate files are checked for a change.
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "TLS_RELOAD_INTERVAL")]
    pub tls_reload_interval: Duration,

    #[command(flatten, next_help_heading = "Authentication and authorization")]
    pub auth: crate::auth::args::AuthArgs,

    /// Requests answered at once on the API (health checks aside); more get 429 with
    /// Retry-After. 0: no limit.
    #[arg(long, default_value_t = 400, env = "MAX_REQUESTS_INFLIGHT")]
    pub max_requests_inflight: usize,

    /// Streams one HTTP/2 client connection to the API may have open (0: 250).
    #[arg(long, default_value_t = 0, env = "HTTP2_MAX_STREAMS_PER_CONNECTION")]
    pub http2_max_streams_per_connection: u32,

    /// Connections each port holds at once; more are closed on accept (0: from the
    /// open-file limit, most of it for the ingest port).
    #[arg(long, default_value_t = 0, env = "MAX_CONNECTIONS")]
    pub max_connections: usize,

    /// A connection nothing is read from for this long is closed (handshake-less
    /// sockets, clients that never speak); HTTP/2 clients answer the server's pings every
    /// 30s, so keep it above that.
    #[arg(long, default_value = "90s", value_parser = parse_duration, env = "IDLE_CONNECTION_TIMEOUT")]
    pub idle_connection_timeout: Duration,

    /// Once the ingest thread has handled every report it has, it waits this long
    /// before reading its sockets again, so reports arriving meanwhile share one
    /// wake-up instead of each paying its own. Adds up to this much to a report's
    /// way into the store; API answers and peers' queries do not wait for it. 0: off;
    /// at most 1s.
    #[arg(long, default_value = "200ms", value_parser = parse_duration, env = "INGEST_BATCH_DELAY")]
    pub ingest_batch_delay: Duration,

    /// Threads serving agents' report streams.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64), env = "INGEST_THREADS")]
    pub ingest_threads: u16,

    /// Estimated bytes of node and pod data held at most; a report that does not fit is
    /// refused (the node keeps its last data until it expires), and one node may hold a
    /// 32nd of it (0: 60% of the container's memory limit, else 4 GiB).
    #[arg(long, default_value_t = 0, env = "MAX_STORED_BYTES")]
    pub max_stored_bytes: usize,

    /// Pods held at most, over every node.
    #[arg(long, default_value_t = 1_000_000, env = "MAX_STORED_PODS")]
    pub max_stored_pods: usize,

    /// On SIGTERM, keep serving this long with readiness failing, so endpoints and
    /// kube-apiserver move away before the replica stops.
    #[arg(long, default_value = "0s", value_parser = parse_duration, env = "SHUTDOWN_DELAY_DURATION")]
    pub shutdown_delay_duration: Duration,

    /// A node's data expires after this many of its reporting periods without a report.
    #[arg(long, default_value_t = 3, env = "NODE_EXPIRY_PERIODS")]
    pub node_expiry_periods: u32,

    /// This replica's ID among --peers (default: $POD_NAME, else the host name).
    #[arg(long, env = "SHARD_ID")]
    pub shard_id: Option<String>,

    /// Every replica, this one included, as ID=https://HOST:GRPCPORT (comma-separated);
    /// empty: this replica answers alone.
    #[arg(long, env = "PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<PeerArg>,

    /// A file listing the replicas like --peers (one per line or comma-separated),
    /// re-read every 2s; a changed list changes ownership at run time.
    #[arg(long, env = "PEERS_FILE", conflicts_with = "peers")]
    pub peers_file: Option<PathBuf>,

    /// The replicas' headless Service (NAME or NAMESPACE/NAME; namespace default
    /// $POD_NAMESPACE): members are its EndpointSlices' ready endpoints, followed live.
    #[arg(long, env = "PEERS_SERVICE", conflicts_with_all = ["peers", "peers_file"])]
    pub peers_service: Option<String>,

    /// Name of the gRPC port in the --peers-service EndpointSlices.
    #[arg(long, default_value = "grpc", env = "PEERS_PORT_NAME")]
    pub peers_port_name: String,

    /// How many replicas own each node.
    #[arg(long, default_value_t = 2, env = "REPLICATION_FACTOR")]
    pub replication_factor: usize,

    /// Deadline of one peer query's first chunk, and of each later chunk; a whole answer
    /// may take 30 times as long.
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "PEER_TIMEOUT")]
    pub peer_timeout: Duration,

    /// Shortest time between a watch's two asks of the cluster (a watch sends what
    /// changed between them).
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "WATCH_POLL_INTERVAL")]
    pub watch_poll_interval: Duration,

    /// Time between BOOKMARK events of watches that allow them.
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "WATCH_BOOKMARK_INTERVAL")]
    pub watch_bookmark_interval: Duration,

    /// A watch client that takes no event for this long has its connection closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "WATCH_STALL_TIMEOUT")]
    pub watch_stall_timeout: Duration,

    /// Watches open at once; more are refused with 429.
    #[arg(long, default_value_t = 256, env = "MAX_WATCHES")]
    pub max_watches: usize,

    /// A watch without timeoutSeconds ends after between this and twice this.
    #[arg(long, default_value = "30m", value_parser = parse_duration, env = "MIN_REQUEST_TIMEOUT")]
    pub min_request_timeout: Duration,

    /// Resources served beside cpu and memory, comma-separated: `swap` (swap in use,
    /// from the kubelet's swap series or the cgroup's swap accounting). Off by
    /// default: clients expect exactly cpu and memory.
    #[arg(long, value_delimiter = ',', env = "EXTRA_RESOURCES")]
    pub extra_resources: Vec<String>,

    /// Largest estimated share of nodes (0 to 1) a list may miss because replicas did not
    /// answer; a list missing less carries a Warning header, one missing more fails with 503.
    #[arg(long, default_value_t = 0.5, env = "MAX_MISSING_SHARE")]
    pub max_missing_share: f64,

    /// CA that signs the peers' serving certificates (default: this replica's certificate,
    /// for replicas sharing one).
    #[arg(long, env = "PEER_CA_FILE")]
    pub peer_ca_file: Option<PathBuf>,

    /// Do not verify peers' certificates.
    #[arg(long, env = "PEER_INSECURE_TLS")]
    pub peer_insecure_tls: bool,

    /// Run an in-process agent for this host, serve on 127.0.0.1 anonymously, and write a kubeconfig.
    #[arg(long)]
    pub standalone: bool,

    /// Sampling period of the in-process agent (--standalone).
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "METRIC_RESOLUTION")]
    pub metric_resolution: Duration,

    /// Node name of the in-process agent (--standalone); default: this host's name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// How --standalone reads this host: the kubelet (with cgroup fallback) when
    /// --kubelet-url or NODE_IP is set, else cgroups, else /proc.
    #[command(flatten, next_help_heading = "Standalone host source")]
    pub host: metrics_agent::args::HostArgs,

    /// Where --standalone writes a kubeconfig pointing at this server.
    #[arg(
        long,
        default_value = "apiserver.local.config/kubeconfig",
        env = "WRITE_KUBECONFIG"
    )]
    pub write_kubeconfig: PathBuf,
}

/// How the serving certificate is obtained (see `--pki`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PkiMode {
    Auto,
    Kubernetes,
    SelfSigned,
}

/// Where the serving certificate comes from, once flags are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// --tls-cert-file and --tls-private-key-file.
    Files,
    /// Generated into --cert-dir.
    SelfSigned,
    /// Issued by the CA bootstrapped through the Kubernetes API.
    Kubernetes,
}

/// The objects and lifetimes of the bootstrapped PKI.
#[derive(Debug, Clone, clap::Args)]
pub struct PkiArgs {
    /// Namespace of the CA Secret and ConfigMap (default: $POD_NAMESPACE, else kube-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub pki_namespace: String,

    /// Secret holding the CA (created by the first replica, adopted by the others).
    #[arg(long, default_value = "metrics-aggregator-ca")]
    pub pki_secret: String,

    /// ConfigMap the CA bundle is published in (key ca.crt), for agents to mount.
    #[arg(long, default_value = "metrics-aggregator-ca")]
    pub pki_configmap: String,

    /// APIService whose caBundle is kept current (empty: none).
    #[arg(long, default_value = "v1beta1.metrics.k8s.io")]
    pub pki_apiservice: String,

    /// The Service that fronts the replicas; its DNS names go into each certificate.
    #[arg(long, default_value = "metrics-aggregator")]
    pub pki_service: String,

    /// Lifetime of a CA; a new one is published after two thirds of it.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    pub pki_ca_validity: Duration,

    /// Lifetime of a replica's serving certificate (kept in memory only); renewed after two
    /// thirds of it.
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    pub pki_cert_validity: Duration,

    /// How long a new CA is published (trusted) before it signs, so that every client has
    /// it first: kubelets refresh mounted ConfigMaps within about two minutes.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub pki_ca_propagation: Duration,
}

/// This process's cgroup memory limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), if it has one.
fn memory_limit() -> Option<usize> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse::<u64>().ok())
    // v1 reports "no limit" as a huge page-aligned number.
    .filter(|&l| l < 1 << 50)
    .and_then(|l| usize::try_from(l).ok())
}

/// One `--peers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerArg {
    pub id: String,
    pub url: String,
}

fn parse_peer(s: &str) -> Result<PeerArg, String> {
    match s.split_once('=') {
        Some((id, url))
            if !id.is_empty() && (url.starts_with("https://") || url.starts_with("http://")) =>
        {
            Ok(PeerArg {
                id: id.to_owned(),
                url: url.to_owned(),
            })
        }
        _ => Err(format!("{s:?} is not ID=https://HOST:PORT")),
    }
}

/// Longest --ingest-batch-delay: a report's delay into the store stays well
/// inside the second that metric age may exceed the resolution by.
const MAX_BATCH_DELAY: Duration = Duration::from_secs(1);

/// A flag combination that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("--extra-resources: unknown resource {0:?} (known: swap)")]
    ExtraResource(String),
    #[error("--insecure-allow-anonymous serves anyone who can connect; it requires a loopback --bind-address, got {0}")]
    AnonymousNotLoopback(IpAddr),
    #[error("--metric-resolution must be at least 1s, got {0:?}")]
    Resolution(Duration),
    #[error("--ingest-batch-delay must be at most 1s, got {0:?}")]
    BatchDelay(Duration),
    #[error("--node-expiry-periods must be at least 2")]
    Expiry,
    #[error("--shard-id {0:?} is not among --peers")]
    NotAPeer(String),
    #[error("--replication-factor must be at least 1")]
    Replication,
    #[error("replicas authenticate to each other: --peers and --peers-file need --peer-token-file (or --insecure-allow-anonymous on loopback)")]
    PeerToken,
    #[error("--peers-service must be NAME or NAMESPACE/NAME")]
    PeersService,
    #[error("--max-missing-share must be between 0 and 1, got {0}")]
    MissingShare(f64),
    #[error(transparent)]
    Tls(#[from] crate::tls::policy::PolicyError),
    #[error("--pki=kubernetes needs the Kubernetes API: run without --insecure-allow-anonymous and --standalone")]
    PkiWithoutApi,
    #[error("--pki-ca-propagation ({propagation:?}) must be under a third of --pki-ca-validity ({validity:?}) and --pki-cert-validity at least 1m")]
    PkiTimes {
        propagation: Duration,
        validity: Duration,
    },
}

impl Args {
    /// Rejects what cannot be served safely; runs before any port is bound.
    pub fn validate(&mut self) -> Result<(), ArgsError> {
        if self.standalone {
            if !self.bind_address.is_loopback() {
                self.bind_address = IpAddr::from([127, 0, 0, 1]);
            }
            self.insecure_allow_anonymous = true;
        }
        if self.insecure_allow_anonymous && !self.bind_address.is_loopback() {
            return Err(ArgsError::AnonymousNotLoopback(self.bind_address));
        }
        if self.metric_resolution < Duration::from_secs(1) {
            return Err(ArgsError::Resolution(self.metric_resolution));
        }
        crate::tls::policy::TlsPolicy::parse(
            self.tls_min_version.as_deref(),
            &self.tls_cipher_suites,
        )?;
        if self.ingest_batch_delay > MAX_BATCH_DELAY {
            return Err(ArgsError::BatchDelay(self.ingest_batch_delay));
        }
        if self.node_expiry_periods < 2 {
            return Err(ArgsError::Expiry);
        }
        if self.replication_factor == 0 {
            return Err(ArgsError::Replication);
        }
        if let Some(r) = self.extra_resources.iter().find(|r| r.as_str() != "swap") {
            return Err(ArgsError::ExtraResource(r.clone()));
        }
        if !(0.0..=1.0).contains(&self.max_missing_share) {
            return Err(ArgsError::MissingShare(self.max_missing_share));
        }
        let multi =
            !self.peers.is_empty() || self.peers_file.is_some() || self.peers_service.is_some();
        if self.peers_service.is_some() && self.peer_service().is_none() {
            return Err(ArgsError::PeersService);
        }
        if multi && !self.insecure_allow_anonymous && self.auth.peer_token_file.is_none() {
            return Err(ArgsError::PeerToken);
        }
        if self.cert_source() == CertSource::Kubernetes {
            if self.insecure_allow_anonymous {
                return Err(ArgsError::PkiWithoutApi);
            }
            let p = &self.pki_args;
            if p.pki_ca_propagation >= p.pki_ca_validity / 3
                || p.pki_cert_validity < Duration::from_secs(60)
            {
                return Err(ArgsError::PkiTimes {
                    propagation: p.pki_ca_propagation,
                    validity: p.pki_ca_validity,
                });
            }
        }
        if !self.peers.is_empty() && !self.peers.iter().any(|p| p.id == self.shard_id()) {
            return Err(ArgsError::NotAPeer(self.shard_id()));
        }
        Ok(())
    }

    /// Where the serving certificate comes from: files when given, else
    /// `--pki` with `auto` resolved.
    pub fn cert_source(&self) -> CertSource {
        if self.tls_cert_file.is_some() {
            return CertSource::Files;
        }
        match self.pki {
            PkiMode::Auto
                if !self.standalone
                    && !self.insecure_allow_anonymous
                    && self.auth.kubeconfig.is_none()
                    && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() =>
            {
                CertSource::Kubernetes
            }
            PkiMode::Kubernetes => CertSource::Kubernetes,
            PkiMode::Auto | PkiMode::SelfSigned => CertSource::SelfSigned,
        }
    }

    /// This replica's ID.
    pub fn shard_id(&self) -> String {
        self.shard_id
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .unwrap_or_else(|| "metrics-aggregator".to_owned())
    }

    /// The Service of --peers-service, if set and well formed.
    pub fn peer_service(&self) -> Option<crate::membership::HeadlessService> {
        let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "kube-system".into());
        crate::membership::HeadlessService::parse(
            self.peers_service.as_deref()?,
            &namespace,
            &self.peers_port_name,
        )
    }

    /// The store's budget: the flags, with the default byte bound taken
    /// from the memory limit of this process's cgroup.
    pub fn budget(&self) -> crate::store::Budget {
        let bytes = match self.max_stored_bytes {
            0 => memory_limit().map(|l| l / 10 * 6).unwrap_or(4 << 30),
            n => n,
        };
        crate::store::Budget::new(bytes, self.max_stored_pods)
    }

    /// API port to bind.
    pub fn api_port(&self) -> u16 {
        self.secure_port
            .unwrap_or(if self.standalone { 0 } else { 10250 })
    }

    /// Ingest port to bind.
    pub fn ingest_port(&self) -> u16 {
        self.grpc_port
            .unwrap_or(if self.standalone { 0 } else { 10251 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("metrics-aggregator").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn anonymous_only_on_loopback() {
        assert!(
            parse(&[]).validate().is_ok(),
            "delegated auth on any address"
        );
        assert!(matches!(
            parse(&["--insecure-allow-anonymous"]).validate(),
            Err(ArgsError::AnonymousNotLoopback(_))
        ));
        assert!(
            parse(&["--insecure-allow-anonymous", "--bind-address", "127.0.0.1"])
                .validate()
                .is_ok()
        );
        assert!(
            parse(&["--insecure-allow-anonymous", "--bind-address", "::1"])
                .validate()
                .is_ok()
        );
        let mut s = parse(&["--standalone", "--bind-address", "0.0.0.0"]);
        assert!(s.validate().is_ok());
        assert!(
            s.bind_address.is_loopback(),
            "standalone never leaves loopback"
        );
    }
}
