//! Labels as the aggregator keeps them: each object's label map (for
//! selectors) and its rendered JSON fragment (for answers), checked and
//! built once when an agent carries them, then shared by `Arc` between the
//! stream's cache, the store and every later report that omits them
//! (`metrics_proto::labels`: labels travel only when they change).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Weak};

use dashmap::DashMap;
use xxhash_rust::xxh3::Xxh3;

use metrics_proto::labels::UnknownLabels;

use crate::index::pod_key;
use crate::render::json_str;
use metrics_proto::v1::NodeReport;

pub use metrics_proto::checks::MAX_LABELS;

/// One object's labels, compactly: the rendered JSON member, and the end
/// offsets of each key and value as if concatenated in key order. The
/// keys and values are read out of the JSON, where they stand unchanged
/// unless rendering had to escape one; only then are they also kept
/// concatenated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// Keys and values concatenated in key order, when the JSON escaped any.
    text: Option<Box<str>>,
    /// End of key i at `ends[2i]`, of its value at `ends[2i + 1]`, in the
    /// concatenation.
    ends: Box<[u32]>,
    /// `,"labels":{...}` in key order, or empty without labels.
    json: Box<str>,
    /// The labels as protobuf map entries, made on first use.
    pb: std::sync::OnceLock<Box<[u8]>>,
}

/// `,"labels":{"`: where the first key starts in the JSON.
const JSON_FIRST_KEY: usize = 12;
/// `":"` between a key and its value, `","` between a value and the next
/// key: key i stands in the JSON 12 + 6 × i bytes after its place in the
/// concatenation, its value 3 bytes further.
const JSON_SEP: usize = 3;

static EMPTY: LazyLock<Arc<Labels>> = LazyLock::new(|| Arc::new(Labels::default()));

use metrics_proto::checks::check_labels as check;

impl Labels {
    /// Checks `labels` (count and sizes) and builds them.
    pub fn new(labels: &HashMap<String, String>) -> Result<Arc<Self>, String> {
        check(labels)?;
        Ok(Self::build(&sorted(labels)))
    }

    /// From pairs sorted by key.
    fn build(pairs: &[(&String, &String)]) -> Arc<Self> {
        if pairs.is_empty() {
            return Self::empty();
        }
        let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut ends = Vec::with_capacity(2 * pairs.len());
        // Unescaped, the JSON is the pairs with 6 bytes of quotes and
        // separators each, behind the 11 of `,"labels":{` and before `}`.
        let plain_len = JSON_FIRST_KEY - 1 + size + 2 * JSON_SEP * pairs.len();
        let mut json = String::with_capacity(plain_len + 16);
        json.push_str(",\"labels\":{");
        let mut end = 0;
        for (i, &(k, v)) in pairs.iter().enumerate() {
            for s in [k, v] {
                end += s.len();
                // Bounded by MAX_LABELS × 380 bytes, far below u32::MAX.
                ends.push(u32::try_from(end).unwrap_or(u32::MAX));
            }
            if i > 0 {
                json.push(',');
            }
            json_str(&mut json, k);
            json.push(':');
            json_str(&mut json, v);
        }
        json.push('}');
        // Escaping only ever adds bytes: at the plain length nothing was.
        let text = (json.len() != plain_len).then(|| {
            let mut text = String::with_capacity(size);
            for (k, v) in pairs {
                text.push_str(k);
                text.push_str(v);
            }
            text.into()
        });
        Arc::new(Self {
            text,
            ends: ends.into(),
            json: json.into(),
            pb: std::sync::OnceLock::new(),
        })
    }

