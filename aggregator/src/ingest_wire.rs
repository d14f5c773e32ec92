//! The `Ingest` service's gRPC framing, read and written here rather than
//! by tonic's generated server: that server gives every stream a decode
//! buffer that grows to the largest report it ever received (the first
//! one, which carries every label) and an 8 KiB encode buffer, and keeps
//! both for the stream's whole life. With one long-lived stream per node
//! they were a third of what a node cost a replica (BENCHMARKS.md). Here
//! a report is decoded straight from the HTTP/2 frame it arrived in (or
//! from one copy when it spans several), into the buffers of a report
//! decoded before on the same thread ([`crate::report_decode`]), and each
//! Ack is encoded into a buffer of its own size, so nothing is held
//! between reports. The wire format is the same: the agent uses tonic's
//! generated client.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::Stream;
use http::{HeaderMap, HeaderValue};
use hyper::body::Frame;
use prost::Message;
use tonic::body::Body;
use tonic::{Code, Status};

use metrics_proto::v1::{AggregatorMessage, NodeReport};
use metrics_proto::MAX_MESSAGE_BYTES;

use crate::ingest::{Answers, IngestService};
use crate::report_decode;

/// The one method this service serves.
pub const REPORT_PATH: &str = "/metrics.v1.Ingest/Report";

/// Bytes before each gRPC message: a compressed flag and a 32-bit length.
const HEADER_LEN: usize = 5;

/// Reads the `NodeReport` messages of one request body. Holds the rest
/// of the last HTTP/2 frame received and, for a message spanning frames,
/// one buffer it is copied into: never more than one message (at most
/// [`MAX_MESSAGE_BYTES`], checked from its header) and one frame, however
/// finely the sender cuts its frames.
pub struct ReportReader<B> {
    body: B,
    /// What is left of the last frame received.
    pending: Bytes,
    /// A header cut across frames: its bytes so far.
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Length of the message being read, once its header is complete.
    want: Option<usize>,
    /// The message being read, when it spans frames.
    partial: BytesMut,
    done: bool,
}

/// First room made for a message spanning frames; it grows from there
/// with what arrives, so a header announcing a large message that never
/// comes costs no more than what did.
const FIRST_RESERVE: usize = 64 * 1024;

impl<B> ReportReader<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(body: B) -> Self {
        Self {
            body,
            pending: Bytes::new(),
            header: [0; HEADER_LEN],
            header_len: 0,
            want: None,
            partial: BytesMut::new(),
            done: false,
        }
    }

    /// The next report; `None` when the agent closed its side. A message
    /// that is compressed, longer than [`MAX_MESSAGE_BYTES`] or not a
    /// `NodeReport` is an error, as tonic's server would answer it.
    pub async fn message(&mut self) -> Result<Option<NodeReport>, Status> {
        loop {
            if let Some(report) = self.decode_pending()? {
                return Ok(Some(report));
            }
            if self.done {
                return if self.header_len > 0 || self.want.is_some() {
                    Err(Status::internal("Unexpected EOF decoding stream."))
                } else {
                    Ok(None)
                };
            }
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                None => self.done = true,
                Some(Ok(frame)) => {
                    // Trailers from a client end its side; nothing else
                    // in them is read.
                    if let Ok(data) = frame.into_data() {
                        self.pending = data;
                    }
                }
                Some(Err(e)) => {
                    let status = Status::from_error(e.into());
                    // An agent that went away cancels its stream.
                    if status.code() == Code::Cancelled {
                        self.done = true;
                        self.header_len = 0;
                        self.want = None;
                        self.partial = BytesMut::new();
                    } else {
                        return Err(status);
                    }
                }
            }
        }
    }

    /// Bytes held for messages not yet complete (for tests).
    pub fn held(&self) -> usize {
        self.pending.len() + self.partial.capacity() + self.header_len
    }

    /// Drops `n` bytes of the last frame; once none are left, lets go of
    /// it. An empty `Bytes` still holds its frame's buffer, which is h2's
    /// read buffer: held until the next report's frame replaced it, that
    /// buffer (8 KiB) stayed allocated between reports; let go, it is
    /// freed once the report is read.
    fn consume(&mut self, n: usize) {
        self.pending.advance(n);
        if self.pending.is_empty() {
            self.pending = Bytes::new();
        }
    }

    /// Takes what it can from the last frame; decodes a message once one
    /// is complete. Consumes the whole frame unless a message is returned.
    fn decode_pending(&mut self) -> Result<Option<NodeReport>, Status> {
        let len = match self.want {
            Some(len) => len,
            None => {
                let n = (HEADER_LEN - self.header_len).min(self.pending.len());
                self.header[self.header_len..self.header_len + n]
                    .copy_from_slice(&self.pending[..n]);
                self.consume(n);
                self.header_len += n;
                if self.header_len < HEADER_LEN {
                    return Ok(None);
                }
                self.header_len = 0;
                let h = self.header;
                if h[0] != 0 {
                    return Err(Status::internal(
                        "compressed message: this server accepts no grpc-encoding",
                    ));
                }
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                if len > MAX_MESSAGE_BYTES {
                    return Err(Status::out_of_range(format!(
                        "message of {len} bytes over the limit of {MAX_MESSAGE_BYTES} bytes"
                    )));
                }
                self.want = Some(len);
                len
            }
        };
        let message = if self.partial.is_empty() && self.pending.len() >= len {
            // The usual case: the whole message in this frame.
            self.pending.split_to(len)
        } else {
            if self.pending.is_empty() {
                return Ok(None);
            }
            if self.partial.is_empty() {
                self.partial.reserve(len.min(FIRST_RESERVE));
            }
            let n = (len - self.partial.len()).min(self.pending.len());
            self.partial.extend_from_slice(&self.pending[..n]);
            self.consume(n);
            if self.partial.len() < len {
                return Ok(None);
            }
            // Leaves nothing allocated behind.
            std::mem::take(&mut self.partial).freeze()
        };
        self.want = None;
        let mut report = report_decode::take_spare();
        match report_decode::decode_into(&mut report, &message) {
            Ok(()) => Ok(Some(report)),
            Err(e) => {
                report_decode::recycle(report);
                Err(Status::internal(format!("decoding the report: {e}")))
            }
        }
    }
}

