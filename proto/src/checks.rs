//! What an aggregator accepts of a report, checked the same way by the
//! agent (which drops a pod the aggregator would refuse before sending it)
//! and by the aggregator (which drops such a pod alone when it still
//! arrives).

use std::collections::HashMap;

use crate::v1::PodUsage;
use crate::MAX_CONTAINERS_PER_POD;

/// Most labels on one object (well above what clusters use; Node Feature
/// Discovery can exceed it on nodes).
pub const MAX_LABELS: usize = 256;

/// Lower-case alphanumerics and `-`, starting and ending alphanumeric.
fn label_chars(b: &[u8]) -> bool {
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// True for a valid DNS-1123 subdomain (node and pod names).
///
/// One pass over the bytes: every label starts and ends alphanumeric
/// exactly when the name does and each dot has an alphanumeric on both
/// sides. Runs for every pod of every report.
pub fn is_dns_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    b.len() <= 253
        && alnum(first)
        && alnum(last)
        && b.iter().enumerate().all(|(i, &c)| match c {
            b'-' => true,
            // Not first or last (those are alphanumeric), so both
            // neighbours exist.
            b'.' => alnum(b[i - 1]) && alnum(b[i + 1]),
            c => alnum(c),
        })
}

/// At most 64 characters of `s`, for messages about hostile input.
fn cut(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// True for a valid DNS-1123 label (namespace and container names).
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && label_chars(s.as_bytes())
}

/// The name part of a label key and a non-empty label value, as the API
/// server checks them: up to 63 ASCII alphanumerics, `-`, `_` and `.`,
/// starting and ending alphanumeric.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: `[prefix/]name`, the prefix a DNS-1123 subdomain.
pub fn is_label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(k),
    }
}

/// A label value: empty, or like a key's name part.
pub fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_label_name(v)
}

/// `namespace/name` of a pod, cut to a length fit for logs and answers.
pub fn pod_key(p: &PodUsage) -> String {
    format!("{}/{}", p.namespace, p.name)
        .chars()
        .take(128)
        .collect()
}

/// A sample time and window must both be positive.
pub fn check_time(ts: i64, window: i64) -> Result<(), &'static str> {
    if ts <= 0 {
        return Err("timestamp must be positive");
    }
    if window <= 0 {
        return Err("window must be positive");
    }
    Ok(())
}

/// A label set's count and sizes.
pub fn check_labels(labels: &HashMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels exceed {MAX_LABELS}", labels.len()));
    }
    for (k, v) in labels {
        if !is_label_key(k) {
            return Err(format!("invalid label key {:?}", cut(k)));
        }
        if !is_label_value(v) {
            return Err(format!("label {k:?} has an invalid value {:?}", cut(v)));
        }
    }
    Ok(())
}

/// Largest CPU (nanocores) or memory (bytes) value served: a Kubernetes
/// quantity holds an int64, and no machine comes near it (9.2 billion
/// cores, 8 EiB), so a larger value is a broken sample, not a rounding case.
pub const MAX_USAGE: u64 = i64::MAX as u64;

/// Refuses usage values a quantity cannot carry exactly.
pub fn check_usage(cpu_nanocores: u64, memory_bytes: u64) -> Result<(), &'static str> {
    if cpu_nanocores > MAX_USAGE || memory_bytes > MAX_USAGE {
        return Err("usage beyond what a quantity holds (2^63)");
    }
    Ok(())
}

/// Why a node's usage cannot be served, if it cannot: the aggregator
/// refuses such a report, so the agent leaves the usage out instead.
pub fn check_node_usage(u: &crate::v1::Usage) -> Result<(), &'static str> {
    check_usage(u.cpu_nanocores, u.memory_working_set_bytes)?;
    check_time(u.timestamp_unix_nanos, u.window_nanos)
}

/// Pods with at most this many containers are checked for repeated names
/// without a set.
const FEW_CONTAINERS: usize = 8;

/// Why one pod cannot be served, if it cannot (its labels apart).
pub fn check_pod(p: &PodUsage) -> Result<(), String> {
    if !is_dns_subdomain(&p.namespace) || !is_dns_subdomain(&p.name) {
        return Err("invalid namespace or name".into());
    }
    if p.containers.is_empty() || p.containers.len() > MAX_CONTAINERS_PER_POD {
        return Err(format!(
            "{} containers (1 to {MAX_CONTAINERS_PER_POD} allowed)",
            p.containers.len()
        ));
    }
    // Most pods have a few containers: comparing each name with those
    // before it costs less than building a set per pod. Larger pods (up to
    // MAX_CONTAINERS_PER_POD) get the set, so a pod costs linear time.
    let mut seen = (p.containers.len() > FEW_CONTAINERS)
        .then(|| std::collections::HashSet::with_capacity(p.containers.len()));
    for (i, c) in p.containers.iter().enumerate() {
        if !is_dns_label(&c.name) {
            return Err(format!("invalid container name {:?}", cut(&c.name)));
        }
        let repeated = match &mut seen {
            Some(seen) => !seen.insert(c.name.as_str()),
            None => p.containers[..i].iter().any(|o| o.name == c.name),
        };
        if repeated {
            return Err(format!("two containers named {:?}", c.name));
        }
    }
    check_pod_values(p)
}

