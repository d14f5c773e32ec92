//! metrics-agent: reads one node's resource usage (from the kubelet or the
//! host's `/proc`), computes CPU rates locally with metrics-server's rules,
//! and streams a full report every period to metrics-aggregator.

pub mod args;
pub mod batch;
pub mod collect;
pub mod encoded;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod labels;
pub mod meta;
pub mod metrics;
pub mod pods;
pub mod rates;
pub mod router;
pub mod source;
pub mod ticker;
pub mod transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::args::{Args, HostArgs, SourceKind};
use crate::collect::Collector;
use crate::pods::PodCache;
use crate::source::cgroup::CgroupSource;
use crate::source::{host::HostSource, kubelet::KubeletSource, Source};
use crate::transport::Target;
use metrics_proto::tls::{self as tls, Verify};

/// CA of the cluster as mounted into every pod.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Start-up failures; the binary exits 64 on these before doing any I/O.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Args(#[from] args::ArgsError),
    #[error(transparent)]
    Tls(#[from] metrics_proto::tls::TlsError),
    #[error(transparent)]
    Kubelet(#[from] source::kubelet::KubeletError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(transparent)]
    Cgroup(#[from] source::cgroup::CgroupError),
    #[error("--source={0} maps cgroups to pods through the Kubernetes API; drop --no-api, or set --kubelet-pod-labels to read them from the kubelet's /pods instead")]
    NoPodSource(&'static str),
    #[error("{what}: no CA to verify it; set {flag} or its --*-insecure-tls flag")]
    NoCa {
        what: &'static str,
        flag: &'static str,
    },
}

fn verify<'a>(
    insecure: bool,
    ca: Option<&'a Path>,
    default_ca: Option<&'a Path>,
    what: &'static str,
    flag: &'static str,
) -> Result<Verify<'a>, SetupError> {
    match (insecure, ca.or(default_ca)) {
        (true, _) => Ok(Verify::Insecure),
        (false, Some(path)) => Ok(Verify::CaFile(path)),
        (false, None) => Err(SetupError::NoCa { what, flag }),
    }
}

/// The kubelet client the flags describe.
pub fn kubelet_source(
    args: &HostArgs,
    resolution: std::time::Duration,
) -> Result<KubeletSource, SetupError> {
    let in_cluster_ca = PathBuf::from(IN_CLUSTER_CA);
    let in_cluster_ca = in_cluster_ca.exists().then_some(in_cluster_ca.as_path());
    let url = args.kubelet_url()?;
    let tls = if url.starts_with("https://") {
        let v = verify(
            args.kubelet_insecure_tls,
            args.kubelet_certificate_authority.as_deref(),
            in_cluster_ca,
            "kubelet",
            "--kubelet-certificate-authority",
        )?;
        let identity = args
            .kubelet_client_certificate
            .as_deref()
            .zip(args.kubelet_client_key.as_deref());
        tls::client_config_with_identity(v, &[], identity)?
    } else {
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    };
    let token = Some(args.kubelet_token_file.clone());
    Ok(KubeletSource::new(
        &url,
        tls,
        token,
        args.kubelet_timeout(resolution),
    )?)
}

/// Everything the agent needs, built and checked from the flags.
pub struct Agent {
    pub collector: Collector,
    pub router: router::Router,
    pub metrics: Arc<metrics::AgentMetrics>,
    pub registry: Arc<prometheus_client::registry::Registry>,
    /// Token file sent as a bearer token on every stream.
    pub token_file: Option<Arc<metrics_proto::token::TokenFile>>,
    /// Where to reach the Kubernetes API for labels; `None`: not at all.
    pub api: Option<ApiAccess>,
    /// Pods and labels from the API, shared with the collector.
    pub known: Arc<meta::ApiPods>,
}

/// How the agent reaches the Kubernetes API.
#[derive(Debug, Clone)]
pub enum ApiAccess {
    Kubeconfig(std::path::PathBuf),
    InCluster,
}

impl Agent {
    /// Validates the flags and builds sources and targets; no network I/O.
    pub fn from_args(args: &Args) -> Result<Self, SetupError> {
        args.validate()?;
        let host = &args.host;
        let kubelet = if args.needs_kubelet() {
            Some(kubelet_source(host, args.metric_resolution)?)
        } else {
            None
        };
        let cgroup = || {
            CgroupSource::new(&host.cgroup_root, &host.proc_root)
                .map(|c| c.with_memory_stat_max_age(host.cgroup_memory_stat_interval))
        };
        let source = match (args.source, &kubelet) {
            (SourceKind::Kubelet, Some(k)) => Source::Kubelet(Box::new(k.clone())),
            (SourceKind::Cgroup, _) => Source::Cgroup(cgroup()?),
            (SourceKind::Auto, Some(k)) => Source::Auto {
                kubelet: Box::new(k.clone()),
                cgroup: cgroup()?,
                on_fallback: false,
            },
            _ => Source::Host(HostSource::new(&host.proc_root)),
        };
        let api = match (&args.kubeconfig, args.no_api) {
            (_, true) => None,
            (Some(path), false) => Some(ApiAccess::Kubeconfig(path.clone())),
            (None, false) => Some(ApiAccess::InCluster),
        };
        let known = Arc::new(meta::ApiPods::default());
        // Pods come from the agent's own watch; the kubelet's `/pods` only
        // when asked for (it needs `nodes/proxy`).
        let pods = match (&kubelet, &api) {
            (Some(k), _) if host.kubelet_pod_labels => {
                Some(PodCache::new(k.clone(), host.pod_labels_refresh))
            }
            (_, Some(_)) if source.needs_pods() => Some(PodCache::from_api(Arc::clone(&known))),
            _ if source.needs_pods() => return Err(SetupError::NoPodSource(source.name())),
            _ => None,
        };
        let tls = match (
            args.aggregator_insecure_tls,
            args.aggregator_ca_file.as_deref(),
        ) {
            (false, None) => None,
            (insecure, ca) => Some(tls::client_config(
                verify(insecure, ca, None, "aggregator", "--aggregator-ca-file")?,
                &[b"h2"],
            )?),
        };
        let mut targets = Vec::with_capacity(args.aggregators.len());
        for url in &args.aggregators {
            let target_tls = if url.starts_with("https://") {
                Some(tls.clone().ok_or(SetupError::NoCa {
                    what: "aggregator",
                    flag: "--aggregator-ca-file",
                })?)
            } else {
                tracing::warn!(aggregator = %url, "sending reports without TLS");
                None
            };
            targets.push(Target::new(url, target_tls).map_err(transport::TransportError::from)?);
        }
        let router = router::Router {
            node: args.node_name.clone(),
            period: args.metric_resolution,
            bootstrap: targets,
            tls,
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(metrics::AgentMetrics::register(&mut registry));
        let mut collector = Collector::new(
            args.node_name.clone(),
            source,
            args.metric_resolution,
            Arc::clone(&metrics),
        );
        if let Some(cache) = pods {
            collector = collector.with_pods(cache);
        }
        if api.is_some() {
            collector = collector.with_api_labels(Arc::clone(&known));
        }
        Ok(Self {
            collector,
            router,
            metrics,
            registry: Arc::new(registry),
            token_file: args
                .aggregator_token_file
                .as_deref()
                .map(|p| Arc::new(metrics_proto::token::TokenFile::new(p))),
            api,
            known,
        })
    }

    /// Runs until `cancel` fires: one collector loop and the router's
    /// senders, connected by a watch channel holding the newest report.
    /// `metrics`, when given, serves `/metrics` and `/healthz`.
    pub async fn run(self, metrics: Option<tokio::net::TcpListener>, cancel: CancellationToken) {
        let (tx, rx) = watch::channel(None);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(listener) = metrics {
            tasks.spawn(metrics::serve(
                listener,
                Arc::clone(&self.registry),
                cancel.clone(),
            ));
        }
        if let Some(access) = &self.api {
            let path = match access {
                ApiAccess::Kubeconfig(p) => Some(p.as_path()),
                ApiAccess::InCluster => None,
            };
            match metrics_proto::kubeclient::client(path).await {
                Ok(client) => {
                    tasks.spawn(meta::watch(
                        client,
                        self.collector.node_name().to_owned(),
                        Arc::clone(&self.known),
                        cancel.clone(),
                    ));
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "no Kubernetes API access: reporting without API labels, and the cgroup source cannot map pods"
                ),
            }
        }
        let (maps_tx, maps_rx) = tokio::sync::mpsc::channel(8);
        let ctx = transport::SenderCtx {
            reports: rx,
            metrics: Arc::clone(&self.metrics),
            maps: maps_tx,
            last_ack_ms: Arc::default(),
            token_file: self.token_file.clone(),
            answer_deadline: transport::answer_deadline(self.router.period),
        };
        tasks.spawn(self.router.run(ctx, maps_rx, cancel.clone()));
        // The period replaced comes back when no stream holds it any more.
        let publish = move |r| {
            tx.send_replace(Some(Arc::new(r)))
                .and_then(|old| Arc::try_unwrap(old).ok())
        };
        tasks.spawn(self.collector.run(publish, cancel.clone()));
        while tasks.join_next().await.is_some() {}
    }
}
