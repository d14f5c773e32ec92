//! One pod claimed by two nodes: which claim is true.
//!
//! A node's stream may report any pod, so a compromised node could shadow
//! a pod running elsewhere (and steer its HPA). Holding every pod object of
//! the cluster on every replica to check each claim would cost what the
//! sharding saves, so a claim is checked only when it conflicts: when one
//! answer holds copies of the same pod from two different nodes, the pod's
//! `spec.nodeName` is read from the API and only that node's copy is kept
//! (none when the pod does not exist or is not scheduled). Verdicts are
//! kept for [`VERDICT_TTL`], so a conflict costs one GET per pod per TTL,
//! whatever the query rate. Without an API client (anonymous or standalone
//! mode) claims are not checked and the freshest copy wins.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::query::Hit;

/// How long the API's answer about a pod's node is trusted.
pub const VERDICT_TTL: Duration = Duration::from_secs(30);
/// Verdicts held at most; past it the cache starts over.
const MAX_VERDICTS: usize = 10_000;
/// Pods looked up for one answer at most; conflicts beyond stay unchecked
/// (freshest copy) until a later answer checks them.
const MAX_LOOKUPS: usize = 64;
/// Lookups in flight for one answer.
const CONCURRENCY: usize = 8;
/// How long one answer waits for its lookups.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The API's word on where a pod runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Scheduled on this node.
    On(String),
    /// No such pod, or not scheduled: no node's claim is true.
    Nowhere,
}

type Key = (String, String);
type Results = Family<[(&'static str, &'static str); 1], Counter>;

/// Checks conflicting claims against the API; see the module doc.
pub struct PodClaims {
    client: Option<kube::Client>,
    verdicts: Mutex<HashMap<Key, (Verdict, Instant)>>,
    /// Conflicts by result: `confirmed` (one claim kept), `refused` (copies
    /// dropped), `unverified` (no verdict: freshest copy kept).
    results: Results,
    log: metrics_proto::runtime::LogThrottle,
}

impl PodClaims {
    /// Claims checked through `client` (none: not checked), counted in
    /// `registry`.
    pub fn new(client: Option<kube::Client>, registry: &mut Registry) -> Self {
        let results = Results::default();
        registry
            .sub_registry_with_prefix("metrics_aggregator")
            .register(
                "pod_claims",
                "Copies of a pod from different nodes in one answer, by result (confirmed: the API named one of them; refused: a copy from a node the pod does not run on was dropped; unverified: no API answer, freshest kept)",
                results.clone(),
            );
        Self {
            client,
            verdicts: Mutex::default(),
            results,
            log: metrics_proto::runtime::LogThrottle::new(Duration::from_secs(60)),
        }
    }

    /// Keeps, of `hits` (sorted by namespace and name), only the copies of
    /// each conflicting pod that come from the node the API names. Pods
    /// reported by one node alone cost nothing here.
    pub async fn settle(&self, hits: &mut Vec<Hit>) {
        let conflicts = conflicts(hits);
        if conflicts.is_empty() {
            return;
        }
        let verdicts = self.verdicts(&conflicts).await;
        // Conflicts are in the hits' order, so one cursor walks both and no
        // key is built per hit.
        let aligned: Vec<(&Key, Option<&Verdict>)> =
            conflicts.iter().map(|k| (k, verdicts.get(k))).collect();
        let mut cursor = 0;
        let mut refused = 0usize;
        let mut example = None;
        hits.retain(|h| {
            let key = (h.namespace.as_str(), h.name.as_str());
            while aligned
                .get(cursor)
                .is_some_and(|(k, _)| (k.0.as_str(), k.1.as_str()) < key)
            {
                cursor += 1;
            }
            let verdict = aligned
                .get(cursor)
                .filter(|(k, _)| (k.0.as_str(), k.1.as_str()) == key)
                .and_then(|(_, v)| *v);
            let keep = match verdict {
                Some(Verdict::On(node)) => &h.node == node,
                Some(Verdict::Nowhere) => false,
                None => true,
            };
            if !keep {
                refused += 1;
                example.get_or_insert_with(|| {
                    format!("{}/{} from node {:?}", h.namespace, h.name, h.node)
                });
            }
            keep
        });
        let confirmed = conflicts.len().min(verdicts.len());
        self.count("confirmed", confirmed);
        self.count("unverified", conflicts.len() - confirmed);
        self.count("refused", refused);
        if let Some(example) = example.filter(|_| self.log.ready()) {
            tracing::warn!(
                dropped = refused,
                example = %example,
                "pods reported by nodes they do not run on were left out of an answer"
            );
        }
    }

