//! Certificates with no manual step, against the stand-in API server:
//! two replicas started at once end with one CA, publish its bundle in the
//! ConfigMap agents mount and in the APIService's caBundle (switching
//! insecureSkipTLSVerify off), and serve certificates issued from it. An
//! agent trusting the published bundle streams; one trusting another CA
//! is refused. Then the CA rotates (short lifetimes here) while agents
//! stream, replicas query each other, and a client re-reading the
//! APIService's caBundle (as kube-apiserver does) keeps connecting: every
//! request made across the switch verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use serde_json::{json, Value};

use metrics_e2e::apiserver::{
    authentication_configmap, endpoint_slice, service_account_token, FakeApiServer,
};
use metrics_e2e::https::get_as;
use metrics_e2e::kubelet::{self, FakeKubelet, FakeNode};
use metrics_e2e::pki::{Leaf, Pair, TestCa};
use metrics_e2e::procs::{free_port, start_agent, start_secure_aggregator, AggregatorProc, Proc};

const AUDIENCE: &str = "metrics-aggregator";
const PEERS: &str = "metrics-aggregator-peers";
const APISERVICE: &str = "v1beta1.metrics.k8s.io";

fn secret_field(api: &FakeApiServer, key: &str) -> Option<String> {
    let s = api.object("secrets", "kube-system", "metrics-aggregator-ca")?;
    let b: ByteString = serde_json::from_value(s["data"][key].clone()).ok()?;
    String::from_utf8(b.0).ok()
}

fn configmap_bundle(api: &FakeApiServer) -> Option<String> {
    let c = api.object("configmaps", "kube-system", "metrics-aggregator-ca")?;
    c["data"]["ca.crt"].as_str().map(str::to_owned)
}

fn apiservice_bundle(api: &FakeApiServer) -> Option<String> {
    let s = api.object("apiservices", "", APISERVICE)?;
    let b: ByteString = serde_json::from_value(s["spec"]["caBundle"].clone()).ok()?;
    String::from_utf8(b.0).ok()
}

/// Writes `text` to `path` by rename, as the kubelet swaps a ConfigMap
/// volume's contents.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn node_names(agg: &AggregatorProc, ca: &Path, admin: &Pair) -> anyhow::Result<Vec<String>> {
    let (code, body) = get_as(
        agg.api,
        ca,
        Some(admin),
        "/apis/metrics.k8s.io/v1beta1/nodes",
        &[],
    )
    .await?;
    anyhow::ensure!(code == 200, "{code}: {body}");
    let v: Value = serde_json::from_str(&body)?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
        .collect())
}

