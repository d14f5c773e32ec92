//! Names the kubelet and container runtimes give pod and container
//! cgroups, for both cgroup drivers:
//!
//! | driver | pod | container |
//! |---|---|---|
//! | cgroupfs | `kubepods/[burstable/|besteffort/]pod<uid>` | `<id>`, `crio-<id>` |
//! | systemd | `kubepods.slice/[kubepods-<qos>.slice/]kubepods[-<qos>]-pod<uid_with_underscores>.slice` | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` |
//!
//! CRI-O's `crio-conmon-<id>.scope` monitors are not containers.

/// The top of the kubepods tree under a hierarchy root, either driver.
pub const KUBEPODS_ROOTS: [&str; 2] = ["kubepods.slice", "kubepods"];

/// QoS class directories below the kubepods root; Guaranteed pods sit
/// directly under it.
pub fn is_qos_dir(name: &str) -> bool {
    matches!(
        name,
        "burstable" | "besteffort" | "kubepods-burstable.slice" | "kubepods-besteffort.slice"
    )
}

/// Pod UID (with dashes) from a pod cgroup directory name.
pub fn pod_uid(name: &str) -> Option<String> {
    if let Some(uid) = name.strip_prefix("pod") {
        return is_uid(uid).then(|| uid.to_owned());
    }
    let stem = name.strip_suffix(".slice")?;
    let (_, uid) = stem.rsplit_once("-pod")?;
    if !stem.starts_with("kubepods") {
        return None;
    }
    let uid = uid.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn is_container_id(s: &str) -> bool {
    (12..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Container ID from a container cgroup directory name.
pub fn container_id(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    if stem.starts_with("crio-conmon-") {
        return None;
    }
    let id = ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|p| stem.strip_prefix(p))
        .unwrap_or(stem);
    is_container_id(id).then_some(id)
}

/// Container ID from a pod status `containerID` (`containerd://<id>`,
/// `cri-o://<id>`, `docker://<id>`).
pub fn status_container_id(s: &str) -> Option<&str> {
    let (_, id) = s.split_once("://")?;
    is_container_id(id).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pod_dirs() {
        let uid = "4c2b6a1e-9a3f-4a71-8f55-2b6f3f1d2c10";
        let under = uid.replace('-', "_");
        assert_eq!(pod_uid(&format!("pod{uid}")).as_deref(), Some(uid));
        for qos in ["", "-burstable", "-besteffort"] {
            let name = format!("kubepods{qos}-pod{under}.slice");
            assert_eq!(pod_uid(&name).as_deref(), Some(uid), "{name}");
        }
        for bad in [
            "kubepods-burstable.slice",
            "burstable",
            "system.slice",
            "podxyz",
            "user-pod1.slice",
        ] {
            assert_eq!(pod_uid(bad), None, "{bad}");
        }
    }

    #[test]
    fn container_dirs() {
        for name in [
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("docker-{ID}.scope"),
            format!("crio-{ID}"),
            ID.to_string(),
        ] {
            assert_eq!(container_id(&name), Some(ID), "{name}");
        }
        assert_eq!(container_id(&format!("crio-conmon-{ID}.scope")), None);
        assert_eq!(container_id(&format!("crio-conmon-{ID}")), None);
        assert_eq!(container_id("cgroup.procs"), None);
        assert_eq!(container_id("init.scope"), None);
        assert_eq!(status_container_id(&format!("containerd://{ID}")), Some(ID));
        assert_eq!(status_container_id(&format!("cri-o://{ID}")), Some(ID));
        assert_eq!(status_container_id("containerd://"), None);
    }
}
