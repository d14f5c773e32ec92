//! Report streams sent in small HTTP/2 DATA frames.
//!
//! A receiver's HTTP/2 connection reads into one buffer that h2 starts at
//! 8 KiB and grows to hold the largest frame it is sent, then keeps for the
//! connection's life: an agent's first report carries every label, so each
//! agent's connection would hold 16 KiB (the largest frame a peer may send
//! by default) on the aggregator for good. Cut into frames of at most 4 KiB
//! with their header, no frame ever makes that buffer grow. The stream's
//! flow-control window is untouched, so a report is not held back: it only
//! crosses as a few frames instead of one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;

/// Largest DATA frame payload [`SmallFrames`] sends: with the frame's
/// 9-byte header, 4 KiB on the wire.
pub const MAX_FRAME_PAYLOAD: usize = 4096 - 9;

/// A gRPC client's service (a `Channel`) whose request bodies are cut into
/// DATA frames of at most [`MAX_FRAME_PAYLOAD`] bytes.
#[derive(Debug, Clone)]
pub struct SmallFrames<S> {
    inner: S,
}

impl<S> SmallFrames<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> tower::Service<http::Request<Body>> for SmallFrames<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.inner
            .call(req.map(|body| Body::new(Pieces::new(body, MAX_FRAME_PAYLOAD))))
    }
}

/// A body whose data comes out in pieces of at most `max` bytes, each a
/// slice of what the inner body gave (no copies); trailers pass through.
#[derive(Debug)]
pub struct Pieces<B> {
    inner: B,
    rest: Bytes,
    max: usize,
}

impl<B> Pieces<B> {
    /// `max` of 0 is taken as 1.
    pub fn new(inner: B, max: usize) -> Self {
        Self {
            inner,
            rest: Bytes::new(),
            max: max.max(1),
        }
    }
}

impl<B> HttpBody for Pieces<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if !this.rest.is_empty() {
                let n = this.rest.len().min(this.max);
                return Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))));
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                end_or_error => return Poll::Ready(end_or_error),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Frames = Vec<Result<Frame<Bytes>, std::convert::Infallible>>;

    #[tokio::test]
    async fn data_comes_out_in_pieces_with_trailers_after() {
        let big: Bytes = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let small = Bytes::from_static(b"tail");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Frames = vec![
            Ok(Frame::data(big.clone())),
            Ok(Frame::data(small.clone())),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let mut pieces = Pieces::new(StreamBody::new(futures::stream::iter(frames)), 4087);
        let mut sizes = Vec::new();
        let mut first = None;
        let mut data = Vec::new();
        let mut got_trailers = None;
        while let Some(frame) = pieces.frame().await {
            let frame = frame.unwrap();
            assert!(got_trailers.is_none(), "nothing after the trailers");
            match frame.into_data() {
                Ok(d) => {
                    sizes.push(d.len());
                    first.get_or_insert(d.as_ptr());
                    data.extend_from_slice(&d);
                }
                Err(f) => got_trailers = f.into_trailers().ok(),
            }
        }
        assert_eq!(sizes, vec![4087, 4087, 1826, 4]);
        assert_eq!(data, [&big[..], &small[..]].concat());
        assert_eq!(first, Some(big.as_ptr()), "pieces are slices, not copies");
        assert_eq!(got_trailers, Some(trailers));
    }

    /// The body ends only once its last piece is out.
    #[tokio::test]
    async fn a_body_ends_with_its_last_piece() {
        let mut pieces = Pieces::new(http_body_util::Full::new(Bytes::from(vec![7u8; 10])), 4);
        assert!(!pieces.is_end_stream());
        assert_eq!(pieces.size_hint().exact(), Some(10));
        let mut sizes = Vec::new();
        while !pieces.is_end_stream() {
            let frame = pieces.frame().await.unwrap().unwrap();
            sizes.push(frame.into_data().unwrap().len());
            let left = 10 - sizes.iter().sum::<usize>() as u64;
            assert_eq!(pieces.size_hint().exact(), Some(left));
        }
        assert_eq!(sizes, vec![4, 4, 2]);
        assert!(pieces.frame().await.is_none());
    }
}
