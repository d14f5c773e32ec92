//! Delegated authentication and authorization against a stand-in
//! kube-apiserver: front-proxy certificates and identity headers, client
//! certificates, bearer tokens (TokenReview), SubjectAccessReview with
//! caching, CA rotation through the ConfigMap, and agent identity on the
//! gRPC stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use metrics_e2e::apiserver::{
    authentication_configmap, service_account_token, FakeApiServer, TokenEntry, API_AUDIENCE,
};
use metrics_e2e::https::get_as;
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_e2e::pki::{Leaf, Pair, TestCa};
use metrics_e2e::procs::{
    kubeconfig_as, kubectl, start_agent, start_secure_aggregator, AggregatorProc,
};
use metrics_e2e::reports::node_report;
use metrics_e2e::wait::until;
use metrics_proto::v1::ingest_client::IngestClient;

const V1: &str = "/apis/metrics.k8s.io/v1beta1";
const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

/// Authenticated users may GET discovery paths (the default
/// `system:discovery` role); alice may read pods in "ns"; bob may read
/// nodes; carol may read everything; the aggregator's discovery identity
/// may GET the group version; everyone else is denied.
fn policy(spec: &Value) -> (bool, String) {
    let user = spec["user"].as_str().unwrap_or_default();
    let ra = &spec["resourceAttributes"];
    let nra = &spec["nonResourceAttributes"];
    let authenticated = spec["groups"]
        .as_array()
        .is_some_and(|g| g.iter().any(|g| g == "system:authenticated"));
    let discovery = nra["verb"] == "get"
        && nra["path"]
            .as_str()
            .is_some_and(|p| p == "/apis" || p.starts_with("/apis/") || p.starts_with("/api"));
    let allowed = authenticated && discovery
        || match user {
            "alice" => ra["resource"] == "pods" && ra["namespace"] == "ns",
            "bob" => ra["resource"] == "nodes",
            "carol" => true,
            "system:kube-aggregator" => nra["path"] == V1 && nra["verb"] == "get",
            _ => false,
        };
    let reason = if allowed || user == "system:anonymous" {
        String::new()
    } else {
        "no RBAC policy matched".to_owned()
    };
    (allowed, reason)
}

struct Pki {
    front_proxy: Pair,
    rogue_proxy: Pair,
    alice: Pair,
    admin: Pair,
    foreign_alice: Pair,
    foreign_proxy: Pair,
    expired_alice: Pair,
    carol_ca2: Pair,
    client_ca: TestCa,
    client_ca2: TestCa,
    front_proxy_ca: TestCa,
}

fn pki(dir: &Path) -> Pki {
    let front_proxy_ca = TestCa::new(dir, "front-proxy-ca").unwrap();
    let client_ca = TestCa::new(dir, "client-ca").unwrap();
    let client_ca2 = TestCa::new(dir, "client-ca-2").unwrap();
    let foreign = TestCa::new(dir, "foreign-ca").unwrap();
    let client = |ca: &TestCa, stem: &str, cn: &str, orgs: &[&str], expired: bool| {
        ca.issue(dir, stem, Leaf::Client { cn, orgs }, expired)
            .unwrap()
    };
    Pki {
        front_proxy: client(
            &front_proxy_ca,
            "front-proxy",
            "front-proxy-client",
            &[],
            false,
        ),
        rogue_proxy: client(&front_proxy_ca, "rogue-proxy", "rogue-proxy", &[], false),
        alice: client(&client_ca, "alice", "alice", &["dev"], false),
        admin: client(&client_ca, "admin", "admin", &["system:masters"], false),
        foreign_alice: client(&foreign, "foreign-alice", "alice", &[], false),
        foreign_proxy: client(&foreign, "foreign-proxy", "front-proxy-client", &[], false),
        expired_alice: client(&client_ca, "expired-alice", "alice", &[], true),
        carol_ca2: client(&client_ca2, "carol", "carol", &[], false),
        client_ca,
        client_ca2,
        front_proxy_ca,
    }
}

