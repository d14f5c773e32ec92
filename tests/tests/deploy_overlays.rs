//! Every way to install (the HA base and the overlays under
//! `deploy/overlays`) renders with the real `kubectl kustomize`, every
//! object decodes strictly into its Kubernetes type (a round trip through
//! the typed object loses nothing, so no field is misspelled or misplaced),
//! and the security settings hold in each: non-root, read-only root
//! filesystem, no capabilities, no `nodes/proxy`, write rules limited by
//! `resourceNames`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use metrics_e2e::deploy::kustomize;

const OVERLAYS: [&str; 4] = [
    "base",
    "overlays/single-replica",
    "overlays/kubelet-insecure",
    "overlays/cert-manager",
];

/// The objects `deploy/<dir>` renders to.
fn render(dir: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(&kustomize(dir)).unwrap()
}

/// Decodes `v` as `T` and checks that encoding it again gives `v` back.
fn strict<T: DeserializeOwned + Serialize>(v: &Value) -> T {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{e}: {}", serde_json::to_string_pretty(v).unwrap()));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, v,
        "fields lost decoding {} {}",
        v["kind"], v["metadata"]["name"]
    );
    typed
}

fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    all.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn args(spec: &PodSpec) -> Vec<String> {
    spec.containers[0].args.clone().unwrap_or_default()
}

fn check_pod(what: &str, spec: &PodSpec) {
    let pod_sc = spec.security_context.as_ref().expect(what);
    assert_eq!(pod_sc.run_as_non_root, Some(true), "{what}");
    assert_eq!(pod_sc.run_as_user, Some(65534), "{what}");
    assert!(
        spec.host_network != Some(true) && spec.host_pid != Some(true),
        "{what}"
    );
    for c in &spec.containers {
        let sc = c.security_context.as_ref().expect(what);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
        assert_ne!(sc.privileged, Some(true), "{what}");
        let caps = sc.capabilities.as_ref().expect(what);
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{what}"
        );
        assert!(caps.add.as_ref().is_none_or(Vec::is_empty), "{what}");
        // Whatever comes from the host is mounted read-only.
        for m in c.volume_mounts.iter().flatten() {
            let host = spec
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == m.name && v.host_path.is_some());
            if host {
                assert_eq!(m.read_only, Some(true), "{what}: {}", m.name);
            }
        }
    }
}

fn check_rules(what: &str, rules: &[PolicyRule]) {
    for r in rules {
        let resources = r.resources.clone().unwrap_or_default();
        assert!(
            !resources.iter().any(|x| x == "nodes/proxy" || x == "*"),
            "{what}: {r:?}"
        );
        assert!(!r.verbs.iter().any(|v| v == "*"), "{what}: {r:?}");
        let writes = r
            .verbs
            .iter()
            .any(|v| matches!(v.as_str(), "update" | "patch" | "delete"));
        if writes {
            assert!(
                r.resource_names.as_ref().is_some_and(|n| !n.is_empty()),
                "{what}: writes must name their objects: {r:?}"
            );
        }
    }
}

/// Every object of every install decodes strictly; the security settings
/// hold everywhere.
#[test]
fn every_install_decodes_strictly_and_is_locked_down() {
    for dir in OVERLAYS {
        let all = render(dir);
        assert!(!all.is_empty(), "{dir}");
        for o in &all {
            let what = format!("{dir}: {} {}", o["kind"], o["metadata"]["name"]);
            match o["kind"].as_str().unwrap() {
                "DaemonSet" => {
                    let ds: DaemonSet = strict(o);
                    check_pod(&what, &ds.spec.unwrap().template.spec.unwrap());
                }
                "StatefulSet" => {
                    let sts: StatefulSet = strict(o);
                    check_pod(&what, &sts.spec.unwrap().template.spec.unwrap());
                }
                "ClusterRole" => {
                    let r: ClusterRole = strict(o);
                    check_rules(&what, &r.rules.unwrap_or_default());
                }
                "Role" => {
                    let r: Role = strict(o);
                    check_rules(&what, &r.rules.unwrap_or_default());
                }
                "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(o)),
                "RoleBinding" => drop(strict::<RoleBinding>(o)),
                "Service" => drop(strict::<Service>(o)),
                "ServiceAccount" => drop(strict::<ServiceAccount>(o)),
                "PodDisruptionBudget" => drop(strict::<PodDisruptionBudget>(o)),
                "APIService" => drop(strict::<APIService>(o)),
                // cert-manager's kinds have no type here; checked below.
                "Certificate" | "Issuer" => {
                    assert_eq!(o["apiVersion"], "cert-manager.io/v1", "{what}")
                }
                other => panic!("{what}: unexpected kind {other}"),
            }
            if o["kind"] != "ClusterRole"
                && o["kind"] != "ClusterRoleBinding"
                && o["kind"] != "APIService"
            {
                assert_eq!(o["metadata"]["namespace"], "kube-system", "{what}");
            }
        }
    }
}

