//! One query shape for every answer: local (this replica's store), remote
//! (a peer's `Query` RPC), and the merge of both.

use std::time::Instant;

use metrics_proto::v1::query_request::Kind as WireKind;
use metrics_proto::v1::{QueryRequest, RenderedObject};

use crate::api::selector::{FieldSelector, LabelSelector, SelectorError};
use crate::render::Rendered;
use crate::store::Store;

/// Which resource a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nodes,
    Pods,
}

/// A parsed query with the raw selector texts kept for peers.
#[derive(Debug, Clone)]
pub struct Query {
    pub kind: Kind,
    /// Pods only: one namespace.
    pub namespace: Option<String>,
    /// One object's name.
    pub name: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    raw_labels: String,
    raw_fields: String,
}

/// One object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// "" for nodes.
    pub namespace: String,
    pub name: String,
    /// Sample time, ns since the epoch.
    pub timestamp_ns: i64,
    pub rendered: Rendered,
}

impl Query {
    /// Parses the selectors; `label_selector`/`field_selector` are the raw
    /// query values.
    pub fn new(
        kind: Kind,
        namespace: Option<String>,
        name: Option<String>,
        label_selector: &str,
        field_selector: &str,
    ) -> Result<Self, SelectorError> {
        Ok(Self {
            kind,
            namespace,
            name,
            labels: LabelSelector::parse(label_selector)?,
            fields: FieldSelector::parse(field_selector)?,
            raw_labels: label_selector.to_owned(),
            raw_fields: field_selector.to_owned(),
        })
    }

    /// Whether the index bounds this query's work (a namespace or one
    /// object), so it runs inline; lists across the cluster run on
    /// blocking threads.
    pub fn is_indexed(&self) -> bool {
        self.namespace.is_some() || self.name.is_some()
    }

    /// The same query for a peer.
    pub fn to_request(&self) -> QueryRequest {
        QueryRequest {
            kind: match self.kind {
                Kind::Nodes => WireKind::Nodes,
                Kind::Pods => WireKind::Pods,
            } as i32,
            namespace: self.namespace.clone().unwrap_or_default(),
            name: self.name.clone().unwrap_or_default(),
            label_selector: self.raw_labels.clone(),
            field_selector: self.raw_fields.clone(),
        }
    }

    /// A peer's request as a query.
    pub fn from_request(r: &QueryRequest) -> Result<Self, SelectorError> {
        let kind = match WireKind::try_from(r.kind) {
            Ok(WireKind::Nodes) => Kind::Nodes,
            Ok(WireKind::Pods) => Kind::Pods,
            Err(_) => return Err(SelectorError(format!("unknown query kind {}", r.kind))),
        };
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self::new(
            kind,
            opt(&r.namespace),
            opt(&r.name),
            &r.label_selector,
            &r.field_selector,
        )
    }

    /// Answers from this replica's store.
    pub fn local(&self, store: &Store, now: Instant) -> Vec<Hit> {
        let name_ok = |n: &str| self.name.as_deref().is_none_or(|want| want == n);
        match self.kind {
            Kind::Nodes => {
                let entries = match &self.name {
                    Some(n) => store.node(n, now).into_iter().collect(),
                    None => store.nodes(now),
                };
                entries
                    .iter()
                    .filter(|e| {
                        name_ok(&e.name)
                            && self.fields.matches("", &e.name)
                            && self.labels.matches_with(|k| e.labels.get(k))
                    })
                    .filter_map(|e| {
                        Some(Hit {
                            namespace: String::new(),
                            name: e.name.clone(),
                            timestamp_ns: e.timestamp_ns,
                            rendered: e.node.clone()?,
                        })
                    })
                    .collect()
            }
            Kind::Pods => match (&self.namespace, &self.name) {
                (Some(ns), Some(name)) => store.pod(ns, name, now),
                (ns, _) => store.pods(ns.as_deref(), now),
            }
            .iter()
            .map(|h| h.pod())
            .filter(|p| {
                name_ok(&p.name)
                    && self.fields.matches(&p.namespace, &p.name)
                    && self.labels.matches_with(|k| p.labels.get(k))
            })
            .map(|p| Hit {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                timestamp_ns: p.timestamp_ns,
                rendered: p.rendered.clone(),
            })
            .collect(),
        }
    }
}

