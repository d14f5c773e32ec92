//! The release binaries run as the manifests run them: as uid 65534 with no
//! capabilities and nothing writable (every mount read-only; the manifests
//! mount no writable volume), and still serve: an agent reads a kubelet and
//! reports, the aggregator serves its node. The sandbox is a private mount
//! namespace (`unshare`, root only) whose mounts are remounted read-only,
//! entered through `setpriv`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use metrics_e2e::https;
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_e2e::procs::{run_binaries_through, shared_cert, start_agent, start_aggregator, Proc};
use metrics_e2e::wait::eventually;

const SANDBOX: &str = r#"#!/bin/sh
# usage: sandbox COMMAND ARGS... ; runs COMMAND as 65534:65534, every mount read-only
set -e
awk '{print $5}' /proc/self/mountinfo | while read -r mp; do
  case "$mp" in /proc|/proc/*|/sys|/sys/*) continue ;; esac
  mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --no-new-privs "$@"
"#;

fn status_field(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("{field} in {text}"))
        .trim()
        .to_owned()
}

fn check_identity(what: &str, p: &Proc) {
    let pid = p.child.id().expect(what);
    let uid = status_field(pid, "Uid:");
    assert!(
        uid.split_whitespace().all(|u| u == "65534"),
        "{what}: Uid {uid}"
    );
    let gid = status_field(pid, "Gid:");
    assert!(
        gid.split_whitespace().all(|g| g == "65534"),
        "{what}: Gid {gid}"
    );
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000", "{what}");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_run_as_nobody_with_nothing_writable() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Readable (not writable) by uid 65534, as a mounted Secret is.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sandbox = d.join("sandbox");
    std::fs::write(&sandbox, SANDBOX).unwrap();
    std::fs::set_permissions(&sandbox, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sandbox = vec![
        "unshare".to_string(),
        "--mount".into(),
        "--propagation=private".into(),
        sandbox.display().to_string(),
    ];

    // The sandbox itself: nobody, and no write succeeds, not even in the
    // world-writable places.
    let probe = std::process::Command::new(&sandbox[0])
        .args(&sandbox[1..])
        .args([
            "/bin/sh",
            "-c",
            "id -u; for f in /tmp/p /var/tmp/p /dev/shm/p \"$0/p\"; do \
             if touch \"$f\" 2>/dev/null; then echo \"wrote $f\"; fi; done",
        ])
        .arg(d)
        .output()
        .expect("unshare and setpriv (util-linux) must be installed");
    let out = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success(),
        "the sandbox needs root: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert_eq!(out.trim(), "65534", "{out}");

    run_binaries_through(sandbox);
    let (cert, key) = shared_cert(d);
    for f in [&cert, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let agg = start_aggregator(
        d,
        &[
            &format!("--tls-cert-file={cert}"),
            &format!("--tls-private-key-file={key}"),
        ],
    )
    .await
    .unwrap();
    let k = kubelet::start(FakeNode::one_pod("ro-node"), "kt", d)
        .await
        .unwrap();
    std::fs::set_permissions(&k.ca_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token = d.join("kubelet-token");
    std::fs::write(&token, "kt").unwrap();
    let agent = start_agent(
        d,
        "ro-node",
        &[k.agent_flags(&token), agg.agent_flags(None)].concat(),
    )
    .unwrap();

    let url = format!(
        "{}/apis/metrics.k8s.io/v1beta1/nodes/ro-node",
        agg.api_url()
    );
    let served = eventually(
        Duration::from_secs(30),
        async || matches!(https::get(&url, &agg.ca, &[]).await, Ok((code, _, _)) if code == 200),
    )
    .await;
    assert!(
        served,
        "agent:\n{}\naggregator:\n{}",
        agent.log_text(),
        agg.proc.log_text()
    );
    check_identity("aggregator", &agg.proc);
    check_identity("agent", &agent);
}
