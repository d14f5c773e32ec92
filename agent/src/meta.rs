//! The node's pods and labels from the Kubernetes API: one watch on the pods
//! bound to this node (`spec.nodeName` field selector) and a metadata-only
//! watch on this node's Node object. Of each pod only what the agent uses
//! is decoded and kept (UID, namespace, name, labels, container names, IDs
//! and start times): enough to label pods and to map cgroups to pods
//! without the kubelet. While the API is unreachable the last pods known
//! stay in use.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio_util::sync::CancellationToken;

use crate::batch::PodRef;
use crate::pods::{PodInfo, PodWire};

type LabelMap = BTreeMap<String, String>;

/// A Pod as the watch decodes it: the metadata the watch itself needs and
/// the agent's [`PodInfo`]; nothing else of the object is held.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(from = "PodWire")]
pub struct SlimPod {
    metadata: ObjectMeta,
    pub info: PodInfo,
}

impl From<PodWire> for SlimPod {
    fn from(p: PodWire) -> Self {
        let metadata = ObjectMeta {
            name: Some(p.metadata.name.clone()),
            namespace: Some(p.metadata.namespace.clone()),
            uid: Some(p.metadata.uid.clone()),
            resource_version: p.metadata.resource_version.clone(),
            ..ObjectMeta::default()
        };
        Self {
            metadata,
            info: PodInfo::from(p),
        }
    }
}

impl k8s_openapi::Resource for SlimPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for SlimPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The pods known on this node and the node's labels.
#[derive(Debug, Default)]
pub struct ApiPods {
    pods: RwLock<HashMap<PodRef, PodInfo>>,
    node: RwLock<LabelMap>,
    /// Bumped on every change of `pods`; starts at 0 with nothing known.
    generation: AtomicU64,
}

impl ApiPods {
    /// Labels of one pod, if the API has told us about it.
    pub fn pod(&self, pod: &PodRef) -> Option<LabelMap> {
        Some(self.pods.read().ok()?.get(pod)?.labels.clone())
    }

    /// Labels of the node (empty until known).
    pub fn node(&self) -> LabelMap {
        self.node.read().map(|n| n.clone()).unwrap_or_default()
    }

    /// Every pod known, when they changed since generation `seen` (which
    /// is then moved on).
    pub fn changed_since(&self, seen: &mut u64) -> Option<Vec<PodInfo>> {
        let now = self.generation.load(Ordering::Acquire);
        if now == *seen {
            return None;
        }
        let pods = self.pods.read().ok()?;
        *seen = self.generation.load(Ordering::Acquire);
        Some(pods.values().cloned().collect())
    }

    /// Moves on with every change of the pods or the node's labels: what
    /// was read from this store stays valid while it is the same.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn set_pods(&self, pods: HashMap<PodRef, PodInfo>) {
        if let Ok(mut p) = self.pods.write() {
            *p = pods;
            self.changed();
        }
    }

    fn upsert_pod(&self, info: PodInfo) {
        if let Ok(mut p) = self.pods.write() {
            if p.get(&info.pod) != Some(&info) {
                p.insert(info.pod.clone(), info);
                self.changed();
            }
        }
    }

    fn remove_pod(&self, pod: &PodRef) {
        if let Ok(mut p) = self.pods.write() {
            if p.remove(pod).is_some() {
                self.changed();
            }
        }
    }

    fn set_node(&self, labels: LabelMap) {
        if let Ok(mut n) = self.node.write() {
            if *n != labels {
                *n = labels;
                self.changed();
            }
        }
    }

    /// Stores `pods` as if listed by the watch (tests and tools).
    pub fn replace(&self, pods: Vec<PodInfo>) {
        self.set_pods(pods.into_iter().map(|p| (p.pod.clone(), p)).collect());
    }
}

/// Logs an outage once and the recovery once.
struct Outage {
    what: &'static str,
    down: bool,
}

impl Outage {
    fn failed(&mut self, e: &watcher::Error) {
        if !self.down {
            tracing::warn!(
                watch = self.what,
                error = %e,
                "Kubernetes API unavailable; reporting with the last pods and labels known"
            );
        }
        self.down = true;
    }

    fn ok(&mut self) {
        if self.down {
            tracing::info!(watch = self.what, "Kubernetes API reachable again");
        }
        self.down = false;
    }
}

/// Keeps `known` current until `cancel` fires.
pub async fn watch(
    client: kube::Client,
    node: String,
    known: std::sync::Arc<ApiPods>,
    cancel: CancellationToken,
) {
    let pods = watcher::watcher(
        Api::<SlimPod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    )
    .default_backoff();
    let nodes = watcher::watcher(
        Api::<PartialObjectMeta<Node>>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
    )
    .default_backoff();
    futures::pin_mut!(pods, nodes);
    let mut pod_outage = Outage {
        what: "pods",
        down: false,
    };
    let mut node_outage = Outage {
        what: "node",
        down: false,
    };
    // Pods listed since the current (re)list began; swapped in when it ends
    // so pods deleted while disconnected disappear.
    let mut relist: Option<HashMap<PodRef, PodInfo>> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            ev = pods.next() => match ev {
                None => return,
                Some(Err(e)) => pod_outage.failed(&e),
                Some(Ok(ev)) => {
                    pod_outage.ok();
                    match ev {
                        Event::Init => relist = Some(HashMap::new()),
                        Event::InitApply(p) => {
                            if let Some(buf) = relist.as_mut() {
                                buf.insert(p.info.pod.clone(), p.info);
                            }
                        }
                        Event::InitDone => {
                            if let Some(buf) = relist.take() {
                                tracing::info!(pods = buf.len(), "pods of this node synced from the API");
                                known.set_pods(buf);
                            }
                        }
                        Event::Apply(p) => known.upsert_pod(p.info),
                        Event::Delete(p) => known.remove_pod(&p.info.pod),
                    }
                }
            },
            ev = nodes.next() => match ev {
                None => return,
                Some(Err(e)) => node_outage.failed(&e),
                Some(Ok(ev)) => {
                    node_outage.ok();
                    match ev {
                        Event::InitApply(n) | Event::Apply(n) => {
                            known.set_node(n.metadata.labels.clone().unwrap_or_default())
                        }
                        Event::Delete(_) => known.set_node(LabelMap::new()),
                        Event::Init | Event::InitDone => {}
                    }
                }
            },
        }
    }
}
