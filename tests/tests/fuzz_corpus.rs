//! Every fuzz target's corpus (`fuzz/corpus/<target>/`, the seeds and
//! anything a fuzzing run kept or found) replayed through the same checks
//! the targets run, so a finding stays fixed; the kubelet and cgroup
//! fixtures go through their parsers' checks too, read in place.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use metrics_e2e::fixtures::fixture_path;

/// The corpus files of `target`; there must be some.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// Runs `check` on each input, naming the input that fails.
fn replay(inputs: Vec<(PathBuf, Vec<u8>)>, check: fn(&[u8])) {
    for (path, data) in inputs {
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{} fails its target's checks", path.display());
    }
}

/// Every file of a fixture directory.
fn fixtures(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fixture_path(dir);
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

#[test]
fn kubelet_text_corpus_and_fixtures() {
    replay(corpus("kubelet_text"), metrics_agent::fuzzing::kubelet_text);
    for dir in ["kubelet-metrics-resource", "kubelet-real-1.36"] {
        replay(fixtures(dir), metrics_agent::fuzzing::kubelet_text);
    }
}

#[test]
fn cgroup_files_corpus_and_fixtures() {
    replay(corpus("cgroup_files"), metrics_agent::fuzzing::cgroup_files);
    for dir in ["cgroup-v1", "cgroup-v2"] {
        replay(fixtures(dir), metrics_agent::fuzzing::cgroup_files);
    }
}

#[test]
fn selectors_corpus() {
    replay(corpus("selectors"), metrics_aggregator::fuzzing::selectors);
}

#[test]
fn report_corpus() {
    replay(corpus("report"), metrics_aggregator::fuzzing::report);
}

#[test]
fn ingest_frames_corpus() {
    replay(
        corpus("ingest_frames"),
        metrics_aggregator::fuzzing::ingest_frames,
    );
}

/// The checks catch what they claim to: a report that renders names
/// unescaped would fail them (here, one accepted seed must render).
#[test]
fn the_report_seeds_reach_rendering() {
    use prost::Message;
    let accepted = corpus("report")
        .into_iter()
        .filter(|(_, d)| {
            metrics_proto::v1::NodeReport::decode(d.as_slice())
                .ok()
                .and_then(|r| {
                    metrics_aggregator::report::to_entry(r, None, std::time::Instant::now(), 3).ok()
                })
                .is_some_and(|e| !e.pods.is_empty())
        })
        .count();
    assert!(accepted >= 3, "only {accepted} seeds are accepted reports");
}