    /// No labels (one shared instance).
    pub fn empty() -> Arc<Self> {
        Arc::clone(&EMPTY)
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn pair(&self, i: usize) -> (&str, &str) {
        let start = if i == 0 {
            0
        } else {
            self.ends[2 * i - 1] as usize
        };
        let (k_end, v_end) = (self.ends[2 * i] as usize, self.ends[2 * i + 1] as usize);
        match &self.text {
            Some(text) => (&text[start..k_end], &text[k_end..v_end]),
            None => {
                let at = JSON_FIRST_KEY + 2 * JSON_SEP * i;
                (
                    &self.json[start + at..k_end + at],
                    &self.json[k_end + at + JSON_SEP..v_end + at + JSON_SEP],
                )
            }
        }
    }

    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (k, v) = self.pair(mid);
            match k.cmp(key) {
                std::cmp::Ordering::Equal => return Some(v),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// Every label in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        (0..self.len()).map(|i| self.pair(i))
    }

    /// The labels as ObjectMeta's protobuf map entries (field 11), made
    /// once per label set, on first use.
    pub fn protobuf(&self) -> &[u8] {
        self.pb
            .get_or_init(|| crate::render_pb::label_entries(self).into())
    }

    /// The `,"labels":{...}` member of a metadata object, or "".
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// Label sets shared across streams: pods of one ReplicaSet, DaemonSet or
/// Job carry identical labels on many nodes, and each distinct set is kept
/// once. Entries are weak; dead ones are swept as new sets arrive.
#[derive(Debug, Default)]
pub struct Interner {
    sets: DashMap<u64, Weak<Labels>>,
    /// Live entries at the last sweep; the next one runs at twice as many.
    swept_at: AtomicUsize,
}

/// The pairs of `labels` sorted by key.
fn sorted(labels: &HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut pairs: Vec<(&String, &String)> = labels.iter().collect();
    pairs.sort_unstable();
    pairs
}

fn content_hash(pairs: &[(&String, &String)]) -> u64 {
    let mut h = Xxh3::new();
    for (k, v) in pairs {
        for s in [k, v] {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
    }
    h.digest()
}

fn same(a: &Labels, b: &HashMap<String, String>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|bv| bv == v))
}

impl Interner {
    /// Checks `labels` and returns the shared copy of that set.
    pub fn intern(&self, labels: &HashMap<String, String>) -> Result<Arc<Labels>, String> {
        check(labels)?;
        if labels.is_empty() {
            return Ok(Labels::empty());
        }
        let pairs = sorted(labels);
        let key = content_hash(&pairs);
        let mut slot = self.sets.entry(key).or_default();
        if let Some(existing) = slot.upgrade().filter(|l| same(l, labels)) {
            return Ok(existing);
        }
        let built = Labels::build(&pairs);
        // A hash collision replaces the older set in the table; both stay
        // valid where they are used.
        *slot = Arc::downgrade(&built);
        drop(slot);
        self.maybe_sweep();
        Ok(built)
    }

    fn maybe_sweep(&self) {
        let limit = 2 * self.swept_at.load(Ordering::Relaxed) + 1024;
        if self.sets.len() >= limit {
            self.sets.retain(|_, w| w.strong_count() > 0);
            self.swept_at.store(self.sets.len(), Ordering::Relaxed);
        }
    }

