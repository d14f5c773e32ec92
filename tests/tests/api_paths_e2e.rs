//! Paths that cannot name a namespace (empty, an encoded `/`, upper case)
//! are 404 `kind: Status`, never an empty list; a valid namespace with no
//! pods is an empty list.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use metrics_e2e::https;
use metrics_e2e::procs::start_aggregator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_namespaces_are_not_found() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(dir.path(), &[]).await.unwrap();
    let base = format!("{}/apis/metrics.k8s.io/v1beta1", agg.api_url());
    for path in [
        "namespaces//pods",
        "namespaces/a%2fb/pods",
        "namespaces/a%2Fb/pods/x",
        "namespaces/Upper/pods",
        "namespaces/-dash/pods/x",
    ] {
        let (code, _, body) = https::get(&format!("{base}/{path}"), &agg.ca, &[])
            .await
            .unwrap();
        assert_eq!(code, 404, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["kind"], "Status", "{path}: {body}");
        assert_eq!(v["reason"], "NotFound", "{path}: {body}");
    }
    let (code, _, body) = https::get(&format!("{base}/namespaces/team-a/pods"), &agg.ca, &[])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "PodMetricsList");
    assert_eq!(v["items"], serde_json::json!([]));
}

/// Requests refused before any handler runs (a path segment that does not
/// decode, an oversized URI, too many or too large headers) are answered
/// with a `kind: Status` of the right code, like every other error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_status_too() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(dir.path(), &[]).await.unwrap();
    let base = format!("{}/apis/metrics.k8s.io/v1beta1", agg.api_url());
    let long = "a".repeat(20 * 1024);
    let many: Vec<(String, String)> = (0..120)
        .map(|i| (format!("x-extra-{i}"), "v".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let big = "b".repeat(40 * 1024);
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (format!("{base}/nodes/%ff%fe"), vec![], 400, "BadRequest"),
        (
            format!("{base}/namespaces/%c3%28/pods/x"),
            vec![],
            400,
            "BadRequest",
        ),
        (
            format!("{base}/pods?labelSelector={long}"),
            vec![],
            414,
            "RequestURITooLong",
        ),
        (
            format!("{base}/pods"),
            many,
            431,
            "RequestHeaderFieldsTooLarge",
        ),
        (
            format!("{base}/pods"),
            vec![("x-big", big.as_str())],
            431,
            "RequestHeaderFieldsTooLarge",
        ),
    ];
    for (url, headers, code, reason) in cases {
        let (got, h, body) = https::get(&url, &agg.ca, &headers).await.unwrap();
        let what = &url[..url.len().min(120)];
        assert_eq!(got.as_u16(), code, "{what}: {body}");
        assert_eq!(h["content-type"], "application/json", "{what}");
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["kind"], "Status", "{what}: {body}");
        assert_eq!(v["code"], code, "{what}: {body}");
        assert_eq!(v["reason"], reason, "{what}: {body}");
    }
}

/// `/version` answers in kube-apiserver's shape: the real kubectl reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_the_server_version() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(dir.path(), &[]).await.unwrap();
    let out = metrics_e2e::procs::kubectl(&agg.kubeconfig, &["version", "-o", "json"]).await;
    assert!(out.success, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let server = &v["serverVersion"];
    assert_eq!(
        server["gitVersion"],
        format!("v{}", env!("CARGO_PKG_VERSION")),
        "{}",
        out.stdout
    );
    assert_eq!(server["compiler"], "rustc");
    assert!(server["platform"].as_str().unwrap().starts_with("linux/"));
}

