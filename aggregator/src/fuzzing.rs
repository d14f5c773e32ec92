//! Entry points of the fuzz targets in `fuzz/` (also run over their
//! corpora by `tests/fuzz_corpus.rs`): each feeds arbitrary bytes to one
//! parser and checks what must hold for any input, panicking otherwise.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use prost::Message;

use crate::api::protobuf;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::ingest_wire;
use crate::report;
use crate::report_decode;

/// Label and field selectors: parsing never panics, stays within its
/// bounds, gives the same answer twice, and a parsed selector matches a
/// label map the same way through both matching paths.
pub fn selectors(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let labels = LabelSelector::parse(text);
    assert_eq!(labels, LabelSelector::parse(text), "not deterministic");
    if let Ok(sel) = &labels {
        assert!(text.len() <= crate::api::selector::MAX_SELECTOR_BYTES);
        let mut map = BTreeMap::new();
        for (i, word) in text
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '/')
            .filter(|w| !w.is_empty())
            .take(8)
            .enumerate()
        {
            map.insert(word.to_owned(), format!("v{i}"));
            map.insert(format!("{word}x"), word.to_owned());
        }
        assert_eq!(
            sel.matches(&map),
            sel.matches_with(|k| map.get(k).map(String::as_str))
        );
    }
    let fields = FieldSelector::parse(text);
    assert_eq!(fields, FieldSelector::parse(text), "not deterministic");
    if let Ok(f) = fields {
        let _ = f.matches("ns", "name");
    }
}

/// A node report as it arrives over gRPC: decoding and validation never
/// panic, the ingest stream's decoder ([`report_decode`], into a report
/// decoded before) reads the bytes as prost does, and whatever is accepted
/// renders to valid JSON and to protobuf that decodes, with the names it
/// was accepted under.
pub fn report(data: &[u8]) {
    let decoded = metrics_proto::v1::NodeReport::decode(data);
    let mut ours = report_decode::take_spare();
    let ok = report_decode::decode_into(&mut ours, data).is_ok();
    assert_eq!(ok, decoded.is_ok(), "decoders disagree on {decoded:?}");
    let Ok(r) = decoded else {
        report_decode::recycle(ours);
        return;
    };
    assert_eq!(ours, r, "decoders read different reports");
    report_decode::recycle(ours);
    let Ok(entry) = report::to_entry(r, None, Instant::now(), 3) else {
        return;
    };
    assert!(entry.pods.len() <= metrics_proto::MAX_PODS_PER_REPORT);
    let created = "2023-11-14T22:13:20Z";
    if let Some(rendered) = entry.render() {
        let mut json = Vec::new();
        rendered.write_object(&mut json, "NodeMetrics", created);
        let v: serde_json::Value = serde_json::from_slice(&json)
            .unwrap_or_else(|e| panic!("node JSON: {e}: {}", String::from_utf8_lossy(&json)));
        assert_eq!(v["metadata"]["name"], entry.name.as_str());
        let pb = entry.render_pb().unwrap_or_default();
        let node = protobuf::NodeMetrics::decode(pb.as_slice())
            .unwrap_or_else(|e| panic!("node protobuf: {e}"));
        assert_eq!(node.metadata.and_then(|m| m.name), Some(entry.name.clone()));
    }
    for pod in &entry.pods {
        let mut json = Vec::new();
        pod.render(entry.swap)
            .write_object(&mut json, "PodMetrics", created);
        let v: serde_json::Value = serde_json::from_slice(&json)
            .unwrap_or_else(|e| panic!("pod JSON: {e}: {}", String::from_utf8_lossy(&json)));
        assert_eq!(v["metadata"]["name"], pod.name());
        assert_eq!(v["metadata"]["namespace"], pod.namespace());
        let decoded = protobuf::PodMetrics::decode(pod.render_pb(entry.swap).as_slice())
            .unwrap_or_else(|e| panic!("pod protobuf: {e}"));
        assert_eq!(decoded.containers.len(), pod.container_count());
    }
}

/// Every message of `frames` read by the ingest stream's reader, up to
/// the end or the first error (its code).
fn read_stream(
    frames: Vec<bytes::Bytes>,
) -> Vec<Result<metrics_proto::v1::NodeReport, tonic::Code>> {
    let mut reader = ingest_wire::ReportReader::new(ingest_wire::ReadyFrames(frames.into()));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    loop {
        let next = {
            let mut message = std::pin::pin!(reader.message());
            match message.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => panic!("waits on a body that is always ready"),
            }
        };
        match next {
            Ok(Some(r)) => out.push(Ok(r)),
            Ok(None) => return out,
            Err(status) => {
                out.push(Err(status.code()));
                return out;
            }
        }
    }
}

/// The ingest stream's gRPC framing (first byte: the size the rest is cut
/// into, as HTTP/2 frames would cut it): never panics, and reads the same
/// messages and the same error however the stream is cut.
pub fn ingest_frames(data: &[u8]) {
    let Some((&size, wire)) = data.split_first() else {
        return;
    };
    let whole = read_stream(vec![bytes::Bytes::copy_from_slice(wire)]);
    let cut = read_stream(
        wire.chunks(usize::from(size).max(1))
            .map(bytes::Bytes::copy_from_slice)
            .collect(),
    );
    assert_eq!(whole, cut, "depends on where the stream is cut");
}