    /// Distinct label sets held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// A report's labels, resolved: the node's and each pod's, in the order of
/// `report.pods`. Unusable labels are reported per owner: a pod whose labels
/// are refused is dropped alone; refused node labels leave the node
/// unlabelled.
#[derive(Debug)]
pub struct Resolved {
    pub node: Arc<Labels>,
    /// Why the node's labels were refused.
    pub node_error: Option<String>,
    pub pods: Vec<PodLabels>,
}

/// Why a report's labels cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error(transparent)]
    Unknown(#[from] UnknownLabels),
}

/// Builds (or finds in `interner`, when given) every label set a report
/// carries.
pub fn carried(report: &NodeReport, interner: Option<&Interner>) -> Result<Resolved, LabelError> {
    let build = |labels: &HashMap<String, String>| match interner {
        Some(i) => i.intern(labels),
        None => Labels::new(labels),
    };
    let (node, node_error) = match build(&report.node_labels) {
        Ok(l) => (l, None),
        Err(e) => (Labels::empty(), Some(e)),
    };
    let pods = report
        .pods
        .iter()
        .map(|p| build(&p.labels).map_err(Arc::from))
        .collect();
    Ok(Resolved {
        node,
        node_error,
        pods,
    })
}

/// The labels last carried on one stream. Held for as long as the stream
/// lives, so kept small: each pod by a 64-bit hash of its namespace and
/// name, in a sorted slice, with no copy of either name.
#[derive(Debug, Default)]
pub struct StreamLabels {
    version: u64,
    node: Arc<Labels>,
    node_error: Option<String>,
    /// Every pod the labelled report named whose labels were accepted, by
    /// key ([`pod_key`]), sorted: its labels (empty when it had none); the
    /// first of a pod named twice. 16 bytes a pod.
    pods: Box<[(u64, Arc<Labels>)]>,
    /// The pods whose labels were refused, by key, sorted: why (so a report
    /// that leaves them out drops them again rather than serving them
    /// unlabelled). Kept apart so that the usual pod costs no room for it.
    refused: Box<[(u64, Arc<str>)]>,
    /// Pods whose key another pod of the stream also hashes to (in
    /// practice never), by name instead.
    collided: HashMap<(String, String), PodLabels>,
}

/// One pod's labels, or why they were refused.
pub type PodLabels = Result<Arc<Labels>, Arc<str>>;

impl StreamLabels {
    /// The labels of `report`: built from it when it carries a set this
    /// stream has not seen (and remembered), else taken from the last set
    /// carried with the same `labels_version`. A report that omitted labels
    /// this stream does not know is refused.
    pub fn resolve(
        &mut self,
        report: &NodeReport,
        interner: &Interner,
    ) -> Result<Resolved, LabelError> {
        let known = report.labels_version != 0 && report.labels_version == self.version;
        if !report.labels_omitted && !known {
            let resolved = carried(report, Some(interner))?;
            if report.labels_version != 0 {
                self.version = report.labels_version;
                self.node = Arc::clone(&resolved.node);
                self.node_error = resolved.node_error.clone();
                self.remember(report, &resolved.pods);
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
                self.lookup(&p.namespace, &p.name)
                    .unwrap_or_else(|| Ok(Labels::empty()))
            })
            .collect();
        Ok(Resolved {
            node: Arc::clone(&self.node),
            node_error: self.node_error.clone(),
            pods,
        })
    }

    /// Keeps the labels `report` carried (`labels`, one per pod). Every
    /// pod is kept, unlabelled ones too: the labels' version covers every
    /// pod's name, so a report that leaves its labels out names these
    /// pods and no other, and a hash two of them share is always seen here.
    fn remember(&mut self, report: &NodeReport, labels: &[PodLabels]) {
        let mut pods: Vec<(u64, &str, &str, &PodLabels)> = report
            .pods
            .iter()
            .zip(labels)
            .map(|(p, l)| {
                (
                    pod_key(&p.namespace, &p.name),
                    p.namespace.as_str(),
                    p.name.as_str(),
                    l,
                )
            })
            .collect();
        // Stable: the first of a pod carried twice stays first.
        pods.sort_by_key(|p| p.0);
        pods.dedup_by(|b, a| a.0 == b.0 && a.1 == b.1 && a.2 == b.2);
        self.collided.clear();
        for w in pods.windows(2) {
            if w[0].0 == w[1].0 {
                for (_, ns, name, l) in [w[0], w[1]] {
                    self.collided
                        .entry((ns.to_owned(), name.to_owned()))
                        .or_insert_with(|| l.clone());
                }
            }
        }
        self.pods = pods
            .iter()
            .filter_map(|(k, _, _, l)| Some((*k, Arc::clone(l.as_ref().ok()?))))
            .collect();
        self.refused = pods
            .iter()
            .filter_map(|(k, _, _, l)| Some((*k, Arc::clone(l.as_ref().err()?))))
            .collect();
    }