#[test]
fn overlays_change_what_they_say_and_nothing_else() {
    let base = render("base");
    let sts = |all: &[Value]| -> StatefulSet {
        strict(find(all, "StatefulSet", "metrics-aggregator").unwrap())
    };
    let ds =
        |all: &[Value]| -> DaemonSet { strict(find(all, "DaemonSet", "metrics-agent").unwrap()) };
    let base_sts = sts(&base);
    let base_args = args(
        base_sts
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap(),
    );
    assert_eq!(base_sts.spec.as_ref().unwrap().replicas, Some(3));
    assert!(base_args.contains(&"--replication-factor=2".to_string()));
    assert!(find(&base, "PodDisruptionBudget", "metrics-aggregator").is_some());

    // Single replica: it owns every node, and no PDB pins it during drains.
    let single = render("overlays/single-replica");
    let s = sts(&single);
    assert_eq!(s.spec.as_ref().unwrap().replicas, Some(1));
    let a = args(s.spec.as_ref().unwrap().template.spec.as_ref().unwrap());
    let want: Vec<String> = base_args
        .iter()
        .map(|x| x.replace("--replication-factor=2", "--replication-factor=1"))
        .collect();
    assert_eq!(a, want);
    assert!(find(&single, "PodDisruptionBudget", "metrics-aggregator").is_none());
    assert_eq!(single.len(), base.len() - 1);

    // Kubelet-insecure: the agents skip verifying their kubelet, and that
    // is the only change.
    let insecure = render("overlays/kubelet-insecure");
    let mut d = ds(&insecure);
    let spec = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    let a = spec.containers[0].args.as_mut().unwrap();
    assert_eq!(a.pop().as_deref(), Some("--kubelet-insecure-tls"));
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        serde_json::to_value(ds(&base)).unwrap()
    );
    assert_eq!(insecure.len(), base.len());

    // cert-manager: the serving certificate lands in the Secret the
    // replicas and agents mount, for every name they are reached by, and
    // kube-apiserver verifies the aggregator with the injected CA.
    let cm = render("overlays/cert-manager");
    let cert = find(&cm, "Certificate", "metrics-aggregator-tls").unwrap();
    assert_eq!(cert["spec"]["secretName"], "metrics-aggregator-tls");
    let names: Vec<&str> = cert["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for n in [
        "metrics-aggregator.kube-system.svc",
        "*.metrics-aggregator-peers.kube-system.svc",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let issuer = &cert["spec"]["issuerRef"]["name"];
    let ca_issuer = find(&cm, "Issuer", issuer.as_str().unwrap()).unwrap();
    let ca_cert = find(&cm, "Certificate", "metrics-pipeline-ca").unwrap();
    assert_eq!(
        ca_issuer["spec"]["ca"]["secretName"],
        ca_cert["spec"]["secretName"]
    );
    assert_eq!(ca_cert["spec"]["isCA"], true);
    let api: APIService = strict(find(&cm, "APIService", "v1beta1.metrics.k8s.io").unwrap());
    assert_ne!(
        api.spec.as_ref().unwrap().insecure_skip_tls_verify,
        Some(true)
    );
    assert_eq!(
        api.metadata.annotations.unwrap()["cert-manager.io/inject-ca-from"],
        "kube-system/metrics-aggregator-tls"
    );
    // The files replace the bootstrapped PKI, for replicas and agents, and
    // its rights go with it.
    let cm_sts = sts(&cm);
    let spec = cm_sts
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let a = args(spec);
    for f in [
        "--tls-cert-file=/certs/tls.crt",
        "--tls-private-key-file=/certs/tls.key",
        "--peer-ca-file=/certs/ca.crt",
    ] {
        assert!(a.contains(&f.to_string()), "{a:?}");
    }
    assert_eq!(&a[..base_args.len()], &base_args[..], "base flags kept");
    let vol = |spec: &PodSpec, name: &str| {
        spec.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .cloned()
            .unwrap()
    };
    let v = vol(spec, "certs");
    assert_eq!(
        v.secret.unwrap().secret_name.as_deref(),
        Some("metrics-aggregator-tls")
    );
    let agent = ds(&cm);
    let v = vol(
        agent.spec.as_ref().unwrap().template.spec.as_ref().unwrap(),
        "certs",
    );
    assert!(v.config_map.is_none(), "{v:?}");
    assert_eq!(
        v.secret.unwrap().secret_name.as_deref(),
        Some("metrics-aggregator-tls")
    );
    for (kind, name) in PKI_RBAC {
        assert!(find(&cm, kind, name).is_none(), "{kind} {name}");
    }
    assert_eq!(cm.len(), base.len() - PKI_RBAC.len() + 4);
}

