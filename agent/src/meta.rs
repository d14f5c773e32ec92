//! Labels from the Kubernetes API: a metadata-only watch on the pods bound
//! to this node (`spec.nodeName` field selector) and on this node's Node
//! object. While the API is unreachable the last labels known stay in use.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio_util::sync::CancellationToken;

use crate::batch::PodRef;

type LabelMap = BTreeMap<String, String>;

/// The labels known for this node and its pods.
#[derive(Debug, Default)]
pub struct ApiLabels {
    pods: RwLock<HashMap<PodRef, LabelMap>>,
    node: RwLock<LabelMap>,
}

impl ApiLabels {
    /// Labels of one pod, if the API has told us about it.
    pub fn pod(&self, pod: &PodRef) -> Option<LabelMap> {
        self.pods.read().ok()?.get(pod).cloned()
    }

    /// Labels of the node (empty until known).
    pub fn node(&self) -> LabelMap {
        self.node.read().map(|n| n.clone()).unwrap_or_default()
    }

    fn set_pods(&self, pods: HashMap<PodRef, LabelMap>) {
        if let Ok(mut p) = self.pods.write() {
            *p = pods;
        }
    }

    fn upsert_pod(&self, meta: &ObjectMeta) {
        if let (Some(key), Ok(mut p)) = (pod_ref(meta), self.pods.write()) {
            p.insert(key, meta.labels.clone().unwrap_or_default());
        }
    }

    fn remove_pod(&self, meta: &ObjectMeta) {
        if let (Some(key), Ok(mut p)) = (pod_ref(meta), self.pods.write()) {
            p.remove(&key);
        }
    }

    fn set_node(&self, labels: LabelMap) {
        if let Ok(mut n) = self.node.write() {
            *n = labels;
        }
    }
}

fn pod_ref(meta: &ObjectMeta) -> Option<PodRef> {
    Some(PodRef {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
    })
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
                "Kubernetes API unavailable; reporting with the last labels known"
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

/// Keeps `labels` current until `cancel` fires.
pub async fn watch(
    client: kube::Client,
    node: String,
    labels: std::sync::Arc<ApiLabels>,
    cancel: CancellationToken,
) {
    let pods = watcher::watcher(
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
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
    let mut relist: Option<HashMap<PodRef, LabelMap>> = None;
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
                            if let (Some(buf), Some(key)) = (relist.as_mut(), pod_ref(&p.metadata)) {
                                buf.insert(key, p.metadata.labels.clone().unwrap_or_default());
                            }
                        }
                        Event::InitDone => {
                            if let Some(buf) = relist.take() {
                                tracing::info!(pods = buf.len(), "pod labels synced from the API");
                                labels.set_pods(buf);
                            }
                        }
                        Event::Apply(p) => labels.upsert_pod(&p.metadata),
                        Event::Delete(p) => labels.remove_pod(&p.metadata),
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
                            labels.set_node(n.metadata.labels.clone().unwrap_or_default())
                        }
                        Event::Delete(_) => labels.set_node(LabelMap::new()),
                        Event::Init | Event::InitDone => {}
                    }
                }
            },
        }
    }
}