    fn count(&self, result: &'static str, n: usize) {
        if n > 0 {
            self.results
                .get_or_create(&[("result", result)])
                .inc_by(n as u64);
        }
    }

    /// Verdicts for `keys`: cached ones, then fresh lookups (bounded in
    /// number and time). Keys with no verdict are left out.
    async fn verdicts(&self, keys: &[Key]) -> HashMap<Key, Verdict> {
        let now = Instant::now();
        let mut out = HashMap::new();
        let mut unknown = Vec::new();
        if let Ok(cache) = self.verdicts.lock() {
            for k in keys {
                match cache.get(k) {
                    Some((v, at)) if now.duration_since(*at) < VERDICT_TTL => {
                        out.insert(k.clone(), v.clone());
                    }
                    _ => unknown.push(k.clone()),
                }
            }
        }
        let Some(client) = &self.client else {
            return out;
        };
        if unknown.is_empty() {
            return out;
        }
        unknown.truncate(MAX_LOOKUPS);
        let looked = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            futures::stream::iter(unknown)
                .map(|k| async move {
                    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &k.0);
                    let v = match api.get_opt(&k.1).await {
                        Ok(Some(pod)) => Some(
                            match pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()) {
                                Some(node) => Verdict::On(node),
                                None => Verdict::Nowhere,
                            },
                        ),
                        Ok(None) => Some(Verdict::Nowhere),
                        Err(e) => {
                            tracing::debug!(pod = %format!("{}/{}", k.0, k.1), error = %e, "pod lookup failed");
                            None
                        }
                    };
                    (k, v)
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap_or_default();
        if let Ok(mut cache) = self.verdicts.lock() {
            if cache.len() + looked.len() > MAX_VERDICTS {
                cache.clear();
            }
            for (k, v) in looked {
                if let Some(v) = v {
                    cache.insert(k.clone(), (v.clone(), now));
                    out.insert(k, v);
                }
            }
        }
        out
    }
}

/// Pods of `hits` (sorted by namespace and name) that more than one node
/// claims.
fn conflicts(hits: &[Hit]) -> Vec<Key> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < hits.len() {
        let (ns, name) = (&hits[i].namespace, &hits[i].name);
        let mut j = i + 1;
        let mut distinct = false;
        while j < hits.len() && &hits[j].namespace == ns && &hits[j].name == name {
            distinct |= hits[j].node != hits[i].node;
            j += 1;
        }
        if distinct && !ns.is_empty() {
            out.push((ns.clone(), name.clone()));
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Rendered;

    fn hit(ns: &str, name: &str, node: &str, ts: i64) -> Hit {
        Hit {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            timestamp_ns: ts,
            rendered: Rendered::from_parts("{", "}"),
            pb: None,
        }
    }

    #[test]
    fn only_pods_of_two_nodes_conflict() {
        let hits = vec![
            hit("a", "p", "n1", 2),
            hit("a", "p", "n1", 1),
            hit("a", "q", "n1", 2),
            hit("a", "q", "n2", 1),
            hit("b", "q", "n3", 1),
        ];
        assert_eq!(conflicts(&hits), [("a".to_owned(), "q".to_owned())]);
    }

    #[tokio::test]
    async fn without_a_client_the_freshest_stays() {
        let claims = PodClaims::new(None, &mut Registry::default());
        let mut hits = vec![hit("a", "q", "n1", 2), hit("a", "q", "n2", 1)];
        claims.settle(&mut hits).await;
        assert_eq!(hits.len(), 2, "nothing dropped without a verdict");
    }

    #[tokio::test]
    async fn cached_verdicts_keep_the_true_claim() {
        let claims = PodClaims::new(None, &mut Registry::default());
        claims.verdicts.lock().unwrap().extend([
            (
                ("a".to_owned(), "q".to_owned()),
                (Verdict::On("n2".into()), Instant::now()),
            ),
            (
                ("a".to_owned(), "gone".to_owned()),
                (Verdict::Nowhere, Instant::now()),
            ),
        ]);
        let mut hits = vec![
            hit("a", "gone", "n1", 3),
            hit("a", "gone", "n2", 2),
            hit("a", "q", "n1", 9),
            hit("a", "q", "n2", 1),
            hit("a", "r", "n1", 1),
        ];
        claims.settle(&mut hits).await;
        let kept: Vec<_> = hits
            .iter()
            .map(|h| (h.name.as_str(), h.node.as_str()))
            .collect();
        assert_eq!(kept, [("q", "n2"), ("r", "n1")]);
    }
}