/// The rights the bootstrapped PKI needs, granted in the base.
const PKI_RBAC: [(&str, &str); 4] = [
    ("Role", "metrics-aggregator-pki"),
    ("RoleBinding", "metrics-aggregator-pki"),
    ("ClusterRole", "metrics-aggregator:apiservice-ca"),
    ("ClusterRoleBinding", "metrics-aggregator:apiservice-ca"),
];

/// The base installs with no certificate step: no certificate files, no
/// insecure APIService; the rights to keep the PKI name exactly the
/// objects the aggregator writes by default; agents mount the published
/// bundle.
#[test]
fn base_bootstraps_its_own_pki_with_rights_to_exactly_those_objects() {
    let base = render("base");
    let api: APIService = strict(find(&base, "APIService", "v1beta1.metrics.k8s.io").unwrap());
    let spec = api.spec.unwrap();
    assert_eq!(spec.insecure_skip_tls_verify, None);
    assert_eq!(spec.ca_bundle, None, "written by the replicas");
    let sts: StatefulSet = strict(find(&base, "StatefulSet", "metrics-aggregator").unwrap());
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let a = args(&pod);
    assert!(!a.iter().any(|f| f.starts_with("--tls-")), "{a:?}");
    assert!(!a.iter().any(|f| f.starts_with("--peer-ca-file")), "{a:?}");
    let env: Vec<String> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    for e in ["POD_NAME", "POD_NAMESPACE", "POD_IP"] {
        assert!(env.contains(&e.to_string()), "{env:?}");
    }
    // The names the rules allow are the aggregator's defaults.
    let help = std::process::Command::new(metrics_e2e::procs::binary("metrics-aggregator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let role: Role = strict(find(&base, "Role", "metrics-aggregator-pki").unwrap());
    let mut named = Vec::new();
    for r in role.rules.unwrap() {
        match r.resource_names {
            Some(names) => {
                assert_eq!(r.verbs, ["get", "update"]);
                named.extend(names);
            }
            None => assert_eq!(r.verbs, ["create"], "only create goes unnamed"),
        }
    }
    assert_eq!(named, ["metrics-aggregator-ca"]);
    for flag in ["--pki-secret", "--pki-configmap"] {
        let line = help
            .lines()
            .skip_while(|l| !l.contains(flag))
            .take(6)
            .collect::<String>();
        assert!(
            line.contains("[default: metrics-aggregator-ca]"),
            "{flag}: {line}"
        );
    }
    let cr: ClusterRole =
        strict(find(&base, "ClusterRole", "metrics-aggregator:apiservice-ca").unwrap());
    let rules = cr.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&["v1beta1.metrics.k8s.io".to_string()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "patch"]);
    let line = help
        .lines()
        .skip_while(|l| !l.contains("--pki-apiservice"))
        .take(6)
        .collect::<String>();
    assert!(line.contains("[default: v1beta1.metrics.k8s.io]"), "{line}");
    // Agents verify the aggregator with the ConfigMap the replicas publish.
    let ds: DaemonSet = strict(find(&base, "DaemonSet", "metrics-agent").unwrap());
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let certs = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "certs")
        .unwrap();
    assert_eq!(
        certs.config_map.as_ref().unwrap().name,
        "metrics-aggregator-ca"
    );
    assert!(args(&pod).contains(&"--aggregator-ca-file=/certs/ca.crt".to_string()));
}
