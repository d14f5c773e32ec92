//! A JSON list written while it is sent: a frame of about [`FRAME_BYTES`]
//! of objects at a time, each copied from its rendered pieces, instead of
//! the whole answer (tens of MB for every pod of a large cluster) built in
//! memory before its first byte goes out. Its length is known up front, so
//! the answer still carries a `Content-Length`.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::query::Hit;

/// Bytes of objects per frame (one more object may go past it).
pub const FRAME_BYTES: usize = 256 * 1024;

const APIVERSION: &[u8] =
    b"\",\"apiVersion\":\"metrics.k8s.io/v1beta1\",\"metadata\":{},\"items\":[";

/// The list of `hits` as a `kind` (`PodMetricsList`, ...), each object with
/// `created` as its creationTimestamp.
pub struct ListBody<H> {
    kind: &'static str,
    hits: H,
    created: String,
    /// Objects already written.
    next: usize,
    /// Bytes not yet written.
    left: u64,
    started: bool,
}

impl<H: AsRef<[Hit]>> ListBody<H> {
    pub fn new(kind: &'static str, hits: H, created: String) -> Self {
        let objects: usize = hits
            .as_ref()
            .iter()
            .map(|h| h.rendered.len() + created.len())
            .sum();
        let len = b"{\"kind\":\"".len()
            + kind.len()
            + APIVERSION.len()
            + objects
            + hits.as_ref().len().saturating_sub(1)
            + b"]}".len();
        Self {
            kind,
            hits,
            created,
            next: 0,
            left: len as u64,
            started: false,
        }
    }

    /// The next frame; None once everything was written.
    fn next_frame(&mut self) -> Option<Bytes> {
        let hits = self.hits.as_ref();
        if self.started && self.next == hits.len() {
            return None;
        }
        let mut out = Vec::with_capacity(FRAME_BYTES + 4096);
        if !self.started {
            self.started = true;
            out.extend_from_slice(b"{\"kind\":\"");
            out.extend_from_slice(self.kind.as_bytes());
            out.extend_from_slice(APIVERSION);
        }
        while out.len() < FRAME_BYTES {
            let Some(h) = hits.get(self.next) else {
                break;
            };
            if self.next > 0 {
                out.push(b',');
            }
            h.rendered.write_to(&mut out, &self.created);
            self.next += 1;
        }
        if self.next == hits.len() {
            out.extend_from_slice(b"]}");
        }
        self.left = self.left.saturating_sub(out.len() as u64);
        Some(Bytes::from(out))
    }

    /// The whole list in one buffer (the other representations start
    /// from it).
    pub fn collect(mut self) -> Vec<u8> {
        let mut all = Vec::with_capacity(usize::try_from(self.left).unwrap_or(0));
        while let Some(frame) = self.next_frame() {
            all.extend_from_slice(&frame);
        }
        all
    }
}

impl<H: AsRef<[Hit]> + Unpin> Body for ListBody<H> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().next_frame().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.started && self.next == self.hits.as_ref().len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Rendered;

    fn hit(i: usize, pad: usize) -> Hit {
        let name = format!("pod-{i}-{}", "x".repeat(pad));
        Hit {
            namespace: "ns".into(),
            name: name.clone(),
            node: "n".into(),
            timestamp_ns: 0,
            rendered: Rendered::from_parts(
                &format!("{{\"metadata\":{{\"name\":\"{name}\",\"creationTimestamp\":\""),
                "\"},\"window\":\"15s\"}",
            ),
            pb: None,
        }
    }

    fn frames(mut body: ListBody<Vec<Hit>>) -> Vec<Bytes> {
        let mut out = Vec::new();
        let hint = body.size_hint().exact();
        while let Some(f) = body.next_frame() {
            out.push(f);
        }
        let total: usize = out.iter().map(Bytes::len).sum();
        assert_eq!(
            hint,
            Some(total as u64),
            "the announced length is the length"
        );
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.is_end_stream());
        out
    }

    /// Whatever the list's size, the frames join into the list JSON, each
    /// frame stays near its bound, and the announced length is exact.
    #[test]
    fn frames_join_into_the_list() {
        let created = "2026-01-01T00:00:00Z".to_string();
        for n in [0, 1, 2, 3_000] {
            let hits: Vec<Hit> = (0..n).map(|i| hit(i, i % 300)).collect();
            let parts = frames(ListBody::new(
                "PodMetricsList",
                hits.clone(),
                created.clone(),
            ));
            assert!(
                parts.iter().all(|f| f.len() < FRAME_BYTES + 4096),
                "a frame far past its bound"
            );
            if n == 3_000 {
                assert!(parts.len() > 2, "{} frames", parts.len());
            }
            let joined: Vec<u8> = parts.concat();
            let v: serde_json::Value = serde_json::from_slice(&joined).unwrap();
            assert_eq!(v["kind"], "PodMetricsList");
            assert_eq!(v["apiVersion"], "metrics.k8s.io/v1beta1");
            let items = v["items"].as_array().unwrap();
            assert_eq!(items.len(), n);
            for (i, item) in items.iter().enumerate() {
                assert_eq!(item["metadata"]["name"], hits[i].name.as_str());
                assert_eq!(item["metadata"]["creationTimestamp"], created.as_str());
            }
            let whole = ListBody::new("PodMetricsList", &hits[..], created.clone()).collect();
            assert_eq!(whole, joined);
        }
    }
}