/// `message` as one gRPC frame, in a buffer of exactly its size.
pub fn frame(message: &AggregatorMessage) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Cannot fail: the buffer has room for the encoded length.
    let _ = message.encode(&mut buf);
    buf.freeze()
}

/// One answer on an agent stream: a framed message, or the status that
/// ends the stream.
pub type Outgoing = Result<Bytes, Status>;

/// The response body: each framed message as it is worked out, then the
/// stream's status as trailers (OK when the stream ended without one).
struct AckBody {
    answers: Answers,
    done: bool,
}

/// `status` as gRPC trailers.
fn trailers(status: Status) -> HeaderMap {
    let mut headers = status.into_http::<()>().into_parts().0.headers;
    headers.remove(http::header::CONTENT_TYPE);
    headers
}

impl hyper::body::Body for AckBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(Pin::new(&mut self.answers).poll_next(cx)) {
            Some(Ok(data)) => Frame::data(data),
            Some(Err(status)) => {
                self.done = true;
                Frame::trailers(trailers(status))
            }
            None => {
                self.done = true;
                Frame::trailers(trailers(Status::ok("")))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Answers one `Report` call: a report stream from its body, acks in the
/// response.
pub async fn respond<B>(service: IngestService, req: http::Request<B>) -> http::Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let request = tonic::Request::from_http(http::Request::from_parts(parts, ()));
    match service.open(request, ReportReader::new(body)).await {
        Ok(answers) => {
            let mut response = http::Response::new(Body::new(AckBody {
                answers,
                done: false,
            }));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

/// A request body whose data frames are all ready at once (for tests and
/// the fuzz target).
#[cfg(any(test, feature = "fuzzing"))]
pub struct ReadyFrames(pub std::collections::VecDeque<Bytes>);

#[cfg(any(test, feature = "fuzzing"))]
impl hyper::body::Body for ReadyFrames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request body delivering `chunks` as its data frames.
    fn body(chunks: Vec<Bytes>) -> ReadyFrames {
        ReadyFrames(chunks.into())
    }

    fn report(node: &str) -> NodeReport {
        NodeReport {
            node_name: node.into(),
            source: "s".repeat(100),
            ..Default::default()
        }
    }

    fn framed(r: &NodeReport) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(r.encoded_len() as u32).to_be_bytes());
        out.extend_from_slice(&r.encode_to_vec());
        out
    }

    #[tokio::test]
    async fn messages_are_read_across_any_split_of_their_frames() {
        let wire: Vec<u8> = [
            framed(&report("a")),
            framed(&report("b")),
            framed(&report("c")),
        ]
        .concat();
        // Every split point, and every byte on its own.
        for cut in 0..wire.len() {
            let chunks = vec![
                Bytes::copy_from_slice(&wire[..cut]),
                Bytes::copy_from_slice(&wire[cut..]),
            ];
            let mut r = ReportReader::new(body(chunks));
            for want in ["a", "b", "c"] {
                assert_eq!(
                    r.message().await.unwrap().unwrap().node_name,
                    want,
                    "cut at {cut}"
                );
            }
            assert!(r.message().await.unwrap().is_none());
            assert_eq!(r.held(), 0);
        }
        let bytes: Vec<Bytes> = wire.iter().map(|b| Bytes::copy_from_slice(&[*b])).collect();
        let mut r = ReportReader::new(body(bytes));
        for want in ["a", "b", "c"] {
            assert_eq!(r.message().await.unwrap().unwrap().node_name, want);
        }
        assert!(r.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn read_messages_leave_no_hold_on_their_frames() {
        // Two messages cut across two frames at every point, as an agent's
        // 4 KiB frames cut its reports.
        let wire = [framed(&report("a")), framed(&report("b"))].concat();
        for cut in 1..wire.len() {
            let frames = [
                Bytes::copy_from_slice(&wire[..cut]),
                Bytes::copy_from_slice(&wire[cut..]),
            ];
            let mut r = ReportReader::new(body(frames.to_vec()));
            for want in ["a", "b"] {
                assert_eq!(r.message().await.unwrap().unwrap().node_name, want);
            }
            // The reader lives on, waiting for the next report: it holds
            // neither frame (so h2's read buffer can be freed).
            for (i, f) in frames.iter().enumerate() {
                assert!(f.is_unique(), "frame {i} still held, cut at {cut}");
            }
            drop(r);
        }
    }

    #[tokio::test]
    async fn a_message_in_tiny_frames_holds_no_more_than_its_length() {
        let mut big = report("a");
        big.source = "s".repeat(200_000);
        let wire = framed(&big);
        // Every byte its own frame, and the last one never sent.
        let frames: Vec<Bytes> = wire[..wire.len() - 1]
            .iter()
            .map(|b| Bytes::copy_from_slice(&[*b]))
            .collect();
        let mut r = ReportReader::new(body(frames));
        assert!(r.message().await.is_err());
        let len = wire.len() - HEADER_LEN;
        assert!(
            r.held() <= 2 * len,
            "{} bytes held for a {len}-byte message",
            r.held()
        );

        let mut r = ReportReader::new(body(
            wire.iter().map(|b| Bytes::copy_from_slice(&[*b])).collect(),
        ));
        assert_eq!(r.message().await.unwrap().unwrap(), big);
        assert_eq!(r.held(), 0);
    }

    #[tokio::test]
    async fn bad_messages_are_refused_with_the_code_tonic_gives() {
        let mut compressed = framed(&report("a"));
        compressed[0] = 1;
        let mut r = ReportReader::new(body(vec![compressed.into()]));
        assert_eq!(r.message().await.unwrap_err().code(), Code::Internal);

        // Refused from its header alone, before any of it is buffered.
        let mut huge = vec![0u8];
        huge.extend_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes());
        let mut r = ReportReader::new(body(vec![huge.into()]));
        let err = r.message().await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "{err}");

        let mut garbage = vec![0u8, 0, 0, 0, 3];
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut r = ReportReader::new(body(vec![garbage.into()]));
        assert_eq!(r.message().await.unwrap_err().code(), Code::Internal);

        let mut cut = framed(&report("a"));
        cut.truncate(cut.len() - 1);
        let mut r = ReportReader::new(body(vec![cut.into()]));
        let err = r.message().await.unwrap_err();
        assert!(err.message().contains("EOF"), "{err}");
    }

    #[test]
    fn a_frame_is_the_message_behind_its_length() {
        let msg = AggregatorMessage {
            kind: Some(metrics_proto::v1::aggregator_message::Kind::Ack(
                metrics_proto::v1::Ack {
                    sequence: 7,
                    accepted: true,
                    error: "note".into(),
                },
            )),
        };
        let f = frame(&msg);
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - HEADER_LEN
        );
        assert_eq!(AggregatorMessage::decode(&f[HEADER_LEN..]).unwrap(), msg);
    }
}
