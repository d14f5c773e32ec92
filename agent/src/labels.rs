//! The labels of a period's report. They come from the API watch (or the
//! kubelet's `/pods`) and rarely change, while reports go out every
//! period: so they are read, checked and hashed only when the watch moved
//! on or the report's pods differ from the period before, and otherwise
//! the last period's are reused as they are. The report itself travels
//! without them ([`Period`]); a stream copies them in only when it must
//! send them.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use metrics_proto::checks::check_labels;
use metrics_proto::v1::{NodeReport, PodUsage};

use crate::encoded;

type Labels = HashMap<String, String>;

/// One period's report as the collector publishes it: the report with its
/// labels left out (`labels_version` still names them) and the labels
/// beside it, shared from one period to the next while they are the same.
#[derive(Debug, Clone, Default)]
pub struct Period {
    pub report: NodeReport,
    pub labels: Arc<ReportLabels>,
    /// The report encoded without its labels and with them, each made
    /// once, when a stream first asks for it.
    encoded: [OnceLock<Bytes>; 2],
}

/// The labels of a report's node and of each of its pods.
#[derive(Debug, Default, PartialEq)]
pub struct ReportLabels {
    pub node: Labels,
    /// In the order of the report's pods.
    pub pods: Vec<Labels>,
}

impl Period {
    /// Moves a whole report's labels beside it.
    pub fn from_report(mut report: NodeReport) -> Self {
        let labels = ReportLabels {
            node: std::mem::take(&mut report.node_labels),
            pods: report
                .pods
                .iter_mut()
                .map(|p| std::mem::take(&mut p.labels))
                .collect(),
        };
        Self::new(report, Arc::new(labels))
    }

    /// A report that travels without its labels, and those labels.
    pub fn new(report: NodeReport, labels: Arc<ReportLabels>) -> Self {
        Self {
            report,
            labels,
            encoded: Default::default(),
        }
    }

    /// True when a receiver that last took labels with version `held`
    /// already has this report's.
    pub fn labels_held_by(&self, held: Option<u64>) -> bool {
        let version = self.report.labels_version;
        version != 0 && held == Some(version)
    }

    /// The report for a receiver that last took labels with version
    /// `held`: without them when it has them, with them otherwise.
    pub fn for_receiver(&self, held: Option<u64>) -> NodeReport {
        if self.labels_held_by(held) {
            self.omitted()
        } else {
            self.full()
        }
    }

    /// [`for_receiver`](Self::for_receiver)'s report encoded, without its
    /// sequence number: encoded once per period and variant, however many
    /// streams send it.
    pub fn encoded_for(&self, held: Option<u64>) -> Bytes {
        if self.labels_held_by(held) {
            self.encoded[0]
                .get_or_init(|| encoded::omitted(&self.report))
                .clone()
        } else {
            self.encoded[1]
                .get_or_init(|| encoded::whole(&self.full()))
                .clone()
        }
    }

    /// The labels version a receiver holds once it took this report with
    /// its labels (`None` when it has none).
    pub fn labels_version(&self) -> Option<u64> {
        Some(self.report.labels_version).filter(|v| *v != 0)
    }

    /// The report with its labels left out and marked so.
    pub fn omitted(&self) -> NodeReport {
        let mut r = self.report.clone();
        r.labels_omitted = true;
        r
    }

    /// The report with every label.
    pub fn full(&self) -> NodeReport {
        let mut r = self.report.clone();
        r.node_labels = self.labels.node.clone();
        for (p, l) in r.pods.iter_mut().zip(&self.labels.pods) {
            p.labels = l.clone();
        }
        r.labels_omitted = false;
        r
    }
}

/// What the labels were read from: changes to either are seen by their
/// version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The API watch's generation, when labels come from it.
    pub api: Option<u64>,
    /// The pod index's version, when labels come from the kubelet's `/pods`.
    pub index: Option<u64>,
}

/// The labels of the last period, and what they were read for.
#[derive(Debug, Default)]
pub struct LabelCache {
    origin: Option<Origin>,
    /// (namespace, name) of each pod the labels were read for, in order.
    pods: Vec<(String, String)>,
    /// Per pod in `pods`: why its labels would be refused.
    refused: Vec<Option<String>>,
    /// Why the node's labels would be refused (they are then left out).
    node_refused: Option<String>,
    version: u64,
    labels: Arc<ReportLabels>,
}

/// What [`LabelCache::apply`] left out of a report.
#[derive(Debug, Default, PartialEq)]
pub struct Refusals {
    /// Each pod dropped for its labels, with the reason.
    pub pods: Vec<(PodUsage, String)>,
    /// Why the node's labels were left out.
    pub node: Option<String>,
}

