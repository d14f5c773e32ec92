//! A connection that nothing is read from for too long is closed: a peer
//! that opens TCP and never finishes TLS, never sends the HTTP/2 preface,
//! or stops answering keep-alive pings ends with a read error instead of
//! holding a socket and its buffers forever. Healthy HTTP/2 peers are read
//! from at least at every keep-alive ping's answer. A connection that is
//! streaming a response (a watch over HTTP/1.1, where the client has
//! nothing more to send) is not idle while the stream lasts.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner`, failing reads with `TimedOut` once `idle` passes without a
/// byte read.
#[derive(Debug)]
pub struct ReadIdle<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    /// When the deadline was last pushed back; pushing it on every read
    /// would touch the timer wheel for each TLS record.
    armed_at: Instant,
    /// A place under a connection cap, given back when the connection goes.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Responses being streamed on this connection.
    streaming: Arc<AtomicUsize>,
}

/// Marks its connection as streaming a response while it lives.
#[derive(Debug)]
pub struct StreamingGuard(Arc<AtomicUsize>);

impl StreamingGuard {
    pub fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for StreamingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> ReadIdle<T> {
    pub fn new(inner: T, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep_until(now + idle)),
            armed_at: now,
            _slot: None,
            streaming: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The count of responses streaming on this connection (see
    /// [`StreamingGuard`]).
    pub fn streaming(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.streaming)
    }

    /// Holds `slot` for as long as the connection lives.
    pub fn holding(mut self, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        self._slot = Some(slot);
        self
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadIdle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    // Re-arm at most a few times per idle period.
                    if now.duration_since(self.armed_at) >= self.idle / 8 {
                        let idle = self.idle;
                        self.armed_at = now;
                        self.deadline.as_mut().reset(now + idle);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                match self.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) if self.streaming.load(Ordering::Relaxed) > 0 => {
                        let (now, idle) = (Instant::now(), self.idle);
                        self.armed_at = now;
                        self.deadline.as_mut().reset(now + idle);
                    }
                    Poll::Ready(()) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("nothing read for {:?}", self.idle),
                        )))
                    }
                    Poll::Pending => return Poll::Pending,
                }
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadIdle<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for ReadIdle<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (mut far, near) = tokio::io::duplex(64);
        let mut conn = ReadIdle::new(near, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        // Bytes every 6 s keep it open well past 10 s.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(6)).await;
            far.write_all(b"x").await.unwrap();
            assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        }
        // Then silence: the read fails once 10 s pass.
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_connection_is_not_idle_until_the_stream_ends() {
        let (mut far, near) = tokio::io::duplex(64);
        let mut conn = ReadIdle::new(near, Duration::from_secs(10));
        let guard = StreamingGuard::new(&conn.streaming());
        let mut buf = [0u8; 8];
        // 35 s of silence while a response streams: the read still waits.
        let silent = tokio::time::timeout(Duration::from_secs(35), conn.read(&mut buf)).await;
        assert!(silent.is_err(), "{silent:?}");
        // The stream ends: silence now times the connection out.
        drop(guard);
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        far.write_all(b"x").await.unwrap();
    }
}
