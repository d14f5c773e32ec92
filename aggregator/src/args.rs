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

    /// Extra DNS names or IPs for the generated certificate (e.g. metrics-aggregator.kube-system.svc).
    #[arg(long = "tls-san", env = "TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,

    /// Serve every request without authentication or authorization; only on a loopback --bind-address.
    #[arg(long, env = "INSECURE_ALLOW_ANONYMOUS")]
    pub insecure_allow_anonymous: bool,

    /// A node's data expires after this many of its reporting periods without a report.
    #[arg(long, default_value_t = 3, env = "NODE_EXPIRY_PERIODS")]
    pub node_expiry_periods: u32,

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

/// A flag combination that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("authentication is not available in this build: serve with --insecure-allow-anonymous on a loopback --bind-address, or use --standalone")]
    NoAuth,
    #[error("--insecure-allow-anonymous serves anyone who can connect; it requires a loopback --bind-address, got {0}")]
    AnonymousNotLoopback(IpAddr),
    #[error("--metric-resolution must be at least 1s, got {0:?}")]
    Resolution(Duration),
    #[error("--node-expiry-periods must be at least 2")]
    Expiry,
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
        if !self.insecure_allow_anonymous {
            return Err(ArgsError::NoAuth);
        }
        if !self.bind_address.is_loopback() {
            return Err(ArgsError::AnonymousNotLoopback(self.bind_address));
        }
        if self.metric_resolution < Duration::from_secs(1) {
            return Err(ArgsError::Resolution(self.metric_resolution));
        }
        if self.node_expiry_periods < 2 {
            return Err(ArgsError::Expiry);
        }
        Ok(())
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
        assert!(matches!(parse(&[]).validate(), Err(ArgsError::NoAuth)));
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
