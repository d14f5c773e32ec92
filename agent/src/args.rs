//! Command-line flags of `metrics-agent`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use metrics_proto::duration::parse_duration;

/// Where the agent reads its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// The kubelet's /metrics/resource: node and every container.
    Kubelet,
    /// cgroup files and /proc read directly; pods mapped through the kubelet's /pods.
    Cgroup,
    /// The kubelet, falling back to cgroups in any cycle it fails or returns zeros.
    Auto,
    /// The host's /proc: the node only.
    Proc,
}

/// How to reach the node's kubelet and kernel files; shared by
/// `metrics-agent` and `metrics-aggregator --standalone`.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// Base URL of the kubelet; default https://$NODE_IP:--kubelet-port.
    #[arg(long, env = "KUBELET_URL")]
    pub kubelet_url: Option<String>,

    /// The kubelet's port, with NODE_IP, when --kubelet-url is not given.
    #[arg(long, default_value_t = 10250, env = "KUBELET_PORT")]
    pub kubelet_port: u16,

    /// Bearer token file for the kubelet; skipped when the file is absent.
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token",
        env = "KUBELET_TOKEN_FILE"
    )]
    pub kubelet_token_file: PathBuf,

    /// Client certificate (PEM) presented to the kubelet, for kubelets that
    /// authenticate by certificate; with --kubelet-client-key.
    #[arg(
        long,
        env = "KUBELET_CLIENT_CERTIFICATE",
        requires = "kubelet_client_key"
    )]
    pub kubelet_client_certificate: Option<PathBuf>,

    /// Key of --kubelet-client-certificate (PEM).
    #[arg(
        long,
        env = "KUBELET_CLIENT_KEY",
        requires = "kubelet_client_certificate"
    )]
    pub kubelet_client_key: Option<PathBuf>,

    /// CA bundle that signs the kubelet's serving certificate.
    #[arg(long, env = "KUBELET_CERTIFICATE_AUTHORITY")]
    pub kubelet_certificate_authority: Option<PathBuf>,

    /// Do not verify the kubelet's serving certificate.
    #[arg(long, env = "KUBELET_INSECURE_TLS")]
    pub kubelet_insecure_tls: bool,

    /// Timeout of one kubelet request; default: 90% of the resolution, at most 10s.
    #[arg(long, value_parser = parse_duration, env = "KUBELET_REQUEST_TIMEOUT")]
    pub kubelet_request_timeout: Option<Duration>,

    /// Read pods and their labels from the kubelet's /pods instead of the agent's own
    /// watch on the API (needs nodes/proxy, which also reaches the kubelet's exec and
    /// attach endpoints; only for clusters where the agent cannot watch pods).
    #[arg(long, env = "KUBELET_POD_LABELS")]
    pub kubelet_pod_labels: bool,

    /// How often --kubelet-pod-labels refetches /pods (sooner when a new pod appears).
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "POD_LABELS_REFRESH")]
    pub pod_labels_refresh: Duration,

    /// Where the host's cgroup hierarchy is mounted (--source=cgroup or auto).
    #[arg(long, default_value = "/sys/fs/cgroup", env = "CGROUP_ROOT")]
    pub cgroup_root: PathBuf,

    /// Longest the cgroup source reuses a container's inactive file pages from
    /// memory.stat, the costliest cgroup file to read, subtracting them from the
    /// usage read every sample; sooner when the usage moved by over 1 MiB or 1/64.
    /// 0s reads it every sample. The kubelet's own figures refresh every 10-15s.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "CGROUP_MEMORY_STAT_INTERVAL")]
    pub cgroup_memory_stat_interval: Duration,

    /// Root of the host's procfs (--source=proc, and node figures the root cgroup lacks).
    #[arg(long, default_value = "/proc", env = "PROC_ROOT")]
    pub proc_root: PathBuf,
}

/// Reads one node's resource usage and streams it to metrics-aggregator.
#[derive(Debug, Clone, Parser)]
#[command(name = "metrics-agent", version)]
pub struct Args {
    /// Name of the Node this agent reports for.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Where to read samples.
    #[arg(
        long,
        value_enum,
        default_value = "kubelet",
        env = "METRICS_AGENT_SOURCE"
    )]
    pub source: SourceKind,

    #[command(flatten)]
    pub host: HostArgs,

    /// Aggregator gRPC URL (https://HOST:PORT); repeat for several.
    #[arg(
        long = "aggregator",
        required = true,
        env = "AGGREGATOR",
        value_delimiter = ','
    )]
    pub aggregators: Vec<String>,

    /// CA bundle that signs the aggregator's serving certificate.
    #[arg(long, env = "AGGREGATOR_CA_FILE")]
    pub aggregator_ca_file: Option<PathBuf>,

    /// Do not verify the aggregator's serving certificate.
    #[arg(long, env = "AGGREGATOR_INSECURE_TLS")]
    pub aggregator_insecure_tls: bool,

    /// ServiceAccount token sent to aggregators (a projected token with their audience);
    /// read again when the copy in memory is over 10s old, so rotation needs no restart.
    #[arg(long, env = "AGGREGATOR_TOKEN_FILE")]
    pub aggregator_token_file: Option<PathBuf>,

    /// kubeconfig for watching this node's pods and Node for labels (default: in-cluster).
    #[arg(long, env = "KUBECONFIG_PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Do not use the Kubernetes API; pod labels then come only from --kubelet-pod-labels.
    #[arg(long, env = "NO_API", conflicts_with = "kubeconfig")]
    pub no_api: bool,

    /// Serve /metrics and /healthz over plain HTTP on this address (off when unset).
    #[arg(long, env = "METRICS_BIND_ADDRESS")]
    pub metrics_bind_address: Option<SocketAddr>,

    /// Log verbosity as klog numbers it (-v 4 is debug, 6 trace); RUST_LOG, when set, wins.
    #[arg(short = 'v', long = "v", env = "V")]
    pub verbosity: Option<u8>,

    /// Sampling and reporting period (1s to 10m).
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "METRIC_RESOLUTION")]
    pub metric_resolution: Duration,
}

