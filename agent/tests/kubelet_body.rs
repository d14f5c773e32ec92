//! The kubelet source reads every payload into one buffer it keeps from
//! one period to the next. Whatever came before (a cut body, a compressed
//! one, an error page, garbage), the next payload decodes as if read
//! fresh: nothing of an earlier body is left in it. Against the fake
//! kubelet over real TLS on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_agent::source::kubelet::{KubeletError, KubeletSource};
use metrics_e2e::kubelet::{self, container_id, pod_uid, FakeContainer, FakeNode, FakePod, Fault};
use metrics_proto::tls::{client_config, Verify};

/// A node with `pods` pods of two containers each: about 1 KB of payload
/// a pod, so 150 pods make a body of several of hyper's reads.
fn node(pods: usize) -> FakeNode {
    let mut n = FakeNode::one_pod("n1");
    n.pods = (0..pods)
        .map(|i| {
            let name = format!("web-{i:03}-7d9f8b6c5d-x2k4p");
            FakePod {
                uid: pod_uid(&name),
                namespace: format!("team-{}", i % 7),
                name: name.clone(),
                labels: BTreeMap::new(),
                containers: ["app", "sidecar"]
                    .iter()
                    .map(|c| FakeContainer {
                        name: (*c).into(),
                        id: container_id(&format!("{name}/{c}")),
                        cores: 0.01,
                        memory: 1 << 20,
                    })
                    .collect(),
            }
        })
        .collect();
    n
}

#[tokio::test]
async fn each_payload_decodes_alone_whatever_the_buffer_held_before() {
    metrics_proto::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pods = 150;
    let k = kubelet::start(node(pods), "tok", dir.path()).await.unwrap();
    let tls = client_config(Verify::CaFile(&k.ca_file), &[]).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok").unwrap();
    let s = KubeletSource::new(&k.url(), tls, Some(token), Duration::from_secs(10)).unwrap();

    let clean = |what: &str, r: Result<_, KubeletError>| {
        let (batch, stats): (metrics_agent::batch::Batch, _) =
            r.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(batch.pods.len(), pods, "{what}: pods");
        assert_eq!(batch.containers(), pods * 2, "{what}: containers");
        assert_eq!(
            stats,
            metrics_agent::source::decode::DecodeStats::default(),
            "{what}: nothing malformed, repeated or dropped"
        );
        assert!(batch.node.is_some(), "{what}: node");
    };

    clean("first", s.scrape().await);
    clean("second, into the kept buffer", s.scrape().await);

    // A body that stops half-way fails; the next is read whole.
    k.set_fault(Fault::CutBody);
    assert!(s.scrape().await.is_err(), "a cut body is an error");
    k.set_fault(Fault::None);
    clean("after a cut body", s.scrape().await);

    // A short body of garbage leaves nothing usable, then a full payload
    // again: none of the garbage lingers in front of or behind it.
    k.set_fault(Fault::Garbage);
    match s.scrape().await {
        Ok((batch, _)) => {
            assert_eq!(batch.containers(), 0);
            assert!(batch.node.is_none());
        }
        Err(e) => panic!("garbage with 200 decodes to nothing, not {e}"),
    }
    k.set_fault(Fault::None);
    clean("after garbage", s.scrape().await);

    // An error page is reported with its text, then the next payload is
    // read as usual.
    k.set_fault(Fault::Unavailable);
    match s.scrape().await {
        Err(KubeletError::Status { status, body, .. }) => {
            assert_eq!(status.as_u16(), 503);
            assert!(body.contains("stats provider unavailable"), "{body}");
        }
        other => panic!("expected 503, got {:?}", other.map(|(b, _)| b)),
    }
    k.set_fault(Fault::None);
    clean("after an error page", s.scrape().await);

    // A compressed answer is inflated in place of the bytes read, and the
    // plain one after it reads into the buffer as before.
    k.set_gzip_always(true);
    clean("compressed", s.scrape().await);
    k.set_gzip_always(false);
    clean("plain after compressed", s.scrape().await);
}
