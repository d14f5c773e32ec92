//! Replicas as in a cluster: delegated authentication, membership from the
//! headless Service's EndpointSlices, and peer queries carrying each
//! replica's own ServiceAccount token. Every replica answers for the whole
//! cluster, and a Peer.Query without an accepted token is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use metrics_e2e::apiserver::{
    authentication_configmap, endpoint_slice, service_account_token, FakeApiServer,
};
use metrics_e2e::https::get_as;
use metrics_e2e::kubelet::{self, FakeKubelet, FakeNode};
use metrics_e2e::pki::{Leaf, Pair, TestCa};
use metrics_e2e::procs::{
    free_port, shared_cert, start_agent, start_secure_aggregator, AggregatorProc, Proc,
};
use metrics_proto::v1::QueryRequest;

const AUDIENCE: &str = "metrics-aggregator";
const PEERS: &str = "metrics-aggregator-peers";

async fn node_names(agg: &AggregatorProc, admin: &Pair) -> Vec<String> {
    let (code, body) = get_as(
        agg.api,
        &agg.ca,
        Some(admin),
        "/apis/metrics.k8s.io/v1beta1/nodes",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn peer_query(agg: &AggregatorProc, token: Option<&str>) -> Result<usize, tonic::Status> {
    let req = QueryRequest {
        kind: metrics_proto::v1::query_request::Kind::Nodes as i32,
        ..QueryRequest::default()
    };
    Ok(agg.peer_query(req, token).await?.len())
}

fn agent(dir: &Path, node: &str, k: &FakeKubelet, agg: &AggregatorProc) -> Proc {
    let kubelet_token = dir.join("kubelet-token");
    std::fs::write(&kubelet_token, "kt").unwrap();
    let token = dir.join(format!("agent-token-{node}"));
    std::fs::write(&token, format!("agent-{node}")).unwrap();
    start_agent(
        dir,
        node,
        &[k.agent_flags(&kubelet_token), agg.agent_flags(Some(&token))].concat(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_authenticate_to_each_other() {
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
    let nodes = ["node-a", "node-b", "node-c", "node-d"];
    for n in nodes {
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
    let (cert, key) = shared_cert(d);
    let ports: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
    for (i, (_, grpc)) in ports.iter().enumerate() {
        api.apply(
            "endpointslices",
            endpoint_slice(PEERS, &format!("agg-{i}"), *grpc),
        );
    }
    let mut aggs = Vec::new();
    for (i, (api_port, grpc_port)) in ports.iter().enumerate() {
        let rd = d.join(format!("agg-{i}"));
        std::fs::create_dir_all(&rd).unwrap();
        aggs.push(
            start_secure_aggregator(
                &rd,
                &[
                    &format!("--kubeconfig={}", kubeconfig.display()),
                    &format!("--shard-id=agg-{i}"),
                    &format!("--peers-service=kube-system/{PEERS}"),
                    "--replication-factor=1",
                    &format!("--peer-token-file={}", peer_token.display()),
                    &format!("--secure-port={api_port}"),
                    &format!("--grpc-port={grpc_port}"),
                    &format!("--tls-cert-file={cert}"),
                    &format!("--tls-private-key-file={key}"),
                ],
            )
            .await
            .unwrap(),
        );
    }
    let (mut kubelets, mut agents) = (Vec::new(), Vec::new());
    for n in nodes {
        let k = kubelet::start(FakeNode::one_pod(n), "kt", d).await.unwrap();
        // Every agent knows only agg-0 and follows the shard map.
        agents.push(agent(d, n, &k, &aggs[0]));
        kubelets.push(k);
    }
    let want: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    for agg in &aggs {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let got = node_names(agg, &admin).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "got {got:?}\n{}",
                agg.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Ownership is split (R=1): each replica holds only some nodes itself,
    // so the full answers above needed authenticated peer queries.
    let local: Vec<usize> = {
        let mut v = Vec::new();
        for agg in &aggs {
            v.push(peer_query(agg, Some("peer-token")).await.unwrap());
        }
        v
    };
    assert_eq!(local.iter().sum::<usize>(), nodes.len(), "{local:?}");
    assert!(local.iter().all(|&n| n < nodes.len()), "{local:?}");

    let e = peer_query(&aggs[0], None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        e.message(),
        "missing bearer token: callers authenticate with a ServiceAccount token (--peer-token-file)"
    );
    let e = peer_query(&aggs[0], Some("agent-node-a"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        e.message(),
        "system:serviceaccount:kube-system:metrics-agent may not query this replica (allowed: system:serviceaccount:kube-system:metrics-aggregator)"
    );
    let e = peer_query(&aggs[1], Some("forged")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    drop((agents, kubelets));
}
