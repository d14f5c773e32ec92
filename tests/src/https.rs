//! A minimal HTTPS client for asserting status codes and bodies exactly.

use std::path::Path;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GETs `url` trusting the CA in `ca`, with extra `headers`.
pub async fn get(
    url: &str,
    ca: &Path,
    headers: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, http::HeaderMap, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in metrics_proto::tls::load_certs(ca)? {
        roots.add(cert)?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Empty::new())?).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}
