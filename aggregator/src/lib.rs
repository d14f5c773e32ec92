//! metrics-aggregator: receives node reports from metrics-agents over gRPC,
//! keeps the latest per node, and serves them as metrics.k8s.io/v1beta1.

pub mod ack_pace;
pub mod api;
pub mod args;
pub mod auth;
pub mod claims;
pub mod cluster;
pub mod files;
pub mod format;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc_conn;
pub mod grpc_port;
pub mod index;
pub mod ingest;
pub mod ingest_wire;
pub mod labelset;
pub mod membership;
pub mod metrics;
pub mod query;
pub mod read_idle;
pub mod render;
pub mod render_pb;
pub mod report;
pub mod report_decode;
pub mod server;
pub mod shard;
pub mod split;
pub mod standalone;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::args::Args;
use crate::ingest::IngestService;
use crate::store::Store;

/// Failures before serving starts.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Args(#[from] args::ArgsError),
    #[error(transparent)]
    Serving(#[from] tls::ServingError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Standalone(#[from] standalone::StandaloneError),
    #[error("peer TLS: {0}")]
    PeerTls(#[from] metrics_proto::tls::TlsError),
    #[error(transparent)]
    PeerUrl(#[from] metrics_proto::channel::UrlError),
    #[error(transparent)]
    PeersFile(#[from] shard::PeersFileError),
    #[error(transparent)]
    Auth(#[from] auth::setup::SetupError),
    #[error("Kubernetes client: {0}")]
    KubeClient(#[from] metrics_proto::kubeclient::KubeClientError),
    #[error("certificates through the Kubernetes API (--pki): {0}")]
    Pki(#[from] tls::pki::PkiError),
}

impl StartError {
    /// True for configuration mistakes (exit 64), false for runtime failures.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Args(_)
                | StartError::Serving(_)
                | StartError::PeerTls(_)
                | StartError::PeerUrl(_)
                | StartError::Auth(_)
                | StartError::KubeClient(_)
        )
    }
}

/// A bound, not yet running aggregator.
pub struct Aggregator {
    args: Args,
    api: TcpListener,
    grpc: TcpListener,
    /// Certificate files, unless the certificate comes from the PKI.
    identity: Option<tls::Identity>,
    cert: Arc<tls::ReloadingCert>,
    pki: Option<tls::bootstrap::Pki>,
    /// The names of the generated self-signed certificate, renewed while running.
    self_signed_names: Option<Vec<String>>,
    delegated: Option<auth::setup::Delegated>,
    /// Client and Service for EndpointSlice membership.
    membership: Option<(kube::Client, membership::HeadlessService)>,
    /// Client for checking pods claimed by two nodes.
    claims_client: Option<kube::Client>,
    store: Arc<Store>,
    shard: Option<shard::SharedShard>,
    /// Fired when shutdown starts (see [`Aggregator::draining`]).
    draining: CancellationToken,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Aggregator {
    /// Validates flags, prepares the certificate, binds both ports.
    pub async fn bind(mut args: Args) -> Result<Self, StartError> {
        args.validate()?;
        let mut self_signed_names = None;
        let (identity, cert, pki) = match args.cert_source() {
            args::CertSource::Kubernetes => {
                let client =
                    metrics_proto::kubeclient::client(args.auth.kubeconfig.as_deref()).await?;
                let pki = tls::bootstrap::Pki::start(client, pki_settings(&args)).await?;
                (None, pki.cert(), Some(pki))
            }
            args::CertSource::Files | args::CertSource::SelfSigned => {
                let mut names = vec![
                    "localhost".to_owned(),
                    "127.0.0.1".to_owned(),
                    "::1".to_owned(),
                ];
                names.extend(args.tls_sans.iter().cloned());
                let identity = tls::identity(
                    args.tls_cert_file.as_deref(),
                    args.tls_private_key_file.as_deref(),
                    &args.cert_dir,
                    &names,
                )?;
                if args.tls_cert_file.is_none() {
                    self_signed_names = Some(names);
                }
                // Fails on a bad key pair before binding.
                let cert = tls::ReloadingCert::new(&identity)?;
                (Some(identity), cert, None)
            }
        };
        let delegated = if args.insecure_allow_anonymous {
            None
        } else {
            Some(auth::setup::setup(&args.auth).await?)
        };
        let members = match &args.peers_file {
            Some(path) => Some(shard::read_peers_file(path)?),
            None if !args.peers.is_empty() => Some(
                args.peers
                    .iter()
                    .map(|p| (p.id.clone(), p.url.clone()))
                    .collect(),
            ),
            None if args.peers_service.is_some() => Some(Vec::new()),
            None => None,
        };
        let membership = match args.peer_service() {
            Some(svc) => Some((
                metrics_proto::kubeclient::client(args.auth.kubeconfig.as_deref()).await?,
                svc,
            )),
            None => None,
        };
        // Claims are checked wherever there is an API to ask: with
        // delegated auth (in a cluster) or a kubeconfig, never standalone.
        let claims_client = if !args.standalone
            && (!args.insecure_allow_anonymous || args.auth.kubeconfig.is_some())
        {
            Some(metrics_proto::kubeclient::client(args.auth.kubeconfig.as_deref()).await?)
        } else {
            None
        };
        let shard = members.map(|m| {
            shard::SharedShard::new(shard::Shard::new(
                args.shard_id(),
                m,
                args.replication_factor,
            ))
        });
        let api = bind(SocketAddr::new(args.bind_address, args.api_port())).await?;
        let grpc = bind(SocketAddr::new(args.bind_address, args.ingest_port())).await?;
        Ok(Self {
            args,
            api,
            grpc,
            identity,
            cert,
            pki,
            self_signed_names,
            delegated,
            membership,
            claims_client,
            store: Arc::new(Store::new()),
            shard,
            draining: CancellationToken::new(),
        })
    }

    /// Cancel to start shutting down: readiness fails at once (so
    /// endpoints drop this replica) while everything keeps serving until
    /// the token given to [`run`](Self::run) fires.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Address of the HTTPS API.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.local_addr().ok()
    }

    /// Address of the gRPC ingest port.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    /// The serving certificate files in use (none when the certificate
    /// comes from the PKI).
    pub fn identity(&self) -> Option<&tls::Identity> {
        self.identity.as_ref()
    }

    /// The cluster from `--peers`, or a cluster of one.
    fn cluster(
        &self,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<cluster::Cluster, StartError> {
        let a = &self.args;
        let Some(shard) = &self.shard else {
            return Ok(cluster::Cluster::single(Arc::clone(&self.store)));
        };
        let ca = a
            .peer_ca_file
            .clone()
            .or_else(|| self.identity.as_ref().map(|i| i.cert.clone()));
        let verify = match (&ca, &self.pki) {
            _ if a.peer_insecure_tls => metrics_proto::tls::Verify::Insecure,
            (Some(ca), _) => metrics_proto::tls::Verify::CaFile(ca),
            (None, Some(pki)) => metrics_proto::tls::Verify::Roots(pki.roots()),
            (None, None) => {
                return Err(StartError::PeerTls(
                    metrics_proto::tls::TlsError::NoCertificate {
                        path: "--peer-ca-file".into(),
                    },
                ))
            }
        };
        let tls = metrics_proto::tls::client_config(verify, &[b"h2", metrics_proto::PEER_ALPN])?;
        Ok(cluster::Cluster::new(
            shard.clone(),
            Some(tls),
            a.peer_timeout,
            Arc::clone(&self.store),
            registry,
        )
        .with_token_file(a.auth.peer_token_file.as_deref())
        .with_max_missing_share(a.max_missing_share))
    }

    /// Serves until `cancel` fires, then drains.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), StartError> {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(metrics::AggregatorMetrics::register(&mut registry));
        let compat = Arc::new(metrics::ServerCompatMetrics::register(&mut registry));
        let mut ingest = IngestService::new(
            Arc::clone(&self.store),
            Arc::clone(&metrics),
            self.args.node_expiry_periods,
            cancel.clone(),
        );
        let budget = self.args.budget();
        tracing::info!(
            max_bytes = budget.max_bytes,
            max_pods = budget.max_pods,
            max_node_bytes = budget.max_node_bytes,
            "store budget"
        );
        ingest = ingest
            .with_budget(budget)
            .with_swap(self.args.extra_resources.iter().any(|r| r == "swap"));
        if let Some(shard) = &self.shard {
            ingest = ingest.with_shard(shard.clone());
        }
        let auth = self.delegated.as_ref().map(|d| Arc::clone(&d.auth));
        if let Some(d) = &self.delegated {
            ingest = ingest.with_agent_auth(
                Arc::clone(&d.agents),
                self.args.auth.agent_token_recheck_interval,
            );
        }
        let policy = tls::policy::TlsPolicy::parse(
            self.args.tls_min_version.as_deref(),
            &self.args.tls_cipher_suites,
        )
        .map_err(tls::ServingError::from)?;
        let api_tls = tls::server_config(
            &policy,
            Arc::clone(&self.cert),
            &[b"h2", b"http/1.1"],
            auth.is_some(),
        )?;
        let grpc_tls = tls::server_config(&policy, Arc::clone(&self.cert), &[b"h2"], false)?;
        let claims = claims::PodClaims::new(self.claims_client.clone(), &mut registry);
        let cluster = Arc::new(self.cluster(&mut registry)?.with_claims(claims));
        let app = api::router(
            api::AppState {
                store: Arc::clone(&self.store),
                cluster,
                metrics: Arc::clone(&metrics),
                compat,
                registry: Arc::new(registry),
                draining: self.draining.clone(),
                watches: api::watch::Watches::new(
                    api::watch::WatchConfig {
                        poll: self.args.watch_poll_interval,
                        bookmark_every: self.args.watch_bookmark_interval,
                        stall: self.args.watch_stall_timeout,
                        max_watches: self.args.max_watches,
                        min_request_timeout: self.args.min_request_timeout,
                        horizon: metrics_proto::MAX_PERIOD * self.args.node_expiry_periods,
                    },
                    Arc::clone(&metrics),
                ),
            },
            auth,
            self.args.max_requests_inflight,
            self.args
                .standalone
                .then(|| api::core::HostCapacity::read(&self.args.host.proc_root)),
        );
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(id) = &self.identity {
            tasks.spawn(Arc::clone(&self.cert).watch(
                id.clone(),
                self.args.tls_reload_interval,
                cancel.clone(),
            ));
        }
        if let (Some(id), Some(names)) = (&self.identity, self.self_signed_names.take()) {
            tasks.spawn(tls::renew_self_signed(
                id.clone(),
                names,
                Duration::from_secs(3600),
                cancel.clone(),
            ));
        }
        if let Some(pki) = self.pki.take() {
            tasks.spawn(pki.run(cancel.clone()));
        }
        if let Some(d) = &self.delegated {
            if d.config.needs_configmap() {
                tasks.spawn(
                    Arc::clone(&d.config).watch_configmap(d.authn_client.clone(), cancel.clone()),
                );
            }
            tasks.spawn(
                Arc::clone(&d.config).watch_files(self.args.tls_reload_interval, cancel.clone()),
            );
        }
        tasks.spawn(Arc::clone(&self.store).sweep_loop(Duration::from_secs(5), cancel.clone()));
        if let (Some(path), Some(shard)) = (&self.args.peers_file, &self.shard) {
            tasks.spawn(shard::watch_peers_file(
                path.clone(),
                shard.clone(),
                Duration::from_secs(2),
                cancel.clone(),
            ));
        }
        if let (Some((client, svc)), Some(shard)) = (&self.membership, &self.shard) {
            tasks.spawn(membership::watch(
                client.clone(),
                svc.clone(),
                shard.clone(),
                cancel.clone(),
            ));
        }
        if self.args.standalone {
            let info = standalone::start(
                &self.args,
                &self,
                ingest.clone(),
                cancel.clone(),
                &mut tasks,
            )?;
            println!("{info}");
        }
        let limits = |ingest: bool| server::ConnLimits {
            max_connections: match self.args.max_connections {
                0 => server::default_max_connections(ingest),
                n => n,
            },
            max_handshakes: server::MAX_HANDSHAKES,
            read_idle: self.args.idle_connection_timeout,
        };
        let http = server::HttpLimits {
            h2_max_streams: match self.args.http2_max_streams_per_connection {
                0 => 250,
                n => n,
            },
        };
        tasks.spawn(server::serve_https(
            self.api,
            api_tls,
            limits(false),
            http,
            Arc::clone(&metrics),
            app,
            cancel.clone(),
        ));
        let mut peer =
            cluster::PeerService::new(Arc::clone(&self.store)).with_shard(self.shard.clone());
        if let Some(d) = &self.delegated {
            peer = peer.with_auth(Arc::clone(&d.peers));
        }
        // Agents' sockets cross to the ingest lane; peers' stay here.
        let (handoffs, handed) = tokio::sync::mpsc::channel(256);
        let grpc_limits = limits(true);
        let read_idle = grpc_limits.read_idle;
        let peers_incoming = grpc_port::accept(
            self.grpc,
            Arc::clone(&grpc_tls),
            grpc_limits,
            metrics,
            cancel.clone(),
            handoffs,
        );
        tasks.spawn(grpc_conn::serve(
            peers_incoming,
            ingest.clone(),
            peer.clone(),
            cancel.clone(),
        ));
        let lane = grpc_port::IngestLane {
            threads: self.args.ingest_threads,
            batch_delay: self.args.ingest_batch_delay,
        };
        let lane_cancel = cancel.clone();
        let failed = cancel.clone();
        tasks.spawn(async move {
            let served = grpc_port::run_ingest_lane(lane, move |handshaking| async move {
                let incoming = grpc_port::adopt(
                    handed,
                    grpc_tls,
                    read_idle,
                    handshaking,
                    lane_cancel.clone(),
                );
                grpc_conn::serve(incoming, ingest, peer, lane_cancel).await;
            });
            if let Err(e) = served.await {
                tracing::error!(error = %e, "the ingest lane's runtime could not start");
                failed.cancel();
            }
        });
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// The bootstrapped PKI's objects, lifetimes and this replica's names:
/// the Service's DNS names, the replica's stable peer name, its Pod IP.
fn pki_settings(args: &Args) -> tls::bootstrap::Settings {
    let p = &args.pki_args;
    let (svc, ns) = (&p.pki_service, &p.pki_namespace);
    let mut names = vec![
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}"),
        svc.clone(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(peers) = args.peer_service() {
        names.push(format!(
            "{}.{}.{}.svc",
            args.shard_id(),
            peers.name,
            peers.namespace
        ));
    }
    if let Ok(ip) = std::env::var("POD_IP") {
        if ip.parse::<std::net::IpAddr>().is_ok() {
            names.push(ip);
        }
    }
    names.extend(args.tls_sans.iter().cloned());
    names.dedup();
    tls::bootstrap::Settings {
        namespace: ns.clone(),
        secret: p.pki_secret.clone(),
        configmap: p.pki_configmap.clone(),
        apiservice: (!p.pki_apiservice.is_empty()).then(|| p.pki_apiservice.clone()),
        names,
        ca_validity: p.pki_ca_validity,
        cert_validity: p.pki_cert_validity,
        propagation: p.pki_ca_propagation,
    }
}
