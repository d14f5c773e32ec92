//! The one way tests reach the shared, read-only fixtures: in place, never
//! copied. `METRICS_SHARED_DIR` overrides the default `../shared` beside the
//! workspace.

use std::path::PathBuf;

/// Directory holding `fixtures/`.
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("METRICS_SHARED_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// Path of a fixture, e.g. `kubelet-metrics-resource/kind-k8s-1.21_70pods.prom`.
/// Panics with a clear message when the shared directory is missing: these
/// tests are required and must not silently skip.
pub fn fixture_path(rel: &str) -> PathBuf {
    let path = shared_dir().join("fixtures").join(rel);
    assert!(
        path.exists(),
        "fixture {} not found; clone the project with ../shared beside it or set METRICS_SHARED_DIR",
        path.display()
    );
    path
}

/// Contents of a text fixture.
pub fn fixture(rel: &str) -> String {
    let path = fixture_path(rel);
    match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}
