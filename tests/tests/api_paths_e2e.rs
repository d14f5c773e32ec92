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
