//! metrics.k8s.io/v1beta1 objects rendered to JSON once, at ingest. Only
//! `creationTimestamp` (the response time) is filled in per request, so an
//! object is split around it: `head + time + tail`.

use std::sync::Arc;

#[cfg(test)]
use metrics_proto::v1::PodUsage;
use metrics_proto::v1::Usage;

use crate::format::{write_cpu_quantity, write_go_duration, write_memory_quantity};
use crate::labelset::Labels;
use crate::report::Container;

/// A rendered object; see the module doc. Objects rendered here keep
/// their labels' JSON by reference (one copy per label set, not per
/// object): head ‖ time ‖ `"` ‖ labels ‖ tail. Objects from peers arrive
/// as head ‖ time ‖ tail. Head and tail share one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    text: String,
    /// Where the head ends and the tail starts in `text`.
    split: usize,
    labels: Option<Arc<Labels>>,
}

impl Rendered {
    /// From the JSON before and after the creationTimestamp value.
    pub fn from_parts(head: &str, tail: &str) -> Self {
        let mut text = String::with_capacity(head.len() + tail.len());
        text.push_str(head);
        text.push_str(tail);
        Self {
            text,
            split: head.len(),
            labels: None,
        }
    }

    /// No object (a hit carried in protobuf form).
    pub fn empty() -> Self {
        Self::from_parts("", "")
    }

    pub fn head(&self) -> &str {
        &self.text[..self.split]
    }

    fn tail(&self) -> &str {
        &self.text[self.split..]
    }

    /// Everything after the creationTimestamp value, as one string (for
    /// peers).
    pub fn full_tail(&self) -> String {
        match &self.labels {
            None => self.tail().to_string(),
            Some(l) => {
                let mut t = String::with_capacity(1 + l.json().len() + self.tail().len());
                t.push('"');
                t.push_str(l.json());
                t.push_str(self.tail());
                t
            }
        }
    }

    /// Appends the object with `created` (RFC 3339) as its creationTimestamp.
    pub fn write_to(&self, out: &mut Vec<u8>, created: &str) {
        out.extend_from_slice(self.head().as_bytes());
        out.extend_from_slice(created.as_bytes());
        if let Some(l) = &self.labels {
            out.push(b'"');
            out.extend_from_slice(l.json().as_bytes());
        }
        out.extend_from_slice(self.tail().as_bytes());
    }

    /// Appends the object as a whole answer: with `kind` and `apiVersion`
    /// first (a head that already has them, from an older peer, is kept).
    pub fn write_object(&self, out: &mut Vec<u8>, kind: &str, created: &str) {
        let start = out.len();
        self.write_to(out, created);
        if let Some(prefix) = kind_prefix(&out[start..], kind) {
            out.splice(start..start + 1, prefix.into_bytes());
        }
    }

    /// Bytes this object adds to a response, minus the timestamp.
    pub fn len(&self) -> usize {
        self.text.len() + self.labels.as_ref().map_or(0, |l| 1 + l.json().len())
    }

