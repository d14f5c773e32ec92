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
    /// Objects wanted in protobuf form ([`Hit::pb`]) instead of JSON.
    pub protobuf: bool,
    /// Only objects of these nodes (a peer's part of a split list,
    /// `split.rs`); none: every node.
    pub only_nodes: Option<std::sync::Arc<std::collections::HashSet<String>>>,
}

/// One object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// "" for nodes.
    pub namespace: String,
    pub name: String,
    /// For pods, the node that reported it ("" when not known).
    pub node: String,
    /// Sample time, ns since the epoch.
    pub timestamp_ns: i64,
    /// The JSON object (empty when `pb` is set).
    pub rendered: Rendered,
    /// With [`Query::protobuf`]: the object as protobuf, without its
    /// creationTimestamp (`render_pb.rs`).
    pub pb: Option<Vec<u8>>,
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
            protobuf: false,
            only_nodes: None,
        })
    }

    /// The same query, its objects wanted in protobuf form when `pb`.
    pub fn with_protobuf(mut self, pb: bool) -> Self {
        self.protobuf = pb;
        self
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
            protobuf: self.protobuf,
            split: None,
        }
    }

    /// The objects of `kind` this replica holds live: entries with node
    /// usage for nodes, every entry for pods.
    pub fn live_entries(
        &self,
        store: &Store,
        now: Instant,
    ) -> Vec<std::sync::Arc<crate::report::NodeEntry>> {
        match self.kind {
            Kind::Nodes => store.nodes(now),
            Kind::Pods => store.entries(now),
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
        .map(|q| q.with_protobuf(r.protobuf))
    }

    /// Answers from this replica's store.
    pub fn local(&self, store: &Store, now: Instant) -> Vec<Hit> {
        self.local_until(store, now, &|| false).unwrap_or_default()
    }

    /// [`local`](Self::local), asking `gone` every [`CHECK_EVERY`] objects
    /// whether the caller still waits; None once it does not, so a query
    /// whose asker went away stops instead of running to its end.
    pub fn local_until(
        &self,
        store: &Store,
        now: Instant,
        gone: &dyn Fn() -> bool,
    ) -> Option<Vec<Hit>> {
        let seen = std::cell::Cell::new(0usize);
        let stopped = std::cell::Cell::new(false);
        let go_on = || {
            let n = seen.get() + 1;
            seen.set(n);
            if n.is_multiple_of(CHECK_EVERY) && !stopped.get() && gone() {
                stopped.set(true);
            }
            !stopped.get()
        };
        let hits = self.scan(store, now, &go_on);
        (!stopped.get()).then_some(hits)
    }

    fn scan(&self, store: &Store, now: Instant, go_on: &dyn Fn() -> bool) -> Vec<Hit> {
        let name_ok = |n: &str| self.name.as_deref().is_none_or(|want| want == n);
        let node_ok = |n: &str| self.only_nodes.as_ref().is_none_or(|only| only.contains(n));
        match self.kind {
            Kind::Nodes => {
                let entries = match &self.name {
                    Some(n) => store.node(n, now).into_iter().collect(),
                    None => store.nodes(now),
                };
                entries
                    .iter()
                    .take_while(|_| go_on())
                    .filter(|e| {
                        name_ok(&e.name)
                            && node_ok(&e.name)
                            && self.fields.matches("", &e.name)
                            && self.labels.matches_with(|k| e.labels.get(k))
                    })
                    .filter_map(|e| {
                        let (rendered, pb) = if self.protobuf {
                            (Rendered::empty(), Some(e.render_pb()?))
                        } else {
                            (e.render()?, None)
                        };
                        Some(Hit {
                            namespace: String::new(),
                            name: e.name.clone(),
                            node: String::new(),
                            timestamp_ns: e.timestamp_ns,
                            rendered,
                            pb,
                        })
                    })
                    .collect()
            }
            Kind::Pods => {
                // Pods with the same labels share one label set: the
                // selector is evaluated once per set, not per pod.
                let mut verdicts: std::collections::HashMap<usize, bool> = Default::default();
                let mut labels_ok = |l: &std::sync::Arc<crate::labelset::Labels>| {
                    if self.labels.is_empty() {
                        return true;
                    }
                    *verdicts
                        .entry(std::sync::Arc::as_ptr(l) as usize)
                        .or_insert_with(|| self.labels.matches_with(|k| l.get(k)))
                };
                match (&self.namespace, &self.name) {
                    (Some(ns), Some(name)) => store.pod(ns, name, now),
                    (ns, _) => store.pods_for_selector(ns.as_deref(), &self.labels, now),
                }
                .iter()
                .take_while(|_| go_on())
                .map(|h| (h, h.pod()))
                .filter(|(h, p)| {
                    name_ok(p.name())
                        && node_ok(h.node())
                        && self.fields.matches(p.namespace(), p.name())
                        && labels_ok(&p.labels)
                })
                .map(|(h, p)| {
                    let (rendered, pb) = if self.protobuf {
                        (Rendered::empty(), Some(h.render_pb()))
                    } else {
                        (h.render(), None)
                    };
                    Hit {
                        namespace: p.namespace().to_owned(),
                        name: p.name().to_owned(),
                        node: h.node().to_owned(),
                        timestamp_ns: p.timestamp_ns,
                        rendered,
                        pb,
                    }
                })
                .collect()
            }
        }
    }
}