fn agent(d: &Path, node: &str, k: &FakeKubelet, agg: &AggregatorProc, ca: &Path) -> Proc {
    let kubelet_token = d.join("kubelet-token");
    std::fs::write(&kubelet_token, "kt").unwrap();
    let token = d.join(format!("agent-token-{node}"));
    std::fs::write(&token, format!("agent-{node}")).unwrap();
    let mut flags = k.agent_flags(&kubelet_token);
    flags.extend([
        format!("--aggregator={}", agg.grpc_url()),
        format!("--aggregator-ca-file={}", ca.display()),
        format!("--aggregator-token-file={}", token.display()),
        "--metric-resolution=1s".into(),
    ]);
    start_agent(d, node, &flags).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_bootstrap_one_ca_publish_it_and_rotate_it_without_a_gap() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let client_ca = TestCa::new(d, "client-ca").unwrap();
    let front_proxy_ca = TestCa::new(d, "front-proxy-ca").unwrap();
    let admin = client_ca
        .issue(
            d,
            "admin",
            Leaf::Client {
                cn: "admin",
                orgs: &["system:masters"],
            },
            false,
        )
        .unwrap();
    let api = FakeApiServer::start(d).await.unwrap();
    api.apply(
        "configmaps",
        authentication_configmap(&client_ca.pem, &front_proxy_ca.pem),
    );
    // As the manifests install it: no caBundle yet, verification off.
    api.apply(
        "apiservices",
        json!({"metadata": {"name": APISERVICE},
               "spec": {"group": "metrics.k8s.io", "version": "v1beta1",
                        "insecureSkipTLSVerify": true,
                        "service": {"namespace": "kube-system", "name": "metrics-aggregator", "port": 443}}}),
    );
    for n in ["node-a", "node-b", "node-c", "node-x"] {
        api.set_token(
            &format!("agent-{n}"),
            service_account_token("kube-system", "metrics-agent", Some(n), &[AUDIENCE]),
        );
    }
    api.set_token(
        "peer-token",
        service_account_token("kube-system", "metrics-aggregator", None, &[AUDIENCE]),
    );
    let kubeconfig = api.kubeconfig(d, "kubeconfig").unwrap();
    let peer_token = d.join("peer-token");
    std::fs::write(&peer_token, "peer-token\n").unwrap();
    let ports: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
    for (i, (_, grpc)) in ports.iter().enumerate() {
        api.apply(
            "endpointslices",
            endpoint_slice(PEERS, &format!("agg-{i}"), *grpc),
        );
    }

    // Both replicas read the (missing) CA Secret before either creates it.
    api.gather_gets(2);
    let start = |i: usize| {
        let rd = d.join(format!("agg-{i}"));
        std::fs::create_dir_all(&rd).unwrap();
        let (api_port, grpc_port) = ports[i];
        let kubeconfig = kubeconfig.clone();
        let peer_token = peer_token.clone();
        async move {
            start_secure_aggregator(
                &rd,
                &[
                    &format!("--kubeconfig={}", kubeconfig.display()),
                    "--pki=kubernetes",
                    "--pki-ca-validity=60s",
                    "--pki-ca-propagation=6s",
                    "--pki-cert-validity=1m",
                    &format!("--shard-id=agg-{i}"),
                    &format!("--peers-service=kube-system/{PEERS}"),
                    "--replication-factor=1",
                    &format!("--peer-token-file={}", peer_token.display()),
                    &format!("--secure-port={api_port}"),
                    &format!("--grpc-port={grpc_port}"),
                ],
            )
            .await
            .unwrap()
        }
    };
    let (a0, a1) = tokio::join!(start(0), start(1));
    let t0 = Instant::now();
    let aggs = [a0, a1];

    // One CA, created once.
    let posts: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST /api/v1/namespaces/kube-system/secrets"))
        .collect();
    assert_eq!(
        posts.len(),
        2,
        "both replicas tried to create it: {posts:?}"
    );
    let first_ca = secret_field(&api, "ca.crt").expect("the CA Secret exists");
    // Its bundle is published for agents and for kube-apiserver.
    let deadline = Instant::now() + Duration::from_secs(30);
    while configmap_bundle(&api).as_deref().map(str::trim) != Some(first_ca.trim())
        || apiservice_bundle(&api).as_deref().map(str::trim) != Some(first_ca.trim())
    {
        assert!(Instant::now() < deadline, "bundle never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let svc = api.object("apiservices", "", APISERVICE).unwrap();
    assert_eq!(svc["spec"]["insecureSkipTLSVerify"], json!(false));
    assert_eq!(
        svc["spec"]["service"]["name"], "metrics-aggregator",
        "the rest is kept"
    );

    // The kubelet's copy of the ConfigMap, as agents mount it.
    let mounted: PathBuf = d.join("mounted-ca.crt");
    write_atomically(&mounted, &configmap_bundle(&api).unwrap());
    // Both replicas serve certificates from that CA.
    let ca_only = d.join("first-ca.crt");
    std::fs::write(&ca_only, &first_ca).unwrap();
    for agg in &aggs {
        let (code, _) = get_as(agg.api, &ca_only, Some(&admin), "/readyz", &[])
            .await
            .unwrap();
        // Verified (else get_as fails); not ready yet, as nothing reports.
        assert!(matches!(code.as_u16(), 200 | 500), "{code}");
    }

    // Agents trusting the published bundle stream; one trusting another
    // CA is refused and never shows up.
    let mut kubelets = Vec::new();
    let mut agents = Vec::new();
    for n in ["node-a", "node-b"] {
        let k = kubelet::start(FakeNode::one_pod(n), "kt", d).await.unwrap();
        agents.push(agent(d, n, &k, &aggs[0], &mounted));
        kubelets.push(k);
    }
    let foreign = TestCa::new(d, "someone-else").unwrap();
    let kx = kubelet::start(FakeNode::one_pod("node-x"), "kt", d)
        .await
        .unwrap();
    let stranger = agent(d, "node-x", &kx, &aggs[1], &foreign.file);

    let want_ab = vec!["node-a".to_string(), "node-b".to_string()];
    let deadline = Instant::now() + Duration::from_secs(30);
    for agg in &aggs {
        loop {
            match node_names(agg, &mounted, &admin).await {
                Ok(got) if got == want_ab => break,
                other => assert!(
                    Instant::now() < deadline,
                    "{other:?}\n{}",
                    agg.proc.log_text()
                ),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let log = stranger.log_text();
    assert!(!log.contains("stream open"), "{log}");
    assert!(log.contains("aggregator stream failed"), "{log}");

    // Rotation: the CA lives 60 s, so a next one is published at about
    // 40 s and signs 6 s later; the first expires at 60 s. Across all of
    // it, every request made the way clients make them must verify.
    let mut checks = 0u32;
    let mut failures: Vec<String> = Vec::new();
    let mut saw_both = false;
    let mut promoted_at: Option<Instant> = None;
    let mut late_agent: Option<(FakeKubelet, Proc)> = None;
    let want_abc = vec![
        "node-a".to_string(),
        "node-b".to_string(),
        "node-c".to_string(),
    ];
    let deadline = t0 + Duration::from_secs(150);
    loop {
        assert!(
            Instant::now() < deadline,
            "rotation did not complete: checks {checks}, failures {failures:?}\n{}\n{}",
            aggs[0].proc.log_text(),
            aggs[1].proc.log_text()
        );
        // The kubelet refreshes the mounted ConfigMap.
        if let Some(b) = configmap_bundle(&api) {
            if std::fs::read_to_string(&mounted).ok().as_deref() != Some(b.as_str()) {
                write_atomically(&mounted, &b);
            }
        }
        // kube-apiserver connects with the APIService's caBundle as it is now.
        let bundle = apiservice_bundle(&api).unwrap();
        saw_both |= bundle.matches("BEGIN CERTIFICATE").count() >= 2;
        let now_ca = d.join("apiservice-ca.crt");
        std::fs::write(&now_ca, &bundle).unwrap();
        let want = if late_agent.is_some() {
            &want_abc
        } else {
            &want_ab
        };
        for (i, agg) in aggs.iter().enumerate() {
            checks += 1;
            match node_names(agg, &now_ca, &admin).await {
                // A replica lists every node: its peer's part came over a
                // verified peer connection, the agents' streams are up.
                Ok(got) if &got == want => {}
                // A node just started may take a moment to be listed.
                Ok(got) if late_agent.is_some() && got == want_ab => {}
                Ok(got) => failures.push(format!("agg-{i} at {:?}: {got:?}", t0.elapsed())),
                Err(e) => failures.push(format!("agg-{i} at {:?}: {e:#}", t0.elapsed())),
            }
        }
        let current = secret_field(&api, "ca.crt").unwrap();
        if promoted_at.is_none() && current != first_ca {
            assert_eq!(
                secret_field(&api, "previous.crt").as_deref(),
                Some(first_ca.as_str()),
                "the old CA is kept as previous"
            );
            promoted_at = Some(Instant::now());
        }
        if let Some(at) = promoted_at {
            // Replicas move to the new CA within a few checks.
            let new_only = d.join("new-ca.crt");
            std::fs::write(&new_only, &current).unwrap();
            let mut moved = true;
            for agg in &aggs {
                moved &= get_as(agg.api, &new_only, Some(&admin), "/readyz", &[])
                    .await
                    .is_ok();
            }
            if moved && late_agent.is_none() {
                // An agent connecting now verifies the new certificates
                // with the bundle the kubelet refreshed.
                let k = kubelet::start(FakeNode::one_pod("node-c"), "kt", d)
                    .await
                    .unwrap();
                let p = agent(d, "node-c", &k, &aggs[1], &mounted);
                late_agent = Some((k, p));
            }
            assert!(
                moved || at.elapsed() < Duration::from_secs(20),
                "replicas still serve the old CA 20 s after the switch"
            );
            let old_gone = !bundle.contains(first_ca.trim());
            if moved && old_gone {
                let names = node_names(&aggs[0], &now_ca, &admin).await;
                if names.as_ref().is_ok_and(|n| n == &want_abc) {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        saw_both,
        "the bundle never carried two CAs during the overlap"
    );
    assert!(checks > 50, "too few checks across the rotation: {checks}");
    assert!(
        failures.is_empty(),
        "{} of {checks} requests failed across the rotation: {failures:?}",
        failures.len()
    );
    // The expired CA leaves the Secret too (a later rotation may have put
    // the second one there as previous by then).
    let deadline = Instant::now() + Duration::from_secs(30);
    while secret_field(&api, "previous.crt").as_deref() == Some(first_ca.as_str()) {
        assert!(
            Instant::now() < deadline,
            "expired CA never dropped ({:?})\n{}",
            t0.elapsed(),
            aggs[0].proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop((agents, kubelets, stranger, kx, late_agent));
}
