//! Entry points of the fuzz targets in `fuzz/` (also run over their
//! corpora by `tests/fuzz_corpus.rs`): each feeds arbitrary bytes to one
//! parser and checks what must hold for any input, panicking otherwise.

use std::time::{Duration, SystemTime};

use crate::source::cgroup::{layout, read};
use crate::source::{decode, prom};

/// The kubelet's `/metrics/resource` text: decoding never panics, every
/// kept point is usable, and nothing is made up (no more points than
/// sample lines, no more problems named than the cap).
pub fn kubelet_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let (batch, stats) = decode::decode(text, at);
    let lines = text.lines().count();
    assert!(batch.containers() <= lines, "more points than lines");
    assert!(stats.problems.len() <= decode::MAX_PROBLEMS);
    for point in batch
        .node
        .iter()
        .chain(batch.pods.values().flat_map(|c| c.values()))
    {
        assert!(point.cpu_ns > 0 && point.memory_bytes > 0, "{point:?}");
    }
    for (pod, containers) in &batch.pods {
        assert!(!containers.is_empty(), "{pod:?} without containers");
    }
    // The line parser alone agrees on what is a sample.
    let parsed = prom::samples(text).filter(Result::is_ok).count();
    assert!(parsed <= lines);
}

/// cgroup files and names: flat-keyed files (`cpu.stat`, `memory.stat`),
/// single numbers, and the directory names pods and containers are found
/// by. A value found for a key is that key's first line's value.
pub fn cgroup_files(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for key in ["usage_usec", "inactive_file", "total_inactive_file"] {
        if let Some(v) = read::keyed(&text, key) {
            let first = text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse::<u64>().ok());
            assert_eq!(first, Some(v), "{key}");
        }
    }
    for name in text.lines().chain(std::iter::once(text.as_ref())) {
        if let Some(uid) = layout::pod_uid(name) {
            assert!((1..=64).contains(&uid.len()), "{name:?} -> {uid:?}");
            assert!(uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
        }
        if let Some(id) = layout::container_id(name) {
            assert!(
                (12..=128).contains(&id.len()) && name.contains(id),
                "{name:?} -> {id:?}"
            );
        }
        if let Some(id) = layout::status_container_id(name) {
            assert!(name.ends_with(id), "{name:?} -> {id:?}");
        }
        let _ = layout::is_qos_dir(name);
    }
}
