//! What the agent knows about the pods on its node, from the kubelet's
//! `/pods`: names and labels (for label selectors) and UIDs, container IDs
//! and start times (to map cgroups to containers). Refreshed periodically
//! and soon after an unknown pod shows up; the last good copy survives
//! kubelet errors.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::batch::PodRef;
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

/// Indexed copy of the node's pods.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_uid: HashMap<String, usize>,
    by_ref: HashMap<PodRef, usize>,
    pods: Vec<PodInfo>,
}

impl PodIndex {
    pub fn new(pods: Vec<PodInfo>) -> Self {
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
        }
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

/// The index plus its refresh policy.
pub struct PodCache {
    kubelet: KubeletSource,
    index: PodIndex,
    fetched: Option<Instant>,
    refresh: Duration,
    failing: bool,
}

impl PodCache {
    pub fn new(kubelet: KubeletSource, refresh: Duration) -> Self {
        Self {
            kubelet,
            index: PodIndex::default(),
            fetched: None,
            refresh,
            failing: false,
        }
    }

    pub fn index(&self) -> &PodIndex {
        &self.index
    }

    /// Refetches when stale, or when `unknown` (a pod or cgroup it could
    /// not place) and the last fetch is at least a few seconds old.
    pub async fn refresh(&mut self, unknown: bool) {
        let since = self.fetched.map(|t| t.elapsed());
        let stale = since.is_none_or(|d| d >= self.refresh);
        let soon = unknown && since.is_none_or(|d| d >= MIN_GAP);
        if !(stale || soon) {
            return;
        }
        self.fetched = Some(Instant::now());
        match self.kubelet.pods().await {
            Ok(pods) => {
                if self.failing {
                    tracing::info!("pod metadata from the kubelet recovered");
                }
                self.failing = false;
                self.index = PodIndex::new(pods);
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "reading pods from the kubelet failed; keeping the last known pods");
                }
                self.failing = true;
            }
        }
    }
}