struct Cluster {
    api: FakeApiServer,
    agg: AggregatorProc,
    pki: Pki,
    seen: Arc<Mutex<Vec<Value>>>,
    agent: metrics_e2e::procs::Proc,
    _kubelet: kubelet::FakeKubelet,
}

impl Cluster {
    async fn get(
        &self,
        cert: Option<&Pair>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let (code, body) = get_as(self.agg.api, &self.agg.ca, cert, path, headers)
            .await
            .unwrap();
        (code.as_u16(), body)
    }
}

/// User bob of group ops, for the API's audience.
fn bob() -> TokenEntry {
    TokenEntry::Valid {
        username: "bob".into(),
        uid: "uid-bob".into(),
        groups: vec!["ops".into()],
        extra: Default::default(),
        audiences: vec![API_AUDIENCE.into()],
    }
}

async fn start(dir: &Path) -> Cluster {
    start_with(dir, &[]).await
}

async fn start_with(dir: &Path, extra: &[&str]) -> Cluster {
    metrics_proto::tls::install_crypto_provider();
    let pki = pki(dir);
    let api = FakeApiServer::start(dir).await.unwrap();
    api.apply(
        "configmaps",
        authentication_configmap(&pki.client_ca.pem, &pki.front_proxy_ca.pem),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    api.set_policy(move |spec| {
        record.lock().unwrap().push(spec.clone());
        policy(spec)
    });
    api.set_token("bob-token", bob());
    api.set_token(
        "expired-token",
        TokenEntry::Invalid("token has expired".into()),
    );
    api.set_token(
        "agent-a",
        service_account_token(
            "kube-system",
            "metrics-agent",
            Some("node-a"),
            &["metrics-aggregator"],
        ),
    );
    api.set_token(
        "agent-wrong-audience",
        service_account_token(
            "kube-system",
            "metrics-agent",
            Some("node-a"),
            &[API_AUDIENCE],
        ),
    );
    api.set_token(
        "default-sa",
        service_account_token(
            "kube-system",
            "default",
            Some("node-a"),
            &["metrics-aggregator"],
        ),
    );
    let kubeconfig = api.kubeconfig(dir, "aggregator.kubeconfig").unwrap();
    let kubeconfig_flag = format!("--kubeconfig={}", kubeconfig.display());
    let flags: Vec<&str> = std::iter::once(kubeconfig_flag.as_str())
        .chain(extra.iter().copied())
        .collect();
    let agg = start_secure_aggregator(dir, &flags).await.unwrap();
    let k = kubelet::start(FakeNode::one_pod("node-a"), "kt", dir)
        .await
        .unwrap();
    let kubelet_token = dir.join("kubelet-token");
    std::fs::write(&kubelet_token, "kt").unwrap();
    let agent_token = dir.join("agent-token");
    std::fs::write(&agent_token, "agent-a\n").unwrap();
    // The agent logs as verbosely as the aggregator was asked to.
    let verbosity: Vec<String> = extra
        .iter()
        .filter(|f| f.starts_with("--v="))
        .map(|f| f.to_string())
        .collect();
    let agent = start_agent(
        dir,
        "node-a",
        &[
            k.agent_flags(&kubelet_token),
            agg.agent_flags(Some(&agent_token)),
            verbosity,
        ]
        .concat(),
    )
    .unwrap();
    Cluster {
        api,
        agg,
        pki,
        seen,
        agent,
        _kubelet: k,
    }
}

fn status(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["kind"], "Status", "{body}");
    assert_eq!(v["apiVersion"], "v1", "{body}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_authentication_and_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let pods_ns = format!("{V1}/namespaces/ns/pods");
    let nodes = format!("{V1}/nodes");
    let admin = Some(&c.pki.admin);

    // system:masters via a client certificate: no review needed.
    until("node-a to be served", Duration::from_secs(30), async || {
        c.get(admin, &format!("{nodes}/node-a"), &[]).await.0 == 200
    })
    .await;
    assert_eq!(
        c.api.access_reviews(),
        0,
        "system:masters needs no SubjectAccessReview"
    );

    // Front proxy with an allowed CN: the headers are the user.
    let (code, body) = c
        .get(
            Some(&c.pki.front_proxy),
            &pods_ns,
            &[
                ("X-Remote-User", "alice"),
                ("X-Remote-Group", "dev"),
                ("X-Remote-Group", "qa"),
                (
                    "X-Remote-Extra-Authentication.kubernetes.io%2fcredential-Id",
                    "JTI=1",
                ),
            ],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("pod-on-node-a"), "{body}");
    {
        let seen = c.seen.lock().unwrap();
        let spec = seen.last().unwrap();
        assert_eq!(spec["user"], "alice");
        assert_eq!(spec["groups"], json!(["dev", "qa", "system:authenticated"]));
        assert_eq!(
            spec["extra"]["authentication.kubernetes.io/credential-id"],
            json!(["JTI=1"])
        );
        assert_eq!(spec["resourceAttributes"]["verb"], "list");
        assert_eq!(spec["resourceAttributes"]["group"], "metrics.k8s.io");
        assert_eq!(spec["resourceAttributes"]["version"], "v1beta1");
        assert_eq!(spec["resourceAttributes"]["namespace"], "ns");
    }

    // The availability probe: front proxy as system:masters, no review.
    let before = c.api.access_reviews();
    let (code, _) = c
        .get(
            Some(&c.pki.front_proxy),
            V1,
            &[
                ("X-Remote-User", "system:kube-aggregator"),
                ("X-Remote-Group", "system:masters"),
            ],
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(c.api.access_reviews(), before);
    // Discovery fallback without a group goes through a path review.
    let (code, body) = c
        .get(
            Some(&c.pki.front_proxy),
            V1,
            &[("X-Remote-User", "system:kube-aggregator")],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        c.seen.lock().unwrap().last().unwrap()["nonResourceAttributes"]["path"],
        V1
    );

    // A front-proxy certificate whose CN is not allowed: 401.
    let (code, body) = c
        .get(
            Some(&c.pki.rogue_proxy),
            &pods_ns,
            &[("X-Remote-User", "alice")],
        )
        .await;
    assert_eq!((code, body.as_str()), (401, UNAUTHORIZED));

    // The allowed CN from a foreign CA is no front proxy: 401.
    let (code, body) = c
        .get(
            Some(&c.pki.foreign_proxy),
            &pods_ns,
            &[
                ("X-Remote-User", "alice"),
                ("X-Remote-Group", "system:masters"),
            ],
        )
        .await;
    assert_eq!((code, body.as_str()), (401, UNAUTHORIZED));

    // Identity headers without a certificate are ignored: anonymous, 403.
    let (code, body) = c
        .get(
            None,
            &nodes,
            &[
                ("X-Remote-User", "alice"),
                ("X-Remote-Group", "system:masters"),
            ],
        )
        .await;
    assert_eq!(code, 403, "{body}");
    let s = status(&body);
    assert_eq!(
        s["message"],
        "nodes.metrics.k8s.io is forbidden: User \"system:anonymous\" cannot list resource \"nodes\" in API group \"metrics.k8s.io\" at the cluster scope"
    );
    assert_eq!(s["reason"], "Forbidden");
    assert_eq!(s["code"], 403);
    assert_eq!(
        s["details"],
        json!({"group": "metrics.k8s.io", "kind": "nodes"})
    );
    let anon = c.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(anon["user"], "system:anonymous");
    assert_eq!(anon["groups"], json!(["system:unauthenticated"]));

    // Client certificates: CN and O; foreign CA and expired ones get 401.
    let (code, body) = c.get(Some(&c.pki.alice), &pods_ns, &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        c.seen.lock().unwrap().last().unwrap()["groups"],
        json!(["dev", "system:authenticated"])
    );
    let (code, body) = c
        .get(
            Some(&c.pki.alice),
            &format!("{V1}/namespaces/ns/pods/pod-on-node-a"),
            &[],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.get(Some(&c.pki.alice), &nodes, &[]).await;
    assert_eq!(code, 403);
    assert_eq!(
        status(&body)["message"],
        "nodes.metrics.k8s.io is forbidden: User \"alice\" cannot list resource \"nodes\" in API group \"metrics.k8s.io\" at the cluster scope: no RBAC policy matched"
    );
    let (code, body) = c.get(Some(&c.pki.foreign_alice), &pods_ns, &[]).await;
    assert_eq!((code, body.as_str()), (401, UNAUTHORIZED));
    let (code, body) = c.get(Some(&c.pki.expired_alice), &pods_ns, &[]).await;
    assert_eq!((code, body.as_str()), (401, UNAUTHORIZED));

    // Bearer tokens: reviewed once, then cached (allowed and denied alike).
    let bob = [("Authorization", "Bearer bob-token")];
    let (tr0, sar0) = (c.api.token_reviews(), c.api.access_reviews());
    let (code, body) = c.get(None, &nodes, &bob).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("node-a"), "{body}");
    let (code, _) = c.get(None, &nodes, &bob).await;
    assert_eq!(code, 200);
    assert_eq!(
        c.api.token_reviews(),
        tr0 + 1,
        "second request uses the cached TokenReview"
    );
    assert_eq!(
        c.api.access_reviews(),
        sar0 + 1,
        "second request uses the cached SubjectAccessReview"
    );
    let (code, body) = c.get(None, &format!("{V1}/pods"), &bob).await;
    assert_eq!(code, 403);
    let s = status(&body);
    assert_eq!(
        s["message"],
        "pods.metrics.k8s.io is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"metrics.k8s.io\" at the cluster scope: no RBAC policy matched"
    );
    let (code, _) = c.get(None, &format!("{V1}/pods"), &bob).await;
    assert_eq!(code, 403);
    assert_eq!(c.api.access_reviews(), sar0 + 2, "the denial is cached too");
    let (code, body) = c
        .get(None, &format!("{V1}/namespaces/ns/pods/x"), &bob)
        .await;
    assert_eq!(code, 403);
    assert_eq!(
        status(&body)["message"],
        "pods.metrics.k8s.io \"x\" is forbidden: User \"bob\" cannot get resource \"pods\" in API group \"metrics.k8s.io\" in the namespace \"ns\": no RBAC policy matched"
    );
    for token in ["Bearer expired-token", "Bearer never-issued"] {
        let (code, body) = c.get(None, &nodes, &[("Authorization", token)]).await;
        assert_eq!((code, body.as_str()), (401, UNAUTHORIZED), "{token}");
    }

    // Always-allowed paths need no credentials and no review.
    let before = c.api.access_reviews();
    for p in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(c.get(None, p, &[]).await.0, 200, "{p}");
    }
    assert_eq!(c.api.access_reviews(), before);
    // /metrics is not among them.
    assert_eq!(c.get(None, "/metrics", &[]).await.0, 403);

    // CA rotation through the ConfigMap: the new CA's client is accepted,
    // the old CA's is not, without a restart.
    let (code, _) = c.get(Some(&c.pki.carol_ca2), &nodes, &[]).await;
    assert_eq!(code, 401);
    c.api.apply(
        "configmaps",
        authentication_configmap(&c.pki.client_ca2.pem, &c.pki.front_proxy_ca.pem),
    );
    until(
        "the rotated client CA",
        Duration::from_secs(15),
        async || c.get(Some(&c.pki.carol_ca2), &nodes, &[]).await.0 == 200,
    )
    .await;
    let (code, body) = c.get(Some(&c.pki.alice), &pods_ns, &[]).await;
    assert_eq!((code, body.as_str()), (401, UNAUTHORIZED));
    // Real kubectl with a client certificate and with a bearer token.
    let as_carol = dir.path().join("carol.kubeconfig");
    std::fs::write(
        &as_carol,
        kubeconfig_as(
            &c.agg.api_url(),
            &c.agg.ca,
            &[
                (
                    "client-certificate",
                    &c.pki.carol_ca2.cert.display().to_string(),
                ),
                ("client-key", &c.pki.carol_ca2.key.display().to_string()),
            ],
        ),
    )
    .unwrap();
    let top = kubectl(&as_carol, &["top", "pod", "-n", "ns", "--no-headers"]).await;
    assert!(top.success, "{top:?}");
    assert!(top.stdout.contains("pod-on-node-a"), "{top:?}");
    let as_bob = dir.path().join("bob.kubeconfig");
    std::fs::write(
        &as_bob,
        kubeconfig_as(&c.agg.api_url(), &c.agg.ca, &[("token", "bob-token")]),
    )
    .unwrap();
    let denied = kubectl(&as_bob, &["top", "pod", "-A"]).await;
    assert!(!denied.success, "{denied:?}");
    assert!(
        denied.stderr.contains("pods.metrics.k8s.io is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"metrics.k8s.io\" at the cluster scope"),
        "{denied:?}"
    );

    // The front proxy is unaffected.
    let (code, _) = c
        .get(
            Some(&c.pki.front_proxy),
            &pods_ns,
            &[("X-Remote-User", "alice")],
        )
        .await;
    assert_eq!(code, 200);
}

/// Opens an Ingest stream with `token`, sends one report for `node`, and
/// returns how the aggregator answered.
async fn stream_as(
    agg: &AggregatorProc,
    token: Option<&str>,
    node: &str,
) -> Result<bool, tonic::Status> {
    let mut client = IngestClient::new(agg.grpc_channel().await.unwrap());
    let mut req = tonic::Request::new(
        tokio_stream::iter(vec![node_report(node, 1000)]).chain(tokio_stream::pending()),
    );
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut inbound = client.report(req).await?.into_inner();
    loop {
        match inbound.message().await? {
            Some(m) => {
                if let Some(metrics_proto::v1::aggregator_message::Kind::Ack(a)) = m.kind {
                    return Ok(a.accepted);
                }
            }
            None => return Err(tonic::Status::cancelled("stream ended")),
        }
    }
}

use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_prove_identity_and_report_only_for_their_node() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let admin = Some(&c.pki.admin);
    until(
        "node-a from the real agent",
        Duration::from_secs(30),
        async || c.get(admin, &format!("{V1}/nodes/node-a"), &[]).await.0 == 200,
    )
    .await;

    let e = stream_as(&c.agg, None, "node-a").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(
        e.message().contains("missing bearer token"),
        "{}",
        e.message()
    );

    let e = stream_as(&c.agg, Some("expired-token"), "node-a")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(e.message(), "invalid token: token has expired");

    let e = stream_as(&c.agg, Some("agent-wrong-audience"), "node-a")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("audience"), "{}", e.message());

    let e = stream_as(&c.agg, Some("default-sa"), "node-a")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        e.message(),
        "system:serviceaccount:kube-system:default may not send node reports (allowed: system:serviceaccount:kube-system:metrics-agent)"
    );

    // A token bound to node-a cannot report for node-b.
    let e = stream_as(&c.agg, Some("agent-a"), "node-b")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        e.message(),
        "system:serviceaccount:kube-system:metrics-agent holds a token bound to node \"node-a\" and may not report for node \"node-b\""
    );
    let (code, _) = c.get(admin, &format!("{V1}/nodes/node-b"), &[]).await;
    assert_eq!(code, 404, "nothing was stored for node-b");
    // The same token for its own node is accepted.
    assert!(stream_as(&c.agg, Some("agent-a"), "node-a").await.unwrap());

    // Refusals are counted and never disturb the real agent.
    let (code, metrics) = c.get(admin, "/metrics", &[]).await;
    assert_eq!(code, 200);
    for (code, n) in [("Unauthenticated", 3), ("PermissionDenied", 2)] {
        let line = format!("metrics_aggregator_agent_streams_refused_total{{code=\"{code}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let first = c.get(admin, &format!("{V1}/nodes/node-a"), &[]).await.1;
    let ts = |b: &str| serde_json::from_str::<Value>(b).unwrap()["timestamp"].clone();
    until(
        "node-a to keep reporting",
        Duration::from_secs(10),
        async || {
            let now = c.get(admin, &format!("{V1}/nodes/node-a"), &[]).await.1;
            ts(&now) != ts(&first)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_ca_files_override_the_configmap_and_are_followed() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = pki(d);
    let api = FakeApiServer::start(d).await.unwrap();
    // The ConfigMap trusts nothing these clients use: the flags must win.
    let unrelated = TestCa::new(d, "unrelated").unwrap();
    api.apply(
        "configmaps",
        authentication_configmap(&unrelated.pem, &unrelated.pem),
    );
    let client_ca = d.join("client-ca.pem");
    std::fs::write(&client_ca, &p.client_ca.pem).unwrap();
    let kubeconfig = api.kubeconfig(d, "kubeconfig").unwrap();
    let agg = start_secure_aggregator(
        d,
        &[
            &format!("--kubeconfig={}", kubeconfig.display()),
            &format!("--client-ca-file={}", client_ca.display()),
            &format!(
                "--requestheader-client-ca-file={}",
                p.front_proxy_ca.file.display()
            ),
            "--requestheader-allowed-names=front-proxy-client",
            "--tls-reload-interval=200ms",
        ],
    )
    .await
    .unwrap();
    let get = async |cert: &Pair, headers: &[(&str, &str)]| {
        get_as(agg.api, &agg.ca, Some(cert), V1, headers)
            .await
            .unwrap()
            .0
            .as_u16()
    };
    let masters = [
        ("X-Remote-User", "system:kube-aggregator"),
        ("X-Remote-Group", "system:masters"),
    ];
    assert_eq!(get(&p.admin, &[]).await, 200);
    assert_eq!(get(&p.front_proxy, &masters).await, 200);
    let admin2 = p
        .client_ca2
        .issue(
            d,
            "admin2",
            Leaf::Client {
                cn: "admin2",
                orgs: &["system:masters"],
            },
            false,
        )
        .unwrap();
    assert_eq!(get(&admin2, &[]).await, 401);

    // Rotate the flag's file (written aside, renamed into place).
    let tmp = d.join("client-ca.pem.new");
    std::fs::write(&tmp, &p.client_ca2.pem).unwrap();
    std::fs::rename(&tmp, &client_ca).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&admin2, &[]).await != 200 {
        assert!(Instant::now() < deadline, "{}", agg.proc.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&p.admin, &[]).await, 401);
    assert_eq!(get(&p.front_proxy, &masters).await, 200);
    assert_eq!(api.access_reviews(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_token_ends_its_open_stream() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_with(
        dir.path(),
        &[
            "--agent-token-recheck-interval=1s",
            "--authentication-token-webhook-cache-ttl=200ms",
        ],
    )
    .await;
    c.api.set_token(
        "agent-b",
        service_account_token(
            "kube-system",
            "metrics-agent",
            Some("node-b"),
            &["metrics-aggregator"],
        ),
    );
    let channel = c.agg.grpc_channel().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", "Bearer agent-b".parse().unwrap());
    let mut inbound = IngestClient::new(channel)
        .report(req)
        .await
        .unwrap()
        .into_inner();
    let mut seq = 0;
    let mut send = async || {
        seq += 1;
        let mut r = node_report("node-b", 1000);
        r.sequence = seq;
        tx.send(r).await.unwrap();
        inbound.message().await
    };
    let first = send().await.unwrap().unwrap();
    assert!(matches!(
        first.kind,
        Some(metrics_proto::v1::aggregator_message::Kind::Ack(ref a)) if a.accepted
    ));
    c.api.set_token(
        "agent-b",
        TokenEntry::Invalid("token has been invalidated".into()),
    );
    let revoked = Instant::now();
    let status = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        match send().await {
            Ok(Some(_)) => assert!(
                revoked.elapsed() < Duration::from_secs(10),
                "still accepted"
            ),
            Ok(None) => panic!("stream closed without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "invalid token: token has been invalidated"
    );
    // The real agent on node-a is not affected.
    until("node-a", Duration::from_secs(30), async || {
        c.get(Some(&c.pki.admin), &format!("{V1}/nodes/node-a"), &[])
            .await
            .0
            == 200
    })
    .await;
}

/// No token or key material reaches a log line, even at the most verbose
/// level (`--v=10`, every dependency at trace): bearer tokens of users,
/// refused tokens, agents' tokens, and the private keys in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_reaches_a_log_line() {
    const USER_TOKEN: &str = "user-tok-Qx7Vb2Kd9Lm4";
    const BAD_TOKEN: &str = "bad-tok-Zr5Wn8Pt3Hy6";
    const AGENT_TOKEN: &str = "agent-tok-Jc2Fs9Ue4Rv1";
    let dir = tempfile::tempdir().unwrap();
    let c = start_with(dir.path(), &["--v=10"]).await;
    c.api.set_token(USER_TOKEN, bob());
    c.api.set_token(
        AGENT_TOKEN,
        service_account_token(
            "kube-system",
            "metrics-agent",
            Some("node-b"),
            &["metrics-aggregator"],
        ),
    );
    until("node-a to be served", Duration::from_secs(30), async || {
        c.get(Some(&c.pki.admin), &format!("{V1}/nodes/node-a"), &[])
            .await
            .0
            == 200
    })
    .await;
    let pods = format!("{V1}/namespaces/ns/pods");
    let user = format!("Bearer {USER_TOKEN}");
    let bad = format!("Bearer {BAD_TOKEN}");
    for _ in 0..3 {
        let (code, body) = c
            .get(None, &pods, &[("Authorization", user.as_str())])
            .await;
        assert!(code == 200 || code == 403, "{code} {body}");
        let (code, _) = c.get(None, &pods, &[("Authorization", bad.as_str())]).await;
        assert_eq!(code, 401);
    }
    assert_eq!(
        stream_as(&c.agg, Some(AGENT_TOKEN), "node-b").await.ok(),
        Some(true)
    );
    assert!(stream_as(&c.agg, Some(BAD_TOKEN), "node-b").await.is_err());

    let logs = [c.agg.proc.log_text(), c.agent.log_text()];
    assert!(
        logs[0].lines().count() > 100,
        "the aggregator logged at trace level:\n{}",
        logs[0]
    );
    let mut secrets = vec![
        USER_TOKEN.to_owned(),
        BAD_TOKEN.to_owned(),
        AGENT_TOKEN.to_owned(),
        // The agent's own token, from its file.
        "agent-a".to_owned(),
        "PRIVATE KEY".to_owned(),
    ];
    // Every line of base64 of every private key in use.
    for pair in [&c.pki.admin, &c.pki.front_proxy] {
        let pem = std::fs::read_to_string(&pair.key).unwrap();
        secrets.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_owned),
        );
    }
    for key in std::fs::read_dir(dir.path().join("certs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(key.path()).unwrap_or_default();
        if text.contains("PRIVATE KEY") {
            secrets.extend(
                text.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                    .map(str::to_owned),
            );
        }
    }
    for (log, who) in logs.iter().zip(["aggregator", "agent"]) {
        for s in &secrets {
            if let Some(line) = log.lines().find(|l| l.contains(s.as_str())) {
                panic!("the {who} logged secret {s:?}: {line}");
            }
        }
    }
}
