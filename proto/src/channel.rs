//! gRPC channels to `https://HOST:PORT` (TLS by our own rustls connector,
//! so a CA file or no verification both work) or `http://HOST:PORT`; used
//! by agents toward aggregators and by aggregators toward their peers.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP/2 ping after this long without reading anything...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and the connection is closed if its answer takes longer than this.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A URL that cannot be dialled.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid gRPC URL {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

/// Where and how to dial one gRPC server.
#[derive(Clone)]
pub struct Dialer {
    url: String,
    endpoint: Endpoint,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dialer {
    /// `url` is `https://HOST:PORT` (needs `tls`, whose ALPN should offer
    /// `h2`) or `http://HOST:PORT`.
    pub fn new(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self, UrlError> {
        let bad = |reason: &str| UrlError {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("scheme must be https or http")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = match (secure, tls) {
            (true, Some(tls)) => Some(tls),
            (true, None) => return Err(bad("https needs a TLS configuration")),
            (false, _) => None,
        };
        // tonic sees plain HTTP/2; TLS, when wanted, is done by the connector.
        let authority = uri.authority().map_or("", |a| a.as_str());
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| bad(&e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        Ok(Self {
            url: url.to_owned(),
            endpoint,
            host,
            port,
            tls,
        })
    }

    /// Sends an HTTP/2 ping after [`KEEPALIVE_INTERVAL`] without reading
    /// anything and drops a connection whose answer takes longer than
    /// [`KEEPALIVE_TIMEOUT`]: for connections that may sit idle, whose
    /// silent loss would otherwise go unseen until the next request.
    pub fn with_keepalive(mut self) -> Self {
        self.endpoint = self
            .endpoint
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        self
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects now.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match self.tls.clone() {
            None => {
                self.endpoint
                    .connect_with_connector(plain(self.host.clone(), self.port))
                    .await
            }
            Some(tls) => {
                self.endpoint
                    .connect_with_connector(secure(self.host.clone(), self.port, tls))
                    .await
            }
        }
    }

    /// A channel that connects on first use and reconnects as needed.
    pub fn connect_lazy(&self) -> Channel {
        match self.tls.clone() {
            None => self
                .endpoint
                .connect_with_connector_lazy(plain(self.host.clone(), self.port)),
            Some(tls) => {
                self.endpoint
                    .connect_with_connector_lazy(secure(self.host.clone(), self.port, tls))
            }
        }
    }
}

type Connector<Io> = tower::util::ServiceFn<
    Box<
        dyn Fn(
                Uri,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = std::io::Result<TokioIo<Io>>> + Send>,
            > + Send
            + Sync,
    >,
>;

fn plain(host: String, port: u16) -> Connector<TcpStream> {
    tower::service_fn(Box::new(move |_: Uri| {
        let host = host.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tcp))
        })
    }))
}

fn secure(
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> Connector<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(tls);
    tower::service_fn(Box::new(move |_: Uri| {
        let (host, connector) = (host.clone(), connector.clone());
        Box::pin(async move {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(connector.connect(name, tcp).await?))
        })
    }))
}
