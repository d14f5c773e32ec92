//! Reads the local kubelet's `/metrics/resource` over HTTPS.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::batch::Batch;
use crate::source::decode::{decode, DecodeStats};

/// Largest payload accepted, compressed or not (bytes). A 110-pod node
/// serves about 100 KB.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Failures of one scrape. None of them stops the agent.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The URL could not be parsed.
    #[error("invalid kubelet URL {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The token file exists but could not be read.
    #[error("reading kubelet token {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Connecting or sending failed.
    #[error("request to {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// No answer within the timeout.
    #[error("request to {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// The kubelet answered with an error status.
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    /// The body was too large or broke off.
    #[error("reading body from {url}: {reason}")]
    Body { url: String, reason: String },
}

/// A kubelet client for one node.
#[derive(Clone)]
pub struct KubeletSource {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    uri: Uri,
    token_file: Option<PathBuf>,
    timeout: Duration,
}

impl KubeletSource {
    /// `base_url` is `https://HOST:PORT`; the path `/metrics/resource` is
    /// appended. The token file is read on every scrape so rotated tokens are
    /// picked up; a missing file means no token.
    pub fn new(
        base_url: &str,
        tls: Arc<rustls::ClientConfig>,
        token_file: Option<PathBuf>,
        timeout: Duration,
    ) -> Result<Self, KubeletError> {
        let url = format!("{}/metrics/resource", base_url.trim_end_matches('/'));
        let uri: Uri = url.parse().map_err(|source| KubeletError::Url {
            url: url.clone(),
            source,
        })?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            client,
            uri,
            token_file,
            timeout,
        })
    }

    fn token(&self) -> Result<Option<String>, KubeletError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Some(t.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KubeletError::Token {
                path: path.clone(),
                source,
            }),
        }
    }

    /// Fetches and decodes one payload.
    pub async fn scrape(&self) -> Result<(Batch, DecodeStats), KubeletError> {
        let started = SystemTime::now();
        let body = tokio::time::timeout(self.timeout, self.fetch())
            .await
            .map_err(|_| KubeletError::Timeout {
                url: self.uri.to_string(),
                timeout: self.timeout,
            })??;
        let text = String::from_utf8_lossy(&body);
        Ok(decode(&text, started))
    }

    async fn fetch(&self) -> Result<Vec<u8>, KubeletError> {
        let url = self.uri.to_string();
        let mut req = Request::get(self.uri.clone())
            .header(header::ACCEPT_ENCODING, "gzip")
            .header(
                header::USER_AGENT,
                concat!("metrics-agent/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = self.token()? {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Empty::new()).map_err(|e| KubeletError::Body {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|source| KubeletError::Request {
                url: url.clone(),
                source,
            })?;
        let status = resp.status();
        let gzip = resp
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| KubeletError::Body {
                url: url.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        if status != StatusCode::OK {
            let snippet = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
            return Err(KubeletError::Status {
                url,
                status,
                body: snippet,
            });
        }
        if !gzip {
            return Ok(body.to_vec());
        }
        let mut out = Vec::with_capacity(body.len() * 4);
        flate2::read::GzDecoder::new(&body[..])
            .take(MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| KubeletError::Body {
                url: url.clone(),
                reason: format!("gzip: {e}"),
            })?;
        if out.len() > MAX_BODY_BYTES {
            return Err(KubeletError::Body {
                url,
                reason: format!("decompressed body exceeds {MAX_BODY_BYTES} bytes"),
            });
        }
        Ok(out)
    }
}