/// OpenAPI v2 and v3 describe the group: kube-apiserver's every-minute
/// `If-None-Match` poll gets a 304, the v3 index points at the group's
/// document, and the real `kubectl explain` describes the kinds from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_serve_kubectl_explain() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(dir.path(), &[]).await.unwrap();
    let base = agg.api_url();

    let (code, h, body) = https::get(
        &format!("{base}/openapi/v2"),
        &agg.ca,
        &[("accept", "application/json")],
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let v2: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    let pod = &v2["definitions"]["io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics"];
    assert_eq!(
        pod["x-kubernetes-group-version-kind"][0]["kind"],
        "PodMetrics"
    );
    assert!(
        v2["paths"]["/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"]["get"].is_object()
    );
    let etag = h["etag"].to_str().unwrap().to_owned();
    let (code, h2, body) = https::get(
        &format!("{base}/openapi/v2"),
        &agg.ca,
        &[("if-none-match", etag.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(code, 304, "{body}");
    assert!(body.is_empty());
    assert_eq!(h2["etag"], etag.as_str());
    let (code, _, _) = https::get(
        &format!("{base}/openapi/v2"),
        &agg.ca,
        &[("if-none-match", "\"something-else\"")],
    )
    .await
    .unwrap();
    assert_eq!(code, 200);

    let (code, _, body) = https::get(&format!("{base}/openapi/v3"), &agg.ca, &[])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let index: Value = serde_json::from_str(&body).unwrap();
    let url = index["paths"]["apis/metrics.k8s.io/v1beta1"]["serverRelativeURL"]
        .as_str()
        .unwrap();
    let (code, h, body) = https::get(&format!("{base}{url}"), &agg.ca, &[])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
    let v3: Value = serde_json::from_str(&body).unwrap();
    assert!(v3["openapi"].as_str().unwrap().starts_with("3."));
    assert!(
        v3["components"]["schemas"]["io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics"]
            .is_object()
    );

    let out = metrics_e2e::procs::kubectl(&agg.kubeconfig, &["explain", "podmetrics"]).await;
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout.contains("KIND:") && out.stdout.contains("PodMetrics"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("containers"), "{}", out.stdout);
    let out = metrics_e2e::procs::kubectl(&agg.kubeconfig, &["explain", "nodemetrics.usage"]).await;
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("cpu"), "{}", out.stdout);
}

/// Self-metrics under metrics-server's names: storage points by type, the
/// freshness of served metrics, and requests by verb, resource and code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_metrics_use_metrics_servers_names() {
    use metrics_proto::v1::ingest_client::IngestClient;
    use metrics_proto::v1::{ContainerUsage, NodeReport, PodUsage};
    use tokio_stream::StreamExt;

    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let agg = start_aggregator(dir.path(), &[]).await.unwrap();
    let now = metrics_proto::time::unix_nanos(std::time::SystemTime::now());
    let pod = |name: &str, containers: usize| PodUsage {
        namespace: "team-a".into(),
        name: name.into(),
        timestamp_unix_nanos: now - 5_000_000_000,
        window_nanos: 15_000_000_000,
        containers: (0..containers)
            .map(|i| ContainerUsage {
                name: format!("c{i}"),
                cpu_nanocores: 1_000_000,
                memory_working_set_bytes: 1 << 20,
                swap_bytes: 0,
            })
            .collect(),
        ..Default::default()
    };
    let report = NodeReport {
        pods: vec![pod("a", 2), pod("b", 3)],
        ..metrics_e2e::reports::node_report("node-m", 15_000)
    };
    let mut client = IngestClient::new(agg.grpc_channel().await.unwrap());
    let outbound = tokio_stream::iter(vec![report]).chain(tokio_stream::pending());
    let mut inbound = client.report(outbound).await.unwrap().into_inner();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), inbound.message()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "{first:?}");

    let base = format!("{}/apis/metrics.k8s.io/v1beta1", agg.api_url());
    let ok = metrics_e2e::wait::eventually(std::time::Duration::from_secs(10), async || {
        let (_, _, body) = https::get(&format!("{base}/namespaces/team-a/pods"), &agg.ca, &[])
            .await
            .unwrap();
        body.contains("\"b\"")
    })
    .await;
    assert!(ok);
    for path in [
        "pods",
        "namespaces/team-a/pods/a",
        "nodes/node-m",
        "nodes/nope",
    ] {
        https::get(&format!("{base}/{path}"), &agg.ca, &[])
            .await
            .unwrap();
    }
    let (_, _, text) = https::get(&format!("{}/metrics", agg.api_url()), &agg.ca, &[])
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(
        value("metrics_server_storage_points{type=\"container\"}"),
        5.0
    );
    assert_eq!(value("metrics_server_storage_points{type=\"node\"}"), 1.0);
    // Served: the pods (5 s old) at least 2 + 2 + 1 times, the node (fresh)
    // once.
    let count = value("metrics_server_api_metric_freshness_seconds_count");
    let fresh = value("metrics_server_api_metric_freshness_seconds_bucket{le=\"1.0\"}");
    assert!(count >= 6.0, "{count}");
    assert!(
        count - fresh >= 5.0,
        "pods observed as older than 1 s: {count} {fresh}"
    );
    assert!(value("apiserver_request_total{verb=\"LIST\",resource=\"pods\",code=\"200\"}") >= 2.0);
    assert_eq!(
        value("apiserver_request_total{verb=\"GET\",resource=\"pods\",code=\"200\"}"),
        1.0
    );
    assert_eq!(
        value("apiserver_request_total{verb=\"GET\",resource=\"nodes\",code=\"404\"}"),
        1.0
    );
    assert!(
        value("apiserver_request_duration_seconds_count{verb=\"GET\",resource=\"nodes\"}") >= 2.0
    );
    // No label carries a node's or a pod's name.
    assert!(
        !text.contains("node-m") && !text.contains("team-a"),
        "{text}"
    );
}
