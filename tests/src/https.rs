//! A minimal HTTPS client for asserting status codes and bodies exactly.

use std::path::Path;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A pooling HTTP/1.1 client over TLS trusting the CA in `ca`.
pub type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// A keep-alive client trusting the CA in `ca`.
pub fn client(ca: &Path) -> anyhow::Result<HttpsClient> {
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(metrics_proto::tls::load_roots(ca)?)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// GETs `url` trusting the CA in `ca`, with extra `headers`.
pub async fn get(
    url: &str,
    ca: &Path,
    headers: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, http::HeaderMap, String)> {
    let (status, headers, body) = get_bytes(url, ca, headers).await?;
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// [`get`] with the body as bytes (for binary representations).
pub async fn get_bytes(
    url: &str,
    ca: &Path,
    headers: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, http::HeaderMap, Bytes)> {
    let client = client(ca)?;
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Empty::new())?).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

/// One HTTP/1.1 connection over TLS, optionally presenting a client
/// certificate; requests reuse it, so tests can act between them.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
    /// The server's certificate as seen in this connection's handshake.
    pub server_cert: rustls::pki_types::CertificateDer<'static>,
}

/// Opens a connection to `addr` trusting `ca`, presenting `client` if given.
pub async fn connect(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<&crate::pki::Pair>,
) -> anyhow::Result<Conn> {
    connect_with(addr, ca, client, None).await
}

/// [`connect`], with the socket's receive buffer shrunk to `recv_buffer`
/// when given (a client that reads slowly then fills it soon).
pub async fn connect_with(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<&crate::pki::Pair>,
    recv_buffer: Option<u32>,
) -> anyhow::Result<Conn> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in metrics_proto::tls::load_certs(ca)? {
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut tls = match client {
        Some(pair) => builder.with_client_auth_cert(
            metrics_proto::tls::load_certs(&pair.cert)?,
            metrics_proto::tls::load_key(&pair.key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let tcp = socket.connect(addr).await?;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await?;
    let server_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| anyhow::anyhow!("no server certificate"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(Conn {
        sender,
        host: addr.to_string(),
        server_cert,
    })
}

impl Conn {
    /// GETs `path` with `headers` on this connection.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, String)> {
        let resp = self.send(path, headers).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// GETs `path` with `headers`, answering once the headers arrive.
    pub async fn send(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        self.sender.ready().await?;
        let mut req = Request::get(path).header("host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Ok(self.sender.send_request(req.body(Empty::new())?).await?)
    }
}

/// GETs `path` on a new connection to `addr` (see [`connect`]).
pub async fn get_as(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<&crate::pki::Pair>,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, String)> {
    connect(addr, ca, client).await?.get(path, headers).await
}

/// A response whose body is read as it arrives (a watch).
pub struct Streaming {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: hyper::body::Incoming,
}

impl Streaming {
    /// The next chunk of the body: None at its clean end, Err when the
    /// connection broke, after `within` an Err too.
    pub async fn chunk(&mut self, within: std::time::Duration) -> anyhow::Result<Option<Bytes>> {
        loop {
            let frame = tokio::time::timeout(within, self.body.frame())
                .await
                .map_err(|_| anyhow::anyhow!("no data within {within:?}"))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// GETs `path` on a new HTTP/1.1 connection to `addr` trusting `ca` and
/// returns as soon as the headers arrive; `recv_buffer` shrinks the
/// socket's receive buffer (a client that reads slowly fills it soon).
pub async fn stream(
    addr: std::net::SocketAddr,
    ca: &Path,
    path: &str,
    headers: &[(&str, &str)],
    recv_buffer: Option<u32>,
) -> anyhow::Result<Streaming> {
    let resp = connect_with(addr, ca, None, recv_buffer)
        .await?
        .send(path, headers)
        .await?;
    let (parts, body) = resp.into_parts();
    Ok(Streaming {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