    /// Never true for a rendered object; for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What replaces the opening `{` of a list item's JSON to make it a whole
/// object: `kind` and `apiVersion` first. None when `object` has them
/// already (from an older peer) or is no JSON object.
pub fn kind_prefix(object: &[u8], kind: &str) -> Option<String> {
    (object.starts_with(b"{") && !object.starts_with(b"{\"kind\""))
        .then(|| format!("{{\"kind\":\"{kind}\",\"apiVersion\":\"metrics.k8s.io/v1beta1\","))
}

/// Appends `s` as a JSON string; names need no escaping (the common case,
/// copied as is), anything else goes through serde_json.
pub fn json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // serde_json's escaping of a &str cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

fn usage_json(out: &mut String, cpu_nanocores: u64, memory_bytes: u64, swap: Option<u64>) {
    out.push_str("{\"cpu\":\"");
    write_cpu_quantity(out, cpu_nanocores);
    out.push_str("\",\"memory\":\"");
    write_memory_quantity(out, memory_bytes);
    if let Some(swap) = swap {
        out.push_str("\",\"swap\":\"");
        write_memory_quantity(out, swap);
    }
    out.push_str("\"}");
}

/// Starts an object: everything up to its creationTimestamp value.
/// Without `kind` and `apiVersion`: list items carry none (clients take
/// them from the list, as metrics-server answers); a single GET adds them
/// ([`Rendered::write_object`]).
fn head(out: &mut String, namespace: Option<&str>, name: &str) {
    out.push_str("{\"metadata\":{\"name\":");
    json_str(out, name);
    if let Some(ns) = namespace {
        out.push_str(",\"namespace\":");
        json_str(out, ns);
    }
    out.push_str(",\"creationTimestamp\":\"");
}

fn times(t: &mut String, timestamp_nanos: i64, window_nanos: i64) {
    t.push_str("},\"timestamp\":\"");
    metrics_proto::time::write_rfc3339(t, timestamp_nanos);
    t.push_str("\",\"window\":\"");
    write_go_duration(t, window_nanos);
    t.push('"');
}

/// A NodeMetrics object; with `swap` in its usage when `swap`.
pub fn node_metrics(name: &str, labels: &Arc<Labels>, u: &Usage, swap: bool) -> Rendered {
    let mut text = String::with_capacity(256 + name.len());
    head(&mut text, None, name);
    let split = text.len();
    times(&mut text, u.timestamp_unix_nanos, u.window_nanos);
    text.push_str(",\"usage\":");
    usage_json(
        &mut text,
        u.cpu_nanocores,
        u.memory_working_set_bytes,
        swap.then_some(u.swap_bytes),
    );
    text.push('}');
    Rendered {
        text,
        split,
        labels: Some(Arc::clone(labels)),
    }
}

/// A PodMetrics object for `p` with `labels`; containers sorted by name.
#[cfg(test)]
pub fn pod_metrics(p: &PodUsage, labels: &Arc<Labels>) -> Rendered {
    let mut containers: Vec<Container> = p.containers.iter().map(Container::of).collect();
    containers.sort_unstable_by(|a, b| a.name.cmp(b.name));
    pod_object(
        &p.namespace,
        &p.name,
        labels,
        p.timestamp_unix_nanos,
        p.window_nanos,
        containers.iter().copied(),
        containers.len(),
        false,
    )
}

/// A PodMetrics object from its parts; the `count` `containers` in the
/// order given.
#[allow(clippy::too_many_arguments)]
pub fn pod_object<'a>(
    namespace: &str,
    name: &str,
    labels: &Arc<Labels>,
    timestamp_ns: i64,
    window_ns: i64,
    containers: impl Iterator<Item = Container<'a>>,
    count: usize,
    swap: bool,
) -> Rendered {
    let mut text = String::with_capacity(192 + namespace.len() + name.len() + 96 * count);
    head(&mut text, Some(namespace), name);
    let split = text.len();
    times(&mut text, timestamp_ns, window_ns);
    text.push_str(",\"containers\":[");
    for (i, c) in containers.enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str("{\"name\":");
        json_str(&mut text, c.name);
        text.push_str(",\"usage\":");
        usage_json(
            &mut text,
            c.cpu_nanocores,
            c.memory_working_set_bytes,
            swap.then_some(c.swap_bytes),
        );
        text.push('}');
    }
    text.push_str("]}");
    Rendered {
        text,
        split,
        labels: Some(Arc::clone(labels)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As a single GET answers it.
    fn render(r: &Rendered, kind: &str, created: &str) -> String {
        let mut out = Vec::new();
        r.write_object(&mut out, kind, created);
        String::from_utf8(out).unwrap()
    }

    /// As a list item.
    fn item(r: &Rendered, created: &str) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out, created);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn node_object_layout() {
        let u = Usage {
            timestamp_unix_nanos: 1_643_309_313_000_000_000,
            window_nanos: 30_000_000_000,
            cpu_nanocores: 487_558_164,
            memory_working_set_bytes: 749_785_088,
            swap_bytes: 0,
        };
        let labels = Labels::new(&std::collections::HashMap::from([
            ("b".to_string(), "2".to_string()),
            ("app.kubernetes.io/name".to_string(), "1".to_string()),
        ]))
        .unwrap();
        let r = node_metrics("minikube", &labels, &u, false);
        // --extra-resources=swap adds swap after memory.
        let with_swap = item(
            &node_metrics(
                "minikube",
                &labels,
                &Usage {
                    swap_bytes: 4096,
                    ..u
                },
                true,
            ),
            "2022-01-27T18:48:43Z",
        );
        assert!(
            with_swap
                .ends_with(r#""usage":{"cpu":"487558164n","memory":"732212Ki","swap":"4Ki"}}"#),
            "{with_swap}"
        );
        let got = render(&r, "NodeMetrics", "2022-01-27T18:48:43Z");
        assert_eq!(
            got,
            r#"{"kind":"NodeMetrics","apiVersion":"metrics.k8s.io/v1beta1","metadata":{"name":"minikube","creationTimestamp":"2022-01-27T18:48:43Z","labels":{"app.kubernetes.io/name":"1","b":"2"}},"timestamp":"2022-01-27T18:48:33Z","window":"30s","usage":{"cpu":"487558164n","memory":"732212Ki"}}"#
        );
        // A list item has no kind or apiVersion, as metrics-server's.
        assert_eq!(
            item(&r, "2022-01-27T18:48:43Z"),
            r#"{"metadata":{"name":"minikube","creationTimestamp":"2022-01-27T18:48:43Z","labels":{"app.kubernetes.io/name":"1","b":"2"}},"timestamp":"2022-01-27T18:48:33Z","window":"30s","usage":{"cpu":"487558164n","memory":"732212Ki"}}"#
        );
        // An object from an older peer that still carries them is not doubled.
        let old = Rendered::from_parts(
            r#"{"kind":"NodeMetrics","apiVersion":"metrics.k8s.io/v1beta1","metadata":{"name":"m","creationTimestamp":""#,
            r#""},"timestamp":"2022-01-27T18:48:33Z","window":"30s","usage":{"cpu":"1","memory":"1"}}"#,
        );
        let once = render(&old, "NodeMetrics", "2022-01-27T18:48:43Z");
        assert_eq!(once.matches("\"kind\"").count(), 1, "{once}");
    }

    #[test]
    fn pod_object_layout() {
        use metrics_proto::v1::ContainerUsage;
        let p = PodUsage {
            namespace: "kube-system".into(),
            name: "kube-scheduler-minikube".into(),
            labels: Default::default(),
            timestamp_unix_nanos: 1_643_311_471_000_000_000,
            window_nanos: 30_000_000_000,
            containers: vec![ContainerUsage {
                name: "kube-scheduler".into(),
                cpu_nanocores: 9_559_630,
                memory_working_set_bytes: 22_244 * 1024,
                swap_bytes: 0,
            }],
        };
        let got = render(
            &pod_metrics(&p, &Labels::empty()),
            "PodMetrics",
            "2022-01-27T19:25:00Z",
        );
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["metadata"]["namespace"], "kube-system");
        assert_eq!(v["timestamp"], "2022-01-27T19:24:31Z");
        assert_eq!(v["containers"][0]["usage"]["cpu"], "9559630n");
        assert_eq!(v["containers"][0]["usage"]["memory"], "22244Ki");
        assert!(got.starts_with(r#"{"kind":"PodMetrics","apiVersion":"metrics.k8s.io/v1beta1","metadata":{"name":"kube-scheduler-minikube","namespace":"kube-system","creationTimestamp":"2022-01-27T19:25:00Z"},"#));
    }

    proptest::proptest! {
        #[test]
        fn json_strings_match_serde_json(s in ".*") {
            let mut out = String::new();
            json_str(&mut out, &s);
            proptest::prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }
    }
}