/// A flag combination that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("--metric-resolution must be between 1s and 10m, got {0:?}")]
    Resolution(Duration),
    #[error("--node-name must not be empty")]
    NodeName,
    #[error("no kubelet URL: set --kubelet-url or NODE_IP")]
    KubeletUrl,
    #[error("choose one of {0}")]
    Conflict(&'static str),
}

impl Args {
    /// Checks what clap cannot; called before anything starts.
    pub fn validate(&self) -> Result<(), ArgsError> {
        if !(metrics_proto::MIN_PERIOD..=metrics_proto::MAX_PERIOD)
            .contains(&self.metric_resolution)
        {
            return Err(ArgsError::Resolution(self.metric_resolution));
        }
        if self.node_name.trim().is_empty() {
            return Err(ArgsError::NodeName);
        }
        if self.host.kubelet_insecure_tls && self.host.kubelet_certificate_authority.is_some() {
            return Err(ArgsError::Conflict(
                "--kubelet-insecure-tls or --kubelet-certificate-authority",
            ));
        }
        if self.aggregator_insecure_tls && self.aggregator_ca_file.is_some() {
            return Err(ArgsError::Conflict(
                "--aggregator-insecure-tls or --aggregator-ca-file",
            ));
        }
        if self.needs_kubelet() {
            self.host.kubelet_url()?;
        }
        Ok(())
    }
}

impl Args {
    /// Whether the kubelet is read at all: not by `proc`, and by `cgroup`
    /// only when asked to take pods from its `/pods`.
    pub fn needs_kubelet(&self) -> bool {
        match self.source {
            SourceKind::Proc => false,
            SourceKind::Cgroup => self.host.kubelet_pod_labels,
            SourceKind::Kubelet | SourceKind::Auto => true,
        }
    }
}

impl HostArgs {
    /// The kubelet base URL, from the flag or `NODE_IP`.
    pub fn kubelet_url(&self) -> Result<String, ArgsError> {
        self.kubelet_url_with(std::env::var("NODE_IP").ok())
    }

    /// [`kubelet_url`](Self::kubelet_url) with `node_ip` for `NODE_IP`.
    fn kubelet_url_with(&self, node_ip: Option<String>) -> Result<String, ArgsError> {
        if let Some(u) = &self.kubelet_url {
            return Ok(u.clone());
        }
        match node_ip.ok_or(()) {
            Ok(ip) if ip.contains(':') => Ok(format!("https://[{ip}]:{}", self.kubelet_port)),
            Ok(ip) if !ip.is_empty() => Ok(format!("https://{ip}:{}", self.kubelet_port)),
            _ => Err(ArgsError::KubeletUrl),
        }
    }

    /// Timeout of one kubelet request at sampling period `resolution`.
    pub fn kubelet_timeout(&self, resolution: Duration) -> Duration {
        self.kubelet_request_timeout
            .unwrap_or_else(|| resolution.mul_f64(0.9).min(Duration::from_secs(10)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(
            ["metrics-agent", "--node-name=n", "--aggregator=https://a:1"]
                .iter()
                .chain(args),
        )
        .unwrap()
    }

    #[test]
    fn kubelet_port_and_klog_verbosity_flags() {
        let a = parse(&["--kubelet-port=10255", "-v", "4"]);
        assert_eq!(a.verbosity, Some(4));
        assert_eq!(a.host.kubelet_port, 10255);
        let a = parse(&["--v=2", "--kubelet-url=https://k:1"]);
        assert_eq!(a.verbosity, Some(2));
        assert_eq!(a.host.kubelet_url().unwrap(), "https://k:1");
        // From NODE_IP the port flag applies; the URL flag wins over both.
        let a = parse(&["--kubelet-port=10255"]);
        let url = |ip: &str| a.host.kubelet_url_with(Some(ip.to_owned())).unwrap();
        assert_eq!(url("10.0.0.7"), "https://10.0.0.7:10255");
        assert_eq!(url("fd00::7"), "https://[fd00::7]:10255");
        assert!(a.host.kubelet_url_with(None).is_err());
    }

    #[test]
    fn memory_stat_interval_flag() {
        use std::time::Duration;
        let default = parse(&[]).host.cgroup_memory_stat_interval;
        assert_eq!(default, crate::source::cgroup::MEMORY_STAT_MAX_AGE);
        assert_eq!(default, Duration::from_secs(10));
        let a = parse(&["--cgroup-memory-stat-interval=0s"]);
        assert_eq!(a.host.cgroup_memory_stat_interval, Duration::ZERO);
        let a = parse(&["--cgroup-memory-stat-interval=1m"]);
        assert_eq!(a.host.cgroup_memory_stat_interval, Duration::from_secs(60));
    }
}