    /// The labels last carried for pod `namespace/name`, or why they were
    /// refused.
    fn lookup(&self, namespace: &str, name: &str) -> Option<PodLabels> {
        let key = pod_key(namespace, name);
        let ok = range_of(&self.pods, key);
        let refused = range_of(&self.refused, key);
        match (ok.len(), refused.len()) {
            (0, 0) => None,
            (1, 0) => self.pods.get(ok.start).map(|(_, l)| Ok(Arc::clone(l))),
            (0, 1) => self
                .refused
                .get(refused.start)
                .map(|(_, r)| Err(Arc::clone(r))),
            // Pods of this stream that share the key: told apart by name.
            _ => self
                .collided
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned(),
        }
    }
}

/// Where `key` stands in `items`, sorted by key.
fn range_of<T>(items: &[(u64, T)], key: u64) -> std::ops::Range<usize> {
    let start = items.partition_point(|(k, _)| *k < key);
    let end = start + items[start..].partition_point(|(k, _)| *k == key);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node `n` of a small simulated cluster: labelled pods and node.
    fn report(n: usize) -> NodeReport {
        let shape = metrics_e2e::load::workload::Shape {
            nodes: 3,
            pods_per_node: 4,
            containers_per_pod: 1,
            namespaces: 2,
        };
        let mut r = shape.template(n, 15_000);
        r.pods[1].labels.clear();
        r.labels_version = metrics_proto::labels::version(&r);
        r
    }

    #[test]
    fn omitted_labels_are_shared_from_the_carried_set() {
        let interner = Interner::default();
        let mut cache = StreamLabels::default();
        let full = cache.resolve(&report(0), &interner).unwrap();
        assert!(full.node.json().contains(r#""kubernetes.io/os":"linux""#));
        assert!(full.pods[0]
            .as_ref()
            .unwrap()
            .json()
            .starts_with(r#","labels":{"app":""#));
        assert_eq!(full.pods[1].as_ref().unwrap().json(), "");
        let mut next = report(0);
        metrics_proto::labels::omit(&mut next);
        let again = cache.resolve(&next, &interner).unwrap();
        assert!(Arc::ptr_eq(
            again.pods[0].as_ref().unwrap(),
            full.pods[0].as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&again.node, &full.node));
        assert!(again.pods[1].as_ref().unwrap().is_empty());
        // Carried again with the same version: the shared set is reused.
        assert!(Arc::ptr_eq(
            cache.resolve(&report(0), &interner).unwrap().pods[0]
                .as_ref()
                .unwrap(),
            full.pods[0].as_ref().unwrap()
        ));

        let mut changed = report(1);
        let v = changed.labels_version;
        metrics_proto::labels::omit(&mut changed);
        assert_eq!(
            cache.resolve(&changed, &interner).unwrap_err(),
            LabelError::Unknown(UnknownLabels(v))
        );
    }

    #[test]
    fn bad_labels_refuse_their_pod_alone_and_are_remembered() {
        let interner = Interner::default();
        let mut cache = StreamLabels::default();
        let mut r = report(0);
        r.pods[0].labels.insert("k".into(), "v".repeat(64));
        r.labels_version = metrics_proto::labels::version(&r);
        let got = cache.resolve(&r, &interner).unwrap();
        assert!(got.pods[0].is_err());
        assert!(got.pods[2..].iter().all(Result::is_ok));
        // Left out next time, the pod is refused again, not served bare.
        metrics_proto::labels::omit(&mut r);
        let again = cache.resolve(&r, &interner).unwrap();
        assert_eq!(again.pods[0], got.pods[0]);
        assert!(again.pods[2..].iter().all(Result::is_ok));
    }

    #[test]
    fn pods_sharing_a_hash_are_told_apart_by_name() {
        let set = |app: &str| Labels::new(&HashMap::from([("app".to_string(), app.to_string())]));
        let (a, b) = (set("a").unwrap(), set("b").unwrap());
        // Two pods whose keys are equal: the slice alone cannot tell them
        // apart, so the answer comes from the names.
        let k = pod_key("ns", "p");
        let cache = StreamLabels {
            pods: vec![(k, Arc::clone(&a)), (k, Arc::clone(&a))].into(),
            collided: HashMap::from([(("ns".to_string(), "p".to_string()), Ok(Arc::clone(&b)))]),
            ..Default::default()
        };
        assert!(Arc::ptr_eq(
            cache.lookup("ns", "p").unwrap().as_ref().unwrap(),
            &b
        ));
        assert!(cache.lookup("ns", "q").is_none());
        // The same when one of the two had its labels refused.
        let cache = StreamLabels {
            pods: vec![(k, Arc::clone(&a))].into(),
            refused: vec![(k, Arc::from("too long"))].into(),
            collided: HashMap::from([(("ns".to_string(), "p".to_string()), Ok(Arc::clone(&b)))]),
            ..Default::default()
        };
        assert!(Arc::ptr_eq(
            cache.lookup("ns", "p").unwrap().as_ref().unwrap(),
            &b
        ));

        // Built from a report, every pod is found by its own name.
        let mut cache = StreamLabels::default();
        let r = report(0);
        let labels: Vec<PodLabels> = r
            .pods
            .iter()
            .map(|p| Labels::new(&p.labels).map_err(Arc::from))
            .collect();
        cache.remember(&r, &labels);
        assert_eq!(cache.pods.len() + cache.refused.len(), r.pods.len());
        for (p, l) in r.pods.iter().zip(&labels) {
            assert_eq!(cache.lookup(&p.namespace, &p.name).as_ref(), Some(l));
        }
        assert!(cache.collided.is_empty());
    }

    #[test]
    fn lookups_and_order() {
        let l = Labels::new(&HashMap::from([
            ("tier".to_string(), "web".to_string()),
            ("app".to_string(), "shop".to_string()),
            ("a/b".to_string(), "".to_string()),
        ]))
        .unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l.get("app"), Some("shop"));
        assert_eq!(l.get("a/b"), Some(""));
        assert_eq!(l.get("tier"), Some("web"));
        assert_eq!(l.get("zone"), None);
        assert_eq!(l.get(""), None);
        let keys: Vec<&str> = l.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a/b", "app", "tier"]);
        assert_eq!(
            l.json(),
            r#","labels":{"a/b":"","app":"shop","tier":"web"}"#
        );
        // Nothing escaped: the pairs are read out of the JSON alone.
        assert!(l.text.is_none());
    }

    /// Keys and values the JSON escapes read back unchanged, in a set
    /// with plain ones before and after, and the JSON is their JSON. (The
    /// label syntax check refuses such labels before they are built; the
    /// built set does not rely on it.)
    #[test]
    fn escaped_labels_read_back_unchanged() {
        let odd = [
            "say \"hi\"",
            "back\\slash",
            "line\nbreak",
            "tab\t",
            "\u{1}",
            "é",
        ];
        for (n, v) in odd.iter().enumerate() {
            let map = HashMap::from([
                ("a".to_string(), "first".to_string()),
                (format!("k{n}"), (*v).to_string()),
                (format!("odd{v}"), "x".to_string()),
                ("z".to_string(), String::new()),
            ]);
            let l = Labels::build(&sorted(&map));
            let back: HashMap<String, String> = l
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(back, map, "{v:?}");
            for (k, want) in &map {
                assert_eq!(l.get(k), Some(want.as_str()), "{k:?}");
            }
            let json: HashMap<String, String> =
                serde_json::from_str(&format!("{{{}}}", &l.json()[1..]))
                    .map(|m: HashMap<String, HashMap<String, String>>| m["labels"].clone())
                    .unwrap();
            assert_eq!(json, map, "{v:?}");
            // "é" needs no escape in JSON; the others keep their text.
            assert_eq!(l.text.is_none(), *v == "é", "{v:?}");
        }
    }

    #[test]
    fn equal_sets_are_shared_across_streams_and_dead_ones_swept() {
        let interner = Interner::default();
        let set = |app: &str| HashMap::from([("app".to_string(), app.to_string())]);
        let a = interner.intern(&set("shop")).unwrap();
        let b = interner.intern(&set("shop")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &interner.intern(&set("cart")).unwrap()));
        drop((a, b));
        // Past the sweep threshold only live sets remain.
        let keep: Vec<_> = (0..2000)
            .map(|i| interner.intern(&set(&format!("app-{i}"))).unwrap())
            .filter(|l| l.get("app").is_some_and(|v| v.ends_with('7')))
            .collect();
        assert!(interner.len() < 2000, "{}", interner.len());
        assert!(interner.len() >= keep.len());
        assert!(interner.intern(&HashMap::new()).unwrap().is_empty());
    }
}
