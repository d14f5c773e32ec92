//! Labels as the aggregator keeps them: each object's label map (for
//! selectors) and its rendered JSON fragment (for answers), checked and
//! built once when an agent carries them, then shared by `Arc` between the
//! stream's cache, the store and every later report that omits them
//! (`metrics_proto::labels`: labels travel only when they change).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use metrics_proto::labels::UnknownLabels;
use metrics_proto::v1::NodeReport;

/// Most labels on one object (well above what clusters use).
pub const MAX_LABELS: usize = 256;

/// One object's labels.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Labels {
    map: BTreeMap<String, String>,
    /// `,"labels":{...}` in key order, or empty without labels.
    json: String,
}

static EMPTY: LazyLock<Arc<Labels>> = LazyLock::new(|| Arc::new(Labels::default()));

fn json_str(out: &mut String, s: &str) {
    // serde_json's escaping of a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

impl Labels {
    /// Checks `labels` (count and sizes) and renders them.
    pub fn new(labels: &HashMap<String, String>) -> Result<Arc<Self>, String> {
        if labels.is_empty() {
            return Ok(Self::empty());
        }
        if labels.len() > MAX_LABELS {
            return Err(format!("{} labels exceed {MAX_LABELS}", labels.len()));
        }
        for (k, v) in labels {
            if k.is_empty() || k.len() > 317 || v.len() > 63 {
                return Err(format!("label {k:?} has an invalid key or value length"));
            }
        }
        let map: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut json = String::with_capacity(
            16 + map
                .iter()
                .map(|(k, v)| k.len() + v.len() + 6)
                .sum::<usize>(),
        );
        json.push_str(",\"labels\":{");
        for (i, (k, v)) in map.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json_str(&mut json, k);
            json.push(':');
            json_str(&mut json, v);
        }
        json.push('}');
        Ok(Arc::new(Self { map, json }))
    }

    /// No labels (one shared instance).
    pub fn empty() -> Arc<Self> {
        Arc::clone(&EMPTY)
    }

    pub fn map(&self) -> &BTreeMap<String, String> {
        &self.map
    }

    /// The `,"labels":{...}` member of a metadata object, or "".
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// A report's labels, resolved: the node's and each pod's, in the order of
/// `report.pods`.
#[derive(Debug)]
pub struct Resolved {
    pub node: Arc<Labels>,
    pub pods: Vec<Arc<Labels>>,
}

/// Why a report's labels cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error(transparent)]
    Unknown(#[from] UnknownLabels),
    #[error("node labels: {0}")]
    Node(String),
    #[error("pod {pod}: {reason}")]
    Pod { pod: String, reason: String },
}

/// Builds every label set a report carries.
pub fn carried(report: &NodeReport) -> Result<Resolved, LabelError> {
    let node = Labels::new(&report.node_labels).map_err(LabelError::Node)?;
    let pods = report
        .pods
        .iter()
        .map(|p| {
            Labels::new(&p.labels).map_err(|reason| LabelError::Pod {
                pod: format!("{}/{}", p.namespace, p.name)
                    .chars()
                    .take(128)
                    .collect(),
                reason,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Resolved { node, pods })
}

/// The labels last carried on one stream, keyed by namespace then pod name
/// (so a lookup borrows the report's names).
#[derive(Debug, Default)]
pub struct StreamLabels {
    version: u64,
    node: Arc<Labels>,
    pods: HashMap<String, HashMap<String, Arc<Labels>>>,
}

impl StreamLabels {
    /// The labels of `report`: built from it when it carries a set this
    /// stream has not seen (and remembered), else taken from the last set
    /// carried with the same `labels_version`. A report that omitted labels
    /// this stream does not know is refused.
    pub fn resolve(&mut self, report: &NodeReport) -> Result<Resolved, LabelError> {
        let known = report.labels_version != 0 && report.labels_version == self.version;
        if !report.labels_omitted && !known {
            let resolved = carried(report)?;
            if report.labels_version != 0 {
                self.version = report.labels_version;
                self.node = Arc::clone(&resolved.node);
                self.pods.clear();
                for (p, l) in report.pods.iter().zip(&resolved.pods) {
                    if !l.map.is_empty() {
                        self.pods
                            .entry(p.namespace.clone())
                            .or_default()
                            .insert(p.name.clone(), Arc::clone(l));
                    }
                }
            }
            return Ok(resolved);
        }
        if !known {
            return Err(UnknownLabels(report.labels_version).into());
        }
        let pods = report
            .pods
            .iter()
            .map(|p| {
                self.pods
                    .get(&p.namespace)
                    .and_then(|ns| ns.get(&p.name))
                    .map_or_else(Labels::empty, Arc::clone)
            })
            .collect();
        Ok(Resolved {
            node: Arc::clone(&self.node),
            pods,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_proto::v1::PodUsage;

    fn report(app: &str) -> NodeReport {
        let pod = |name: &str, labels: &[(&str, &str)]| PodUsage {
            namespace: "ns".into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..PodUsage::default()
        };
        let mut r = NodeReport {
            node_name: "n".into(),
            node_labels: [("zone".to_owned(), "z1".to_owned())].into_iter().collect(),
            pods: vec![pod("a", &[("tier", "web"), ("app", app)]), pod("b", &[])],
            ..NodeReport::default()
        };
        r.labels_version = metrics_proto::labels::version(&r);
        r
    }

    #[test]
    fn omitted_labels_are_shared_from_the_carried_set() {
        let mut cache = StreamLabels::default();
        let full = cache.resolve(&report("shop")).unwrap();
        assert_eq!(full.node.json(), r#","labels":{"zone":"z1"}"#);
        assert_eq!(
            full.pods[0].json(),
            r#","labels":{"app":"shop","tier":"web"}"#
        );
        assert_eq!(full.pods[1].json(), "");
        let mut next = report("shop");
        metrics_proto::labels::omit(&mut next);
        let again = cache.resolve(&next).unwrap();
        assert!(Arc::ptr_eq(&again.pods[0], &full.pods[0]));
        assert!(Arc::ptr_eq(&again.node, &full.node));
        assert_eq!(again.pods[1].map(), &BTreeMap::new());
        // Carried again with the same version: the shared set is reused.
        assert!(Arc::ptr_eq(
            &cache.resolve(&report("shop")).unwrap().pods[0],
            &full.pods[0]
        ));

        let mut changed = report("checkout");
        let v = changed.labels_version;
        metrics_proto::labels::omit(&mut changed);
        assert_eq!(
            cache.resolve(&changed).unwrap_err(),
            LabelError::Unknown(UnknownLabels(v))
        );
    }

    #[test]
    fn bad_labels_are_refused_and_not_remembered() {
        let mut cache = StreamLabels::default();
        let mut r = report("shop");
        r.pods[0].labels.insert("k".into(), "v".repeat(64));
        r.labels_version = metrics_proto::labels::version(&r);
        assert!(matches!(cache.resolve(&r), Err(LabelError::Pod { .. })));
        metrics_proto::labels::omit(&mut r);
        assert!(matches!(cache.resolve(&r), Err(LabelError::Unknown(_))));
    }
}
