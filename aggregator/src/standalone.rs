//! `--standalone`: an in-process agent reading this host's `/proc`, fed
//! through the same ingest checks as remote agents, plus a kubeconfig so
//! `kubectl` can query the server at once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use metrics_agent::collect::Collector;
use metrics_agent::metrics::AgentMetrics;
use metrics_agent::pods::PodCache;
use metrics_agent::source::cgroup::CgroupSource;
use metrics_agent::source::kubelet::KubeletSource;
use metrics_agent::source::{host::HostSource, Source};

use crate::args::Args;
use crate::ingest::IngestService;
use crate::report::is_dns_subdomain;
use crate::Aggregator;

/// Failures setting up standalone mode.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("writing kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no usable node name (got {0:?}); set --node-name")]
    NodeName(String),
}

/// What the user needs to query the server.
#[derive(Debug)]
pub struct Info {
    pub url: String,
    pub kubeconfig: PathBuf,
    pub node: String,
}

impl fmt::Display for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "metrics-aggregator serving node {} on {}; first numbers after two samples. Query it with:\n  kubectl --kubeconfig {} top node\n  kubectl --kubeconfig {} get --raw /apis/metrics.k8s.io/v1beta1/nodes",
            self.node,
            self.url,
            self.kubeconfig.display(),
            self.kubeconfig.display()
        )
    }
}

/// This host's name, lower-cased, from `NODE_NAME` handling in clap or
/// the kernel.
fn host_name(proc_root: &Path) -> String {
    std::fs::read_to_string(proc_root.join("sys/kernel/hostname"))
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// A kubeconfig for a client of `url`, trusting `ca`. The user entry only
/// keeps kubectl from prompting; the standalone server serves anonymously.
pub fn kubeconfig(url: &str, ca: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: metrics-aggregator\n  cluster:\n    server: {url}\n    certificate-authority: {}\ncontexts:\n- name: metrics-aggregator\n  context:\n    cluster: metrics-aggregator\n    user: anonymous\ncurrent-context: metrics-aggregator\nusers:\n- name: anonymous\n  user:\n    username: anonymous\n",
        ca.display()
    )
}

/// The best source this host offers: the kubelet with cgroup fallback when a
/// kubelet is configured, else the cgroup tree, else `/proc`.
fn host_source(args: &Args) -> (Source, Option<KubeletSource>) {
    let host = &args.host;
    let kubelet = match host.kubelet_url() {
        Ok(_) => match metrics_agent::kubelet_source(host, args.metric_resolution) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(error = %e, "not using the kubelet");
                None
            }
        },
        Err(_) => None,
    };
    let cgroup = match CgroupSource::new(&host.cgroup_root, &host.proc_root) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::info!(error = %e, "not using cgroups");
            None
        }
    };
    let source = match (kubelet.clone(), cgroup) {
        (Some(k), Some(c)) => Source::Auto {
            kubelet: Box::new(k),
            cgroup: c,
            on_fallback: false,
        },
        (Some(k), None) => Source::Kubelet(Box::new(k)),
        (None, Some(c)) => Source::Cgroup(c),
        (None, None) => Source::Host(HostSource::new(&host.proc_root)),
    };
    (source, kubelet)
}

/// Writes the kubeconfig and spawns the in-process agent.
pub fn start(
    args: &Args,
    agg: &Aggregator,
    ingest: IngestService,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<Info, StandaloneError> {
    let node = args
        .node_name
        .clone()
        .unwrap_or_else(|| host_name(&args.host.proc_root));
    if !is_dns_subdomain(&node) {
        return Err(StandaloneError::NodeName(node));
    }
    let port = agg.api_addr().map_or(0, |a| a.port());
    let url = format!("https://127.0.0.1:{port}");
    // Standalone never bootstraps a PKI: its certificate is a file.
    let ca = agg
        .identity()
        .map(|id| std::fs::canonicalize(&id.cert).unwrap_or_else(|_| id.cert.clone()))
        .unwrap_or_default();
    let path = args.write_kubeconfig.clone();
    let err = |source| StandaloneError::Kubeconfig {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(&path, kubeconfig(&url, &ca)).map_err(err)?;
    let (source, kubelet) = host_source(args);
    tracing::info!(source = source.name(), "standalone agent source");
    let metrics = Arc::new(AgentMetrics::default());
    let mut collector = Collector::new(node.clone(), source, args.metric_resolution, metrics);
    if let Some(k) = kubelet {
        collector = collector.with_pods(PodCache::new(k, args.host.pod_labels_refresh));
    }
    let mut stream = crate::ingest::StreamState::default();
    // Labels go in again only when they change, as over a stream.
    let mut labels_held: Option<u64> = None;
    tasks.spawn(collector.run(
        move |period| {
            let ack = ingest.handle(period.for_receiver(labels_held), &mut stream);
            labels_held = period.labels_version().filter(|_| ack.accepted);
            Some(period)
        },
        cancel,
    ));
    Ok(Info {
        url,
        kubeconfig: std::fs::canonicalize(&path).unwrap_or(path),
        node,
    })
}
