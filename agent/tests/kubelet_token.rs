//! The kubelet source's bearer token: read from its file once a minute, not
//! every period, and read again at once after the kubelet refused it.
//! Against the fake kubelet over real TLS on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use metrics_agent::source::kubelet::{KubeletError, KubeletSource};
use metrics_e2e::kubelet::{self, FakeNode};
use metrics_proto::tls::{client_config, Verify};

async fn source(
    dir: &std::path::Path,
) -> (kubelet::FakeKubelet, KubeletSource, std::path::PathBuf) {
    metrics_proto::tls::install_crypto_provider();
    let k = kubelet::start(FakeNode::one_pod("n1"), "tok", dir)
        .await
        .unwrap();
    let tls = client_config(Verify::CaFile(&k.ca_file), &[]).unwrap();
    let token = dir.join("token");
    let s =
        KubeletSource::new(&k.url(), tls, Some(token.clone()), Duration::from_secs(10)).unwrap();
    (k, s, token)
}

#[tokio::test]
async fn a_token_read_is_used_without_reading_the_file_every_period() {
    let dir = tempfile::tempdir().unwrap();
    let (k, s, token) = source(dir.path()).await;
    std::fs::write(&token, "tok\n").unwrap();
    let (batch, _) = s.scrape().await.unwrap();
    assert_eq!(batch.containers(), 1);
    // Gone from disk, yet the copy read a moment ago is still sent: the
    // file is not read on every scrape.
    std::fs::remove_file(&token).unwrap();
    s.scrape()
        .await
        .expect("the token read before is still used");
    assert_eq!(k.scrapes(), 2);
}

#[tokio::test]
async fn a_refused_token_is_read_again_at_the_next_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let (k, s, token) = source(dir.path()).await;
    std::fs::write(&token, "stale").unwrap();
    match s.scrape().await {
        Err(KubeletError::Status { status, .. }) => assert_eq!(status.as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(b, _)| b)),
    }
    // The kubelet rewrote the token: the next scrape reads it, without
    // waiting for the minute to pass.
    std::fs::write(&token, "tok").unwrap();
    let (batch, _) = s.scrape().await.unwrap();
    assert_eq!(batch.containers(), 1);
    assert_eq!(k.scrapes(), 1, "authorised scrapes");
}
