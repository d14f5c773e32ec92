//! A TCP proxy on 127.0.0.1 that forwards to one address until told to
//! blackhole: from then on every byte either way is swallowed and new
//! connections are accepted and never answered, as a network path that
//! drops packets without resetting anything would look.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Proxy {
    /// Listens on `listen` (an address the caller reserved, or port 0)
    /// and forwards to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let blackhole = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (bh, st) = (Arc::clone(&blackhole), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = st.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                let (bh, st) = (Arc::clone(&bh), st.clone());
                tokio::spawn(async move {
                    if bh.load(Ordering::SeqCst) {
                        // Accepted, never answered.
                        swallow(client, st).await;
                        return;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pipe(cr, sw, Arc::clone(&bh)) => {}
                        _ = pipe(sr, cw, bh) => {}
                        _ = st.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            blackhole,
            stop,
        })
    }

    /// Starts or ends the blackhole.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while not blackholed; swallows bytes while it is.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackhole: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn swallow(mut client: TcpStream, stop: CancellationToken) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = client.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}
