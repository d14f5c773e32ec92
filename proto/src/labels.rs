//! Labels are sent only when they change: a report carries a content hash
//! of all its labels, and once a stream has carried a set, later reports
//! with the same hash leave the labels out. Both ends call these functions.

use std::collections::HashMap;

use xxhash_rust::xxh3::Xxh3;

use crate::v1::NodeReport;

fn hash_map(h: &mut Xxh3, labels: &HashMap<String, String>) {
    let mut sorted: Vec<(&String, &String)> = labels.iter().collect();
    sorted.sort();
    h.update(&(sorted.len() as u64).to_le_bytes());
    for (k, v) in sorted {
        for s in [k, v] {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
    }
}

/// Content hash of the node's and every pod's labels (pods keyed by
/// namespace and name, order-independent); 0 when there are no labels.
pub fn version(report: &NodeReport) -> u64 {
    version_of(
        &report.node_labels,
        report
            .pods
            .iter()
            .map(|p| (p.namespace.as_str(), p.name.as_str(), &p.labels)),
    )
}

/// [`version`] from its parts: the node's labels and each pod's
/// (namespace, name, labels), in any order.
pub fn version_of<'a>(
    node_labels: &HashMap<String, String>,
    pods: impl IntoIterator<Item = (&'a str, &'a str, &'a HashMap<String, String>)>,
) -> u64 {
    let mut pods: Vec<_> = pods.into_iter().collect();
    if node_labels.is_empty() && pods.iter().all(|p| p.2.is_empty()) {
        return 0;
    }
    pods.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut h = Xxh3::new();
    hash_map(&mut h, node_labels);
    for (namespace, name, labels) in pods {
        for s in [namespace, name] {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        hash_map(&mut h, labels);
    }
    match h.digest() {
        0 => 1,
        v => v,
    }
}

/// Leaves out every label and marks the report so.
pub fn omit(report: &mut NodeReport) {
    report.node_labels.clear();
    for p in &mut report.pods {
        p.labels.clear();
    }
    report.labels_omitted = true;
}

/// A report omitted labels this stream never carried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("labels omitted for unknown labels_version {0:016x}; send them in full")]
pub struct UnknownLabels(pub u64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::PodUsage;

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
        NodeReport {
            node_name: "n".into(),
            node_labels: [("zone".to_owned(), "z1".to_owned())].into_iter().collect(),
            pods: vec![pod("a", &[("app", app), ("tier", "web")]), pod("b", &[])],
            ..NodeReport::default()
        }
    }

    #[test]
    fn version_follows_content_only() {
        let mut r = report("shop");
        let v = version(&r);
        assert_ne!(v, 0);
        r.pods.reverse();
        assert_eq!(version(&r), v, "pod order does not matter");
        assert_ne!(version(&report("checkout")), v);
        assert_eq!(version(&NodeReport::default()), 0);
    }
}