impl LabelCache {
    /// Labels `pods` (the report's, already checked but for their labels)
    /// into a [`Period`]: pods whose labels an aggregator would refuse are
    /// taken out and returned, as is a refused node label set. `origin` is
    /// where labels are read from now; `pod` and `node` read them, and are
    /// called only when `origin` or the pods changed since the last call.
    pub fn apply(
        &mut self,
        mut report: NodeReport,
        origin: Origin,
        pod: impl Fn(&str, &str) -> Option<Labels>,
        node: impl FnOnce() -> Labels,
    ) -> (Period, Refusals) {
        if !self.holds(origin, &report.pods) {
            self.read(origin, &report.pods, pod, node);
        }
        let mut refusals = Refusals {
            node: self.node_refused.clone(),
            ..Refusals::default()
        };
        if self.refused.iter().any(Option::is_some) {
            let pods = std::mem::take(&mut report.pods);
            for (p, why) in pods.into_iter().zip(&self.refused) {
                match why {
                    None => report.pods.push(p),
                    Some(why) => refusals.pods.push((p, why.clone())),
                }
            }
        }
        report.node_labels.clear();
        report.labels_version = self.version;
        report.labels_omitted = false;
        let period = Period::new(report, Arc::clone(&self.labels));
        (period, refusals)
    }

    /// True when the labels held were read from `origin` for exactly `pods`.
    fn holds(&self, origin: Origin, pods: &[PodUsage]) -> bool {
        self.origin == Some(origin)
            && self.pods.len() == pods.len()
            && self
                .pods
                .iter()
                .zip(pods)
                .all(|((ns, name), p)| *ns == p.namespace && *name == p.name)
    }

