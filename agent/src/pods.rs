//! What the agent knows about the pods on its node: names and labels (for
//! label selectors) and UIDs, container IDs and start times (to map cgroups
//! to containers). It comes from the agent's own watch on the API (the
//! default: `meta.rs`) or, when asked for, from the kubelet's `/pods`,
//! refreshed periodically and soon after an unknown pod shows up. Either
//! way the last good copy survives errors.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::batch::PodRef;
use crate::meta::ApiPods;
use crate::source::cgroup::layout::status_container_id;
use crate::source::kubelet::KubeletSource;

/// Fastest refetch when an unknown pod appears.
const MIN_GAP: Duration = Duration::from_secs(5);

/// One container of a pod, from its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Runtime ID without the `containerd://` scheme.
    pub id: String,
    pub name: String,
    /// When it started running, ns since the epoch.
    pub started_ns: Option<i64>,
}

/// One pod bound to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub pod: PodRef,
    pub labels: BTreeMap<String, String>,
    pub containers: Vec<ContainerInfo>,
}

impl PodInfo {
    /// The container with runtime ID `id`.
    pub fn container(&self, id: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.id == id)
    }
}

/// The fields of a core/v1 Pod the agent reads, in its JSON form; every
/// other field is skipped while decoding, never held.
#[derive(serde::Deserialize)]
pub struct PodWire {
    pub metadata: PodMetaWire,
    #[serde(default)]
    status: PodStatusWire,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMetaWire {
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resource_version: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatusWire {
    #[serde(default)]
    container_statuses: Vec<ContainerStatusWire>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatusWire>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatusWire {
    name: String,
    #[serde(rename = "containerID")]
    container_id: Option<String>,
    state: Option<ContainerStateWire>,
}

#[derive(serde::Deserialize)]
struct ContainerStateWire {
    running: Option<RunningWire>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunningWire {
    started_at: Option<String>,
}

impl From<PodWire> for PodInfo {
    fn from(p: PodWire) -> Self {
        let statuses = p
            .status
            .container_statuses
            .into_iter()
            .chain(p.status.init_container_statuses);
        PodInfo {
            uid: p.metadata.uid,
            pod: PodRef {
                namespace: p.metadata.namespace.into(),
                name: p.metadata.name.into(),
            },
            labels: p.metadata.labels,
            containers: statuses
                .filter_map(|c| {
                    let id = status_container_id(c.container_id.as_deref()?)?.to_owned();
                    let started_ns = c
                        .state
                        .and_then(|s| s.running)
                        .and_then(|r| r.started_at)
                        .and_then(|t| metrics_proto::time::parse_rfc3339(&t));
                    Some(ContainerInfo {
                        id,
                        name: c.name,
                        started_ns,
                    })
                })
                .collect(),
        }
    }
}

/// Indexed copy of the node's pods.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_uid: HashMap<String, usize>,
    by_ref: HashMap<PodRef, usize>,
    pods: Vec<PodInfo>,
    version: u64,
}

/// The version the next index gets (0 is the empty default's).
static NEXT_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl PodIndex {
    pub fn new(pods: Vec<PodInfo>) -> Self {
        let version = NEXT_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let by_uid = pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.uid.clone(), i))
            .collect();
        let by_ref = pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.pod.clone(), i))
            .collect();
        Self {
            by_uid,
            by_ref,
            pods,
            version,
        }
    }

    /// Differs between any two indexes built in this process: what was
    /// derived from one index stays valid while the version is the same.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every pod indexed.
    pub fn pods(&self) -> &[PodInfo] {
        &self.pods
    }

    pub fn by_uid(&self, uid: &str) -> Option<&PodInfo> {
        self.by_uid.get(uid).map(|&i| &self.pods[i])
    }

    pub fn labels(&self, pod: &PodRef) -> Option<&BTreeMap<String, String>> {
        self.by_ref.get(pod).map(|&i| &self.pods[i].labels)
    }

    pub fn knows(&self, pod: &PodRef) -> bool {
        self.by_ref.contains_key(pod)
    }
}

/// Where the pods come from.
enum Origin {
    /// The agent's watch on the API; `seen` is the generation indexed.
    Api { pods: Arc<ApiPods>, seen: u64 },
    /// The kubelet's `/pods`, fetched again every `refresh`.
    Kubelet {
        kubelet: Box<KubeletSource>,
        fetched: Option<Instant>,
        refresh: Duration,
        failing: bool,
    },
}

/// The index plus where it is refreshed from.
pub struct PodCache {
    origin: Origin,
    index: PodIndex,
}

impl PodCache {
    /// Pods from the kubelet's `/pods` (needs `nodes/proxy`).
    pub fn new(kubelet: KubeletSource, refresh: Duration) -> Self {
        Self {
            origin: Origin::Kubelet {
                kubelet: Box::new(kubelet),
                fetched: None,
                refresh,
                failing: false,
            },
            index: PodIndex::default(),
        }
    }

    /// Pods from the agent's own watch on the API.
    pub fn from_api(pods: Arc<ApiPods>) -> Self {
        Self {
            origin: Origin::Api { pods, seen: 0 },
            index: PodIndex::default(),
        }
    }

    /// True when the pods come from the agent's watch on the API.
    pub fn from_api_watch(&self) -> bool {
        matches!(self.origin, Origin::Api { .. })
    }

    pub fn index(&self) -> &PodIndex {
        &self.index
    }

    /// Brings the index up to date. From the API: when the watch has seen a
    /// change. From the kubelet: when stale, or when `unknown` (a pod or
    /// cgroup it could not place) and the last fetch is at least a few
    /// seconds old.
    pub async fn refresh(&mut self, unknown: bool) {
        match &mut self.origin {
            Origin::Api { pods, seen } => {
                if let Some(list) = pods.changed_since(seen) {
                    self.index = PodIndex::new(list);
                }
            }
            Origin::Kubelet {
                kubelet,
                fetched,
                refresh,
                failing,
            } => {
                let since = fetched.map(|t| t.elapsed());
                let stale = since.is_none_or(|d| d >= *refresh);
                let soon = unknown && since.is_none_or(|d| d >= MIN_GAP);
                if !(stale || soon) {
                    return;
                }
                *fetched = Some(Instant::now());
                match kubelet.pods().await {
                    Ok(pods) => {
                        if *failing {
                            tracing::info!("pod metadata from the kubelet recovered");
                        }
                        *failing = false;
                        self.index = PodIndex::new(pods);
                    }
                    Err(e) => {
                        if !*failing {
                            tracing::warn!(error = %e, "reading pods from the kubelet failed; keeping the last known pods");
                        }
                        *failing = true;
                    }
                }
            }
        }
    }
}
