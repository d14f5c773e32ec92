//! Reads the local kubelet's `/metrics/resource` over HTTPS.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use metrics_proto::token::TokenFile;

use crate::batch::Batch;
use crate::pods::{PodInfo, PodWire};
use crate::source::decode::{decode_with, DecodeMemory, DecodeStats};

/// Largest payload accepted, compressed or not (bytes). A 110-pod node
/// serves about 100 KB.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Largest `/pods` answer accepted (bytes); full pod specs are big.
pub const MAX_PODS_BODY_BYTES: usize = 64 * 1024 * 1024;

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
    /// The token file exists but could not be read, or is not a valid
    /// header value.
    #[error("kubelet token: {0}")]
    Token(#[from] metrics_proto::token::TokenError),
    /// Connecting or sending failed.
    #[error("request to {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The kubelet's serving certificate was not accepted.
    #[error("kubelet {url}: its serving certificate is not trusted ({reason}); {hint}")]
    Certificate {
        url: String,
        reason: String,
        hint: &'static str,
    },
    /// No answer within the timeout.
    #[error("request to {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// `/pods` was not a PodList.
    #[error("decoding {url}: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
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

/// What to do when the kubelet's certificate is refused: the flags users of
/// metrics-server know, and the overlay that sets one of them.
const CERT_HINT: &str = "set --kubelet-certificate-authority to the CA that signed the \
kubelets' serving certificates, or, for kubelets with self-signed certificates (kubeadm's \
default), --kubelet-insecure-tls (deploy/overlays/kubelet-insecure)";

/// A failed request, told apart when the TLS handshake refused the
/// kubelet's certificate (the cause is buried in the error chain).
fn request_error(url: &str, source: hyper_util::client::legacy::Error) -> KubeletError {
    match refused_certificate(&source) {
        Some(why) => KubeletError::Certificate {
            url: url.to_owned(),
            reason: format!("{why:?}"),
            hint: CERT_HINT,
        },
        None => KubeletError::Request {
            url: url.to_owned(),
            source,
        },
    }
}

/// The certificate error in `e`'s chain, looking inside the io::Errors
/// that wrap it (their own `source` skips the error they wrap).
fn refused_certificate<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::CertificateError> {
    if let Some(rustls::Error::InvalidCertificate(why)) = e.downcast_ref::<rustls::Error>() {
        return Some(why);
    }
    let inner = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .map(|i| i as &(dyn std::error::Error + 'static));
    match inner {
        Some(i) => refused_certificate(i),
        None => refused_certificate(e.source()?),
    }
}

/// How long a kubelet token read from its file is used before the file is
/// read again: a minute, as client-go's file token source does. A projected
/// ServiceAccount token is rewritten by the kubelet well before it expires
/// (at 80 % of a lifetime of at least 10 minutes), so the agent never sends
/// one that has expired. After a 401 it is read again at once.
pub const TOKEN_MAX_AGE: Duration = Duration::from_secs(60);

/// A kubelet client for one node.
#[derive(Clone)]
pub struct KubeletSource {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    uri: Uri,
    pods_uri: Uri,
    token: Option<Arc<TokenFile>>,
    timeout: Duration,
    /// Names of the last payloads, shared by the next one's batch, and
    /// the last payload's shape, which the next is read against.
    memory: Arc<std::sync::Mutex<DecodeMemory>>,
    /// The buffer each payload is read into, kept from one period to the
    /// next (see [`keep_body_buffer`]).
    body: Arc<std::sync::Mutex<Vec<u8>>>,
}

/// Locks `m`; a panic elsewhere while it was held leaves nothing half
/// done that the next period cannot use.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Capacity a kept body buffer may have beyond twice the payload it last
/// held, so that one outsized payload is not held for good.
const BODY_SLACK: usize = 256 * 1024;

/// Keeps `buf` for the next payload, emptied, unless it is far larger
/// than the payload it holds needed: a payload read into a buffer of the
/// right size costs no allocation, and, at about 100 KB, spares the C
/// library's heap from growing and shrinking every period.
fn keep_body_buffer(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.capacity() > buf.len().saturating_mul(2).saturating_add(BODY_SLACK) {
        buf = Vec::new();
    }
    buf.clear();
    buf
}

impl KubeletSource {
    /// `base_url` is `https://HOST:PORT`; the path `/metrics/resource` is
    /// appended. The token file is read again once a minute so rotated
    /// tokens are picked up ([`TOKEN_MAX_AGE`]); a missing file means no token.
    pub fn new(
        base_url: &str,
        tls: Arc<rustls::ClientConfig>,
        token_file: Option<PathBuf>,
        timeout: Duration,
    ) -> Result<Self, KubeletError> {
        let parse = |path: &str| {
            let url = format!("{}{path}", base_url.trim_end_matches('/'));
            url.parse::<Uri>()
                .map_err(|source| KubeletError::Url { url, source })
        };
        let uri = parse("/metrics/resource")?;
        let pods_uri = parse("/pods")?;
        // The connector sets ALPN from the enabled HTTP versions itself.
        let mut tls = (*tls).clone();
        tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            client,
            uri,
            pods_uri,
            token: token_file.map(|path| Arc::new(TokenFile::with_max_age(&path, TOKEN_MAX_AGE))),
            memory: Default::default(),
            body: Default::default(),
            timeout,
        })
    }

    /// Fetches and decodes one payload.
    pub async fn scrape(&self) -> Result<(Batch, DecodeStats), KubeletError> {
        let started = SystemTime::now();
        let mut body = std::mem::take(&mut *lock(&self.body));
        let fetched = self.fetch(&self.uri, MAX_BODY_BYTES, &mut body).await;
        let decoded = fetched.map(|()| {
            // Valid UTF-8 (the norm) is checked at `from_utf8`'s ASCII pace.
            let text = match std::str::from_utf8(&body) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(&body),
            };
            let mut memory = lock(&self.memory);
            let decoded = decode_with(&text, started, &mut memory);
            memory.end_period();
            decoded
        });
        *lock(&self.body) = keep_body_buffer(body);
        decoded
    }

    /// The pods on this node from the kubelet's `/pods` (a core/v1
    /// PodList). Needs `nodes/proxy` on the kubelet.
    pub async fn pods(&self) -> Result<Vec<PodInfo>, KubeletError> {
        let mut body = Vec::new();
        self.fetch(&self.pods_uri, MAX_PODS_BODY_BYTES, &mut body)
            .await?;
        parse_pod_list(&body).map_err(|source| KubeletError::Json {
            url: self.pods_uri.to_string(),
            source,
        })
    }

    /// Reads the body at `uri` into `out` (emptied first), decompressed,
    /// refusing one larger than `limit`.
    async fn fetch(&self, uri: &Uri, limit: usize, out: &mut Vec<u8>) -> Result<(), KubeletError> {
        tokio::time::timeout(self.timeout, self.fetch_inner(uri, limit, out))
            .await
            .map_err(|_| KubeletError::Timeout {
                url: uri.to_string(),
                timeout: self.timeout,
            })?
    }

    async fn fetch_inner(
        &self,
        uri: &Uri,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), KubeletError> {
        // Written out only for an error (formatting it every period was
        // over 1 % of a period's CPU in a profile).
        let url = || uri.to_string();
        // No `Accept-Encoding: gzip`: the kubelet is on this node, so
        // compressing saves no network and costs both ends CPU every
        // period. A gzip answer is still read.
        let mut req = Request::get(uri.clone()).header(
            header::USER_AGENT,
            concat!("metrics-agent/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(token) = &self.token {
            if let Some(value) = token.bearer()? {
                req = req.header(header::AUTHORIZATION, value);
            }
        }
        let req = req.body(Empty::new()).map_err(|e| KubeletError::Body {
            url: url(),
            reason: e.to_string(),
        })?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|source| request_error(&url(), source))?;
        let status = resp.status();
        let gzip = resp
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        // Each piece is copied out as it comes and let go, so hyper reads
        // the next into the same buffer.
        out.clear();
        let mut incoming = resp.into_body();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| KubeletError::Body {
                url: url(),
                reason: e.to_string(),
            })?;
            if let Ok(data) = frame.into_data() {
                if out.len().saturating_add(data.len()) > limit {
                    return Err(KubeletError::Body {
                        url: url(),
                        reason: format!("body exceeds {limit} bytes"),
                    });
                }
                out.extend_from_slice(&data);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            if let Some(token) = &self.token {
                token.forget();
            }
        }
        if status != StatusCode::OK {
            let snippet = String::from_utf8_lossy(&out[..out.len().min(256)]).into_owned();
            return Err(KubeletError::Status {
                url: url(),
                status,
                body: snippet,
            });
        }
        if !gzip {
            return Ok(());
        }
        let mut inflated = Vec::with_capacity(out.len().saturating_mul(4).min(limit));
        flate2::read::GzDecoder::new(&out[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| KubeletError::Body {
                url: url(),
                reason: format!("gzip: {e}"),
            })?;
        if inflated.len() > limit {
            return Err(KubeletError::Body {
                url: url(),
                reason: format!("decompressed body exceeds {limit} bytes"),
            });
        }
        *out = inflated;
        Ok(())
    }
}