impl Hit {
    pub fn to_wire(&self) -> RenderedObject {
        RenderedObject {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            timestamp_unix_nanos: self.timestamp_ns,
            head: self.rendered.head().to_owned(),
            tail: self.rendered.full_tail(),
        }
    }

    pub fn from_wire(o: &RenderedObject) -> Self {
        Self {
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            timestamp_ns: o.timestamp_unix_nanos,
            rendered: Rendered::from_parts(&o.head, &o.tail),
        }
    }
}

/// Merges answers: one copy per object (the freshest), sorted by namespace
/// then name.
pub fn merge(parts: impl IntoIterator<Item = Vec<Hit>>) -> Vec<Hit> {
    let mut all: Vec<Hit> = parts.into_iter().flatten().collect();
    all.sort_by(|a, b| {
        (&a.namespace, &a.name, b.timestamp_ns).cmp(&(&b.namespace, &b.name, a.timestamp_ns))
    });
    all.dedup_by(|b, a| a.namespace == b.namespace && a.name == b.name);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(ns: &str, name: &str, ts: i64) -> Hit {
        Hit {
            namespace: ns.into(),
            name: name.into(),
            timestamp_ns: ts,
            rendered: Rendered::from_parts(&format!("{ns}/{name}@{ts}"), ""),
        }
    }

    #[test]
    fn merge_keeps_the_freshest_and_sorts() {
        let got = merge([
            vec![hit("b", "x", 1), hit("a", "y", 5)],
            vec![hit("b", "x", 3), hit("a", "a", 1)],
            vec![],
        ]);
        let keys: Vec<_> = got.iter().map(|h| h.rendered.head().to_owned()).collect();
        assert_eq!(keys, ["a/a@1", "a/y@5", "b/x@3"]);
    }

    #[test]
    fn requests_round_trip() {
        let q = Query::new(
            Kind::Pods,
            Some("ns".into()),
            None,
            "app=web,!canary",
            "metadata.name!=x",
        )
        .unwrap();
        let back = Query::from_request(&q.to_request()).unwrap();
        assert_eq!(
            (back.kind, back.namespace, back.name),
            (Kind::Pods, Some("ns".to_string()), None)
        );
        assert_eq!(back.labels, q.labels);
        assert_eq!(back.fields, q.fields);
        let mut bad = q.to_request();
        bad.kind = 9;
        assert!(Query::from_request(&bad).is_err());
    }

    #[test]
    fn objects_with_labels_cross_the_wire_unchanged() {
        let labels = crate::labelset::Labels::new(&std::collections::HashMap::from([(
            "app".to_string(),
            "shop".to_string(),
        )]))
        .unwrap();
        let p = metrics_proto::v1::PodUsage {
            namespace: "ns".into(),
            name: "p".into(),
            timestamp_unix_nanos: 1_700_000_000_000_000_000,
            window_nanos: 15_000_000_000,
            containers: vec![metrics_proto::v1::ContainerUsage {
                name: "c".into(),
                cpu_nanocores: 1,
                memory_working_set_bytes: 1024,
            }],
            ..Default::default()
        };
        let local = Hit {
            namespace: "ns".into(),
            name: "p".into(),
            timestamp_ns: p.timestamp_unix_nanos,
            rendered: crate::render::pod_metrics(&p, &labels),
        };
        let remote = Hit::from_wire(&local.to_wire());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        local.rendered.write_to(&mut a, "2023-11-14T22:13:20Z");
        remote.rendered.write_to(&mut b, "2023-11-14T22:13:20Z");
        assert_eq!(
            String::from_utf8(a.clone()).unwrap(),
            String::from_utf8(b).unwrap()
        );
        assert_eq!(local.rendered.len() + 20, a.len());
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["metadata"]["labels"]["app"], "shop");
    }
}
