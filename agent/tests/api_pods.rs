//! Pods as the agent's API watch decodes them: the real pods of a kubelet +
//! containerd node (`kubelet-real-1.36/pods.json`, whose items are the same
//! core/v1 Pod objects the API serves) give the same pod index as the
//! kubelet's `/pods`, and the watch keeps only what it needs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use kube::Resource;
use metrics_agent::meta::{ApiPods, SlimPod};
use metrics_agent::pods::PodCache;
use metrics_agent::source::kubelet::parse_pod_list;
use metrics_e2e::fixtures::fixture;

const PODS: &str = "kubelet-real-1.36/pods.json";

#[test]
fn api_pods_decode_like_the_kubelets_pod_list() {
    let text = fixture(PODS);
    let from_kubelet = parse_pod_list(text.as_bytes()).unwrap();
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), from_kubelet.len());
    assert!(from_kubelet.iter().any(|p| !p.containers.is_empty()));
    for (item, want) in items.iter().zip(&from_kubelet) {
        let slim: SlimPod = serde_json::from_value(item.clone()).unwrap();
        assert_eq!(&slim.info, want);
        // The watch's bookkeeping survives; nothing else of the metadata.
        let meta = slim.meta();
        assert_eq!(
            meta.resource_version.as_deref(),
            item["metadata"]["resourceVersion"].as_str()
        );
        assert_eq!(meta.uid.as_deref(), item["metadata"]["uid"].as_str());
        assert!(meta.managed_fields.is_none() && meta.annotations.is_none());
        assert!(meta.labels.is_none(), "labels are kept once, in the info");
    }
    // Container IDs lose their runtime scheme, as cgroup names carry them.
    let c = from_kubelet
        .iter()
        .flat_map(|p| &p.containers)
        .next()
        .unwrap();
    assert!(!c.id.contains("://") && c.id.len() == 64, "{c:?}");
    assert!(c.started_ns.is_some());
}

#[tokio::test]
async fn the_index_follows_the_watch_only_when_it_changes() {
    let pods = parse_pod_list(fixture(PODS).as_bytes()).unwrap();
    let known = Arc::new(ApiPods::default());
    let mut cache = PodCache::from_api(Arc::clone(&known));
    cache.refresh(false).await;
    assert!(cache.index().by_uid(&pods[0].uid).is_none());
    known.replace(pods.clone());
    cache.refresh(false).await;
    for p in &pods {
        assert_eq!(cache.index().by_uid(&p.uid), Some(p));
        assert_eq!(cache.index().labels(&p.pod), Some(&p.labels));
    }
    known.replace(pods[1..].to_vec());
    cache.refresh(true).await;
    assert!(cache.index().by_uid(&pods[0].uid).is_none());
    assert!(cache.index().knows(&pods[1].pod));
}

fn agent(args: &[&str]) -> Result<metrics_agent::Agent, metrics_agent::SetupError> {
    use clap::Parser;
    let mut argv = vec![
        "metrics-agent",
        "--node-name=n",
        "--aggregator=https://127.0.0.1:1",
    ];
    argv.extend_from_slice(args);
    argv.push("--aggregator-insecure-tls");
    metrics_agent::Agent::from_args(&metrics_agent::args::Args::parse_from(argv))
}

#[test]
fn the_cgroup_source_needs_the_api_or_an_explicit_kubelet_pod_list() {
    // No kubelet URL anywhere: the cgroup source runs on the API alone.
    assert!(agent(&["--source=cgroup", "--kubeconfig=/nonexistent"]).is_ok());
    // Without the API it says which flag gives it pods instead.
    let err = agent(&["--source=cgroup", "--no-api"]).err().unwrap();
    assert!(err.to_string().contains("--kubelet-pod-labels"), "{err}");
    // Asked for /pods explicitly, it needs the kubelet's address.
    let err = agent(&["--source=cgroup", "--no-api", "--kubelet-pod-labels"])
        .err()
        .unwrap();
    assert!(err.to_string().contains("--kubelet-url"), "{err}");
    assert!(agent(&[
        "--source=cgroup",
        "--no-api",
        "--kubelet-pod-labels",
        "--kubelet-url=https://127.0.0.1:10250",
        "--kubelet-insecure-tls"
    ])
    .is_ok());
}