/// The part of [`check_pod`] that reads values alone (the containers'
/// usage and the pod's times), for a pod whose names are known to be
/// those of a pod that passed [`check_pod`] whole.
pub fn check_pod_values(p: &PodUsage) -> Result<(), String> {
    for c in &p.containers {
        check_usage(c.cpu_nanocores, c.memory_working_set_bytes)
            .map_err(|e| format!("container {:?}: {e}", cut(&c.name)))?;
    }
    check_time(p.timestamp_unix_nanos, p.window_nanos).map_err(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string of up to 6 characters over an alphabet with each
    /// kind of character, against the definition label by label.
    #[test]
    fn dns_subdomains_as_defined_label_by_label() {
        let by_labels = |s: &str| {
            !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| label_chars(l.as_bytes()))
        };
        let alphabet = [b'a', b'0', b'-', b'.', b'A', b'_'];
        let mut s = Vec::new();
        let mut checked = 0;
        for len in 0..=6u32 {
            for mut n in 0..alphabet.len().pow(len) {
                s.clear();
                for _ in 0..len {
                    s.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                let s = std::str::from_utf8(&s).unwrap();
                assert_eq!(is_dns_subdomain(s), by_labels(s), "{s:?}");
                checked += 1;
            }
        }
        assert!(checked > 50_000);
        for (s, ok) in [
            ("a".repeat(253), true),
            ("a".repeat(254), false),
            ("kube-system.x-1.example".into(), true),
            ("é".into(), false),
        ] {
            assert_eq!(is_dns_subdomain(&s), ok, "{s:?}");
        }
    }

    #[test]
    fn label_keys_and_values_as_the_api_server_checks_them() {
        for ok in [
            "app",
            "app.kubernetes.io/name",
            "k8s-app",
            "a_b.c-D9",
            "feature.node.kubernetes.io/cpu-cpuid.AVX512F",
        ] {
            assert!(is_label_key(ok), "{ok}");
        }
        for bad in [
            "",
            "/name",
            "a/b/../..",
            "pre/",
            "-lead",
            "trail-",
            "has space",
            "nul\0",
            "new\nline",
            "</script>",
            "Upper.Case/name",
            "bidi\u{202e}",
            &"x".repeat(64),
        ] {
            assert!(!is_label_key(bad), "{bad:?}");
        }
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_3-x"));
        for bad in ["-x", "a b", "<b>", "\n", &"v".repeat(64)] {
            assert!(!is_label_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn container_names_are_dns_labels_and_unique() {
        let pod = |names: &[&str]| PodUsage {
            namespace: "ns".into(),
            name: "p".into(),
            timestamp_unix_nanos: crate::time::unix_nanos(std::time::SystemTime::now()),
            window_nanos: 1_000_000_000,
            containers: names
                .iter()
                .map(|n| crate::v1::ContainerUsage {
                    name: n.to_string(),
                    cpu_nanocores: 1,
                    memory_working_set_bytes: 1,
                    swap_bytes: 0,
                })
                .collect(),
            ..PodUsage::default()
        };
        assert!(check_pod(&pod(&["app", "sidecar-1"])).is_ok());
        let mut huge = pod(&["app"]);
        huge.containers[0].cpu_nanocores = u64::MAX;
        assert!(check_pod(&huge).is_err());
        huge.containers[0].cpu_nanocores = i64::MAX as u64;
        assert!(check_pod(&huge).is_ok(), "2^63 - 1 still fits");
        for bad in [
            &["App"][..],
            &["a_b"],
            &["x\0"],
            &["a", "a"],
            &["</script>"],
        ] {
            assert!(check_pod(&pod(bad)).is_err(), "{bad:?}");
        }
        // Repeated names are found in small pods and in large ones, at any
        // place.
        for n in [2, FEW_CONTAINERS, FEW_CONTAINERS + 1, 40] {
            let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            assert!(check_pod(&pod(&names)).is_ok(), "{n} distinct");
            for (a, b) in [(0, 1), (0, n - 1), (n / 2, n - 1)] {
                if a == b {
                    continue;
                }
                let mut twice = names.clone();
                twice[b] = twice[a];
                let err = check_pod(&pod(&twice)).unwrap_err();
                assert!(err.contains("two containers named"), "{n}: {err}");
            }
        }
    }
}