    fn read(
        &mut self,
        origin: Origin,
        pods: &[PodUsage],
        pod: impl Fn(&str, &str) -> Option<Labels>,
        node: impl FnOnce() -> Labels,
    ) {
        let mut labels = ReportLabels {
            node: node(),
            pods: Vec::with_capacity(pods.len()),
        };
        self.node_refused = check_labels(&labels.node).err();
        if self.node_refused.is_some() {
            labels.node.clear();
        }
        self.pods.clear();
        self.refused.clear();
        for p in pods {
            let l = pod(&p.namespace, &p.name).unwrap_or_default();
            let refused = check_labels(&l).err();
            if refused.is_none() {
                labels.pods.push(l);
            }
            self.refused.push(refused);
            self.pods.push((p.namespace.clone(), p.name.clone()));
        }
        let kept = pods
            .iter()
            .zip(&self.refused)
            .filter(|(_, why)| why.is_none())
            .map(|(p, _)| (p.namespace.as_str(), p.name.as_str()));
        self.version = metrics_proto::labels::version_of(
            &labels.node,
            kept.zip(&labels.pods).map(|((ns, name), l)| (ns, name, l)),
        );
        self.labels = Arc::new(labels);
        self.origin = Some(origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn pod(name: &str) -> PodUsage {
        PodUsage {
            namespace: "ns".into(),
            name: name.into(),
            ..PodUsage::default()
        }
    }

    fn report(names: &[&str]) -> NodeReport {
        NodeReport {
            node_name: "n".into(),
            pods: names.iter().map(|n| pod(n)).collect(),
            ..NodeReport::default()
        }
    }

    fn app(v: &str) -> Labels {
        [("app".to_owned(), v.to_owned())].into_iter().collect()
    }

    fn zone() -> Labels {
        [("zone".to_owned(), "z1".to_owned())].into_iter().collect()
    }

    /// The report a stream sends in full equals the report labelled from
    /// scratch, with its version computed the way the aggregator checks it.
    fn whole(names: &[&str], labels: &dyn Fn(&str) -> Labels) -> NodeReport {
        let mut r = report(names);
        r.node_labels = zone();
        for p in &mut r.pods {
            p.labels = labels(&p.name);
        }
        r.labels_version = metrics_proto::labels::version(&r);
        r
    }

    #[test]
    fn labels_are_read_again_only_when_their_origin_or_the_pods_change() {
        let reads = Cell::new(0);
        let mut cache = LabelCache::default();
        let at = |g| Origin {
            api: Some(g),
            index: None,
        };
        let mut run = |names: &[&str], origin: Origin, value: &str| {
            let value = value.to_owned();
            let (period, refusals) = cache.apply(
                report(names),
                origin,
                |_, n| {
                    reads.set(reads.get() + 1);
                    Some(app(&format!("{value}-{n}")))
                },
                zone,
            );
            assert_eq!(refusals, Refusals::default());
            period
        };
        let first = run(&["a", "b"], at(1), "shop");
        assert_eq!(reads.get(), 2);
        assert_eq!(
            first.full(),
            whole(&["a", "b"], &|n| app(&format!("shop-{n}")))
        );
        assert!(first.report.pods.iter().all(|p| p.labels.is_empty()));
        assert!(first.report.node_labels.is_empty());

        // Same origin, same pods: nothing read, the same labels shared.
        let again = run(&["a", "b"], at(1), "ignored");
        assert_eq!(reads.get(), 2);
        assert!(Arc::ptr_eq(&first.labels, &again.labels));
        assert_eq!(again.report.labels_version, first.report.labels_version);

        // The watch moved on: read again.
        let moved = run(&["a", "b"], at(2), "web");
        assert_eq!(reads.get(), 4);
        assert_eq!(
            moved.full(),
            whole(&["a", "b"], &|n| app(&format!("web-{n}")))
        );
        assert_ne!(moved.report.labels_version, first.report.labels_version);

        // A pod more, or the same pods in another order: read again, and
        // the labels stay with their pods.
        let more = run(&["a", "b", "c"], at(2), "web");
        assert_eq!(reads.get(), 7);
        assert_eq!(
            more.full(),
            whole(&["a", "b", "c"], &|n| app(&format!("web-{n}")))
        );
        let swapped = run(&["c", "b", "a"], at(2), "web");
        assert_eq!(reads.get(), 10);
        assert_eq!(swapped.full().pods[0].labels, app("web-c"));
        assert_eq!(
            swapped.report.labels_version, more.report.labels_version,
            "the version does not depend on the pods' order"
        );
    }

    #[test]
    fn refused_labels_drop_their_pod_alone_every_period() {
        let bad: Labels = [("bad key!".to_owned(), "v".to_owned())]
            .into_iter()
            .collect();
        let labels = |n: &str| if n == "b" { bad.clone() } else { app(n) };
        let origin = Origin {
            api: None,
            index: Some(7),
        };
        let mut cache = LabelCache::default();
        for _ in 0..2 {
            let (period, refusals) = cache.apply(
                report(&["a", "b", "c"]),
                origin,
                |_, n| Some(labels(n)),
                zone,
            );
            let names: Vec<&str> = period.report.pods.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["a", "c"]);
            assert_eq!(refusals.pods.len(), 1, "counted in every period");
            assert_eq!(refusals.pods[0].0.name, "b");
            assert!(refusals.node.is_none());
            assert_eq!(period.full(), whole(&["a", "c"], &|n| app(n)));
        }
    }

    #[test]
    fn refused_node_labels_are_left_out_and_pods_kept() {
        let mut cache = LabelCache::default();
        let too_long: Labels = [("zone".to_owned(), "z".repeat(64))].into_iter().collect();
        let origin = Origin {
            api: Some(1),
            index: None,
        };
        let (period, refusals) =
            cache.apply(report(&["a"]), origin, |_, n| Some(app(n)), || too_long);
        assert!(refusals.node.is_some());
        assert!(refusals.pods.is_empty());
        let full = period.full();
        assert!(full.node_labels.is_empty());
        assert_eq!(full.pods[0].labels, app("a"));
        let mut want = full.clone();
        want.labels_version = metrics_proto::labels::version(&want);
        assert_eq!(full.labels_version, want.labels_version);
    }

    #[test]
    fn unlabelled_reports_have_version_zero_and_omitted_copies_are_marked() {
        let mut cache = LabelCache::default();
        let origin = Origin {
            api: None,
            index: None,
        };
        let (period, _) = cache.apply(report(&["a"]), origin, |_, _| None, Labels::new);
        assert_eq!(period.report.labels_version, 0);
        let omitted = period.omitted();
        assert!(omitted.labels_omitted);
        assert_eq!(omitted.pods, period.report.pods);
        assert!(!period.full().labels_omitted);
    }

    #[test]
    fn a_whole_report_moves_its_labels_beside_it() {
        let r = whole(&["a", "b"], &|n| app(n));
        let period = Period::from_report(r.clone());
        assert!(period.report.node_labels.is_empty());
        assert!(period.report.pods.iter().all(|p| p.labels.is_empty()));
        assert_eq!(period.full(), r);
    }

    /// Each variant is encoded once and shared; what it decodes to is the
    /// report a receiver with (or without) the labels gets.
    #[test]
    fn each_variant_is_encoded_once_and_decodes_to_its_report() {
        use prost::Message;
        let r = whole(&["a", "b"], &|n| app(n));
        let period = Period::from_report(r.clone());
        let held = period.labels_version();
        let bare = period.encoded_for(held);
        assert_eq!(bare.as_ptr(), period.encoded_for(held).as_ptr());
        assert_eq!(NodeReport::decode(bare).unwrap(), period.omitted());
        let full = period.encoded_for(None);
        assert_eq!(full.as_ptr(), period.encoded_for(Some(1)).as_ptr());
        assert_eq!(NodeReport::decode(full).unwrap(), r);
    }
}
