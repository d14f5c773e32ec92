//! The repository's install manifests as the real `kubectl kustomize`
//! renders them.

use std::path::Path;
use std::process::Command;

/// `deploy/<dir>` rendered. Panics when kubectl is missing or refuses the
/// kustomization: `.ci/run` installs kubectl, and these tests must not skip.
pub fn kustomize(dir: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("kubectl must be installed (.ci/run installs it): {e}"));
    assert!(
        out.status.success(),
        "{dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{dir}: {e}"))
}