/// Decodes a core/v1 PodList into what the agent needs.
pub fn parse_pod_list(body: &[u8]) -> Result<Vec<PodInfo>, serde_json::Error> {
    let list: PodList = serde_json::from_slice(body)?;
    Ok(list.items.into_iter().map(PodInfo::from).collect())
}

#[derive(serde::Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<PodWire>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer is kept, emptied, while it is at most twice the payload it
    /// held plus the slack; one far larger is let go.
    #[test]
    fn body_buffer_is_kept_unless_far_larger_than_the_payload() {
        let used = 100_000;
        let mut buf = Vec::with_capacity(used * 2 + BODY_SLACK);
        buf.resize(used, b'x');
        let cap = buf.capacity();
        let kept = keep_body_buffer(buf);
        assert!(kept.is_empty());
        assert_eq!(kept.capacity(), cap, "kept as it was");

        let mut big = Vec::with_capacity(used * 2 + BODY_SLACK + 1);
        big.resize(used, b'x');
        let dropped = keep_body_buffer(big);
        assert!(dropped.is_empty());
        assert_eq!(dropped.capacity(), 0, "let go");

        // An outsized payload, then a small one: the buffer does not stay
        // at the outsized one's size.
        let huge = vec![0u8; 8 << 20];
        let mut after_huge = keep_body_buffer(huge);
        assert!(after_huge.capacity() >= 8 << 20, "kept for its own size");
        after_huge.resize(used, b'x');
        assert_eq!(keep_body_buffer(after_huge).capacity(), 0);
    }
}
