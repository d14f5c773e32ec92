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
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| label_chars(l.as_bytes()))
}

/// True for a valid DNS-1123 label (namespace names).
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && label_chars(s.as_bytes())
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
        if k.is_empty() || k.len() > 317 || v.len() > 63 {
            return Err(format!("label {k:?} has an invalid key or value length"));
        }
    }
    Ok(())
}

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
    if p.containers
        .iter()
        .any(|c| c.name.is_empty() || c.name.len() > 253)
    {
        return Err("invalid container name".into());
    }
    check_time(p.timestamp_unix_nanos, p.window_nanos).map_err(str::to_owned)
}
