//! Node reports as an agent sends them, for tests that speak to the
//! ingest port directly.

use metrics_proto::v1::{NodeReport, Usage};

/// A report of `node` with node usage sampled now and no pods, announcing
/// `period_ms`.
pub fn node_report(node: &str, period_ms: u64) -> NodeReport {
    let now = metrics_proto::time::unix_nanos(std::time::SystemTime::now());
    let window = i64::try_from(period_ms).unwrap_or(i64::MAX) * 1_000_000;
    NodeReport {
        protocol_version: metrics_proto::PROTOCOL_VERSION,
        node_name: node.into(),
        sequence: 1,
        period_ms,
        node: Some(Usage {
            timestamp_unix_nanos: now,
            window_nanos: window,
            cpu_nanocores: 1_000_000,
            memory_working_set_bytes: 1 << 20,
            swap_bytes: 0,
        }),
        source: "test".into(),
        ..NodeReport::default()
    }
}

/// Reads `inbound` until the aggregator ends it, at most `within`: the
/// status it ended with (None for a clean end), or Err when it was still
/// open.
pub async fn stream_end(
    inbound: &mut tonic::Streaming<metrics_proto::v1::AggregatorMessage>,
    within: std::time::Duration,
) -> Result<Option<tonic::Status>, tokio::time::error::Elapsed> {
    tokio::time::timeout(within, async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
}