impl Hit {
    /// The object for a peer's answer; its strings move into it.
    pub fn into_wire(self) -> RenderedObject {
        RenderedObject {
            head: self.rendered.head().to_owned(),
            tail: self.rendered.full_tail(),
            namespace: self.namespace,
            name: self.name,
            timestamp_unix_nanos: self.timestamp_ns,
            node: self.node,
            protobuf: self.pb.unwrap_or_default(),
        }
    }

    /// An object from a peer's answer; its strings move into the hit.
    pub fn from_wire(o: RenderedObject) -> Self {
        Self {
            rendered: Rendered::from_parts(&o.head, &o.tail),
            namespace: o.namespace,
            name: o.name,
            node: o.node,
            timestamp_ns: o.timestamp_unix_nanos,
            pb: (!o.protobuf.is_empty()).then_some(o.protobuf),
        }
    }
}

/// How many objects a scan matches between checks that its caller waits.
pub const CHECK_EVERY: usize = 4096;

/// Merges answers: one copy per object (the freshest), sorted by namespace
/// then name.
pub fn merge(parts: impl IntoIterator<Item = Vec<Hit>>) -> Vec<Hit> {
    let mut all = sorted(parts);
    dedup(&mut all);
    all
}

/// Every copy of every object, sorted by namespace, then name, then
/// freshest first.
pub fn sorted(parts: impl IntoIterator<Item = Vec<Hit>>) -> Vec<Hit> {
    let mut all: Vec<Hit> = parts.into_iter().flatten().collect();
    all.sort_unstable_by(|a, b| {
        (&a.namespace, &a.name, b.timestamp_ns).cmp(&(&b.namespace, &b.name, a.timestamp_ns))
    });
    all
}

/// Keeps the first (freshest) copy of each object of a [`sorted`] list.
pub fn dedup(all: &mut Vec<Hit>) {
    all.dedup_by(|b, a| a.namespace == b.namespace && a.name == b.name);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(ns: &str, name: &str, ts: i64) -> Hit {
        Hit {
            namespace: ns.into(),
            name: name.into(),
            node: String::new(),
            timestamp_ns: ts,
            rendered: Rendered::from_parts(&format!("{ns}/{name}@{ts}"), ""),
            pb: None,
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
                swap_bytes: 0,
            }],
            ..Default::default()
        };
        let local = Hit {
            namespace: "ns".into(),
            name: "p".into(),
            node: "node-a".into(),
            timestamp_ns: p.timestamp_unix_nanos,
            rendered: crate::render::pod_metrics(&p, &labels),
            pb: None,
        };
        let remote = Hit::from_wire(local.clone().into_wire());
        assert_eq!(remote.node, "node-a");
        assert_eq!(remote.pb, None, "no protobuf form unless asked");
        // A protobuf form crosses unchanged too.
        let pb = Hit {
            pb: Some(vec![0x0a, 0x01, 0x00, 0xff]),
            ..local.clone()
        };
        assert_eq!(Hit::from_wire(pb.clone().into_wire()).pb, pb.pb);
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

#[cfg(test)]
mod scan_tests {
    use super::*;
    use crate::report::to_entry;
    use metrics_proto::v1::{ContainerUsage, NodeReport, PodUsage, Usage};

