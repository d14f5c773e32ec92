//! Reports on the wire: a period's report is encoded once, whatever the
//! number of streams, and each stream sends those bytes with its own
//! sequence number appended.
//!
//! Protobuf lets a scalar field appear again later in a message, the last
//! occurrence winning; so `sequence` (and `labels_omitted`) are written
//! after the shared bytes instead of into a copy of the report.

use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;
use tonic_prost::ProstDecoder;

use metrics_proto::v1::{AggregatorMessage, NodeReport};

/// `NodeReport.sequence` (`uint64`).
const SEQUENCE_FIELD: u32 = 3;
/// `NodeReport.labels_omitted` (`bool`).
const LABELS_OMITTED_FIELD: u32 = 10;

/// The `Ingest.Report` method.
const REPORT_PATH: &str = "/metrics.v1.Ingest/Report";

/// `report` encoded, with `labels_omitted` set.
pub fn omitted(report: &NodeReport) -> Bytes {
    let mut buf = Vec::with_capacity(report.encoded_len() + 2);
    report.encode_raw(&mut buf);
    prost::encoding::bool::encode(LABELS_OMITTED_FIELD, &true, &mut buf);
    Bytes::from(buf)
}

/// `report` encoded as it is.
pub fn whole(report: &NodeReport) -> Bytes {
    Bytes::from(report.encode_to_vec())
}

/// One message of a stream: a period's shared bytes and this stream's
/// sequence number.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub report: Bytes,
    pub sequence: u64,
}

impl Outgoing {
    /// The message as it goes on the wire.
    fn write(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.report);
        if self.sequence != 0 {
            prost::encoding::uint64::encode(SEQUENCE_FIELD, &self.sequence, dst);
        }
    }
}

#[cfg(test)]
impl Outgoing {
    /// The report the aggregator decodes from this message.
    pub(crate) fn decoded(&self) -> NodeReport {
        let mut buf = Vec::new();
        self.write(&mut buf);
        NodeReport::decode(buf.as_slice()).expect("a report the agent encoded")
    }
}

/// `Ingest.Report` with pre-encoded reports out and [`AggregatorMessage`]s
/// in.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReportCodec;

/// Writes an [`Outgoing`] as it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.write(dst);
        Ok(())
    }
}

impl Codec for ReportCodec {
    type Encode = Outgoing;
    type Decode = AggregatorMessage;
    type Encoder = OutgoingEncoder;
    type Decoder = ProstDecoder<AggregatorMessage>;

    fn encoder(&mut self) -> OutgoingEncoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<AggregatorMessage> {
        ProstDecoder::default()
    }
}

/// Opens an `Ingest.Report` stream on `channel` sending `request`'s
/// messages; messages are limited to `max_bytes` both ways.
pub async fn open_report_stream<S>(
    channel: tonic::transport::Channel,
    mut request: tonic::Request<S>,
    max_bytes: usize,
) -> Result<tonic::Response<tonic::codec::Streaming<AggregatorMessage>>, Status>
where
    S: futures::Stream<Item = Outgoing> + Send + 'static,
{
    // Small frames keep the aggregator's per-connection read buffer small.
    let mut grpc = tonic::client::Grpc::new(metrics_proto::frames::SmallFrames::new(channel))
        .max_decoding_message_size(max_bytes)
        .max_encoding_message_size(max_bytes);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("metrics.v1.Ingest", "Report"));
    grpc.streaming(request, PathAndQuery::from_static(REPORT_PATH), ReportCodec)
        .await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use metrics_proto::v1::{ContainerUsage, PodUsage, Usage};

    use super::*;

    fn report() -> NodeReport {
        NodeReport {
            protocol_version: 1,
            node_name: "n1".into(),
            period_ms: 15_000,
            node_labels: HashMap::from([("zone".into(), "a".into())]),
            node: Some(Usage {
                timestamp_unix_nanos: 1_700_000_000_000_000_000,
                window_nanos: 15_000_000_000,
                cpu_nanocores: 12,
                memory_working_set_bytes: 34,
                swap_bytes: 0,
            }),
            pods: vec![PodUsage {
                namespace: "ns".into(),
                name: "p".into(),
                labels: HashMap::from([("app".into(), "web".into())]),
                timestamp_unix_nanos: 1_700_000_000_000_000_000,
                window_nanos: 15_000_000_000,
                containers: vec![ContainerUsage {
                    name: "c".into(),
                    cpu_nanocores: 5,
                    memory_working_set_bytes: 6,
                    swap_bytes: 0,
                }],
            }],
            source: "kubelet".into(),
            labels_version: 99,
            ..Default::default()
        }
    }

    fn on_wire(report: Bytes, sequence: u64) -> NodeReport {
        Outgoing { report, sequence }.decoded()
    }

    /// What the aggregator decodes is the report with this stream's
    /// sequence number, and with `labels_omitted` when asked: the appended
    /// fields win over what the shared bytes carry.
    #[test]
    fn appended_fields_set_sequence_and_omission() {
        let r = report();
        for sequence in [1, 2, 300, u64::MAX] {
            let mut want = r.clone();
            want.sequence = sequence;
            assert_eq!(on_wire(whole(&r), sequence), want);
            want.labels_omitted = true;
            assert_eq!(on_wire(omitted(&r), sequence), want);
        }
        // A sequence already in the shared bytes is overridden.
        let mut stale = r.clone();
        stale.sequence = 7;
        assert_eq!(on_wire(whole(&stale), 8).sequence, 8);
        // Sequence 0 is proto3's default: nothing is appended.
        assert_eq!(on_wire(whole(&r), 0), r);
    }
}