    fn store_with(nodes: usize, pods: usize) -> Store {
        let store = Store::new();
        let now_ns = metrics_proto::time::unix_nanos(std::time::SystemTime::now());
        for n in 0..nodes {
            let report = NodeReport {
                protocol_version: metrics_proto::PROTOCOL_VERSION,
                node_name: format!("node-{n}"),
                period_ms: 15_000,
                node: Some(Usage {
                    timestamp_unix_nanos: now_ns,
                    window_nanos: 1,
                    cpu_nanocores: 1,
                    memory_working_set_bytes: 1,
                    swap_bytes: 0,
                }),
                pods: (0..pods)
                    .map(|i| PodUsage {
                        namespace: "ns".into(),
                        name: format!("p-{n}-{i}"),
                        timestamp_unix_nanos: now_ns,
                        window_nanos: 1,
                        containers: vec![ContainerUsage {
                            name: "c".into(),
                            cpu_nanocores: 1,
                            memory_working_set_bytes: 1,
                            swap_bytes: 0,
                        }],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            store.insert(to_entry(report, None, Instant::now(), 3).unwrap());
        }
        store
    }

    #[test]
    fn a_scan_stops_once_its_caller_is_gone() {
        let store = store_with(6, 2_000);
        let q = Query::new(Kind::Pods, None, None, "app!=x", "").unwrap();
        let now = Instant::now();
        let asked = std::cell::Cell::new(0);
        let all = q
            .local_until(&store, now, &|| {
                asked.set(asked.get() + 1);
                false
            })
            .unwrap();
        assert_eq!(all.len(), 12_000);
        assert_eq!(
            asked.get(),
            12_000 / CHECK_EVERY,
            "asked every CHECK_EVERY objects"
        );
        // Gone at the first check: no answer, and no further checks.
        let asked = std::cell::Cell::new(0);
        let none = q.local_until(&store, now, &|| {
            asked.set(asked.get() + 1);
            true
        });
        assert!(none.is_none());
        assert_eq!(asked.get(), 1);
        assert_eq!(q.local(&store, now).len(), 12_000);
    }

    /// Pods sharing label sets (as ingest interns them): each pod is
    /// selected by its own labels, whatever the pods before it had.
    #[test]
    fn selectors_over_shared_label_sets_select_each_pod_by_its_labels() {
        let store = std::sync::Arc::new(Store::new());
        let svc = crate::ingest::IngestService::new(
            std::sync::Arc::clone(&store),
            std::sync::Arc::new(crate::metrics::AggregatorMetrics::default()),
            3,
            Default::default(),
        );
        let now_ns = metrics_proto::time::unix_nanos(std::time::SystemTime::now());
        for n in 0..4 {
            let mut report = NodeReport {
                protocol_version: metrics_proto::PROTOCOL_VERSION,
                node_name: format!("node-{n}"),
                sequence: 1,
                period_ms: 15_000,
                pods: (0..30)
                    .map(|i| PodUsage {
                        namespace: "ns".into(),
                        name: format!("p-{n}-{i}"),
                        labels: [("app".to_owned(), format!("a{}", i % 3))]
                            .into_iter()
                            .collect(),
                        timestamp_unix_nanos: now_ns,
                        window_nanos: 1,
                        containers: vec![ContainerUsage {
                            name: "c".into(),
                            cpu_nanocores: 1,
                            memory_working_set_bytes: 1,
                            swap_bytes: 0,
                        }],
                    })
                    .collect(),
                ..Default::default()
            };
            report.labels_version = metrics_proto::labels::version(&report);
            assert!(svc.handle(report, &mut Default::default()).accepted);
        }
        let now = Instant::now();
        for (sel, want) in [
            ("app=a1", 40),
            ("app!=a1", 80),
            ("app in (a0,a2)", 80),
            ("", 120),
        ] {
            let hits = Query::new(Kind::Pods, None, None, sel, "")
                .unwrap()
                .local(&store, now);
            assert_eq!(hits.len(), want, "{sel}");
            let wanted = sel.split('=').nth(1);
            for h in &hits {
                let i: usize = h.name.rsplit('-').next().unwrap().parse().unwrap();
                let app = format!("a{}", i % 3);
                match sel {
                    "app=a1" => assert_eq!(Some(app.as_str()), wanted, "{}", h.name),
                    "app!=a1" | "app in (a0,a2)" => assert_ne!(app, "a1", "{}", h.name),
                    _ => {}
                }
            }
        }
    }
}
