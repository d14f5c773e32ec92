//! The wire contract between `metrics-agent` and `metrics-aggregator`: the
//! generated gRPC types plus the few constants and helpers both sides must
//! agree on.

pub mod acks;
pub mod channel;
pub mod checks;
pub mod duration;
pub mod frames;
pub mod kubeclient;
pub mod labels;
pub mod ring;
pub mod roots;
pub mod runtime;
pub mod time;
pub mod tls;
pub mod token;

/// Generated from `proto/metrics.proto` (package `metrics.v1`).
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod v1 {
    tonic::include_proto!("metrics.v1");
}

/// Version of the report format this build speaks. Bumped on any change that
/// an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 1;

/// ALPN protocol a replica's client offers, besides `h2`, when it connects
/// to a peer's gRPC port: the peer reads it from the ClientHello and serves
/// the connection apart from agents' report streams. The negotiated protocol
/// stays `h2`.
pub const PEER_ALPN: &[u8] = b"x-metrics-peer";

/// Largest encoded message either side accepts (bytes). A 110-pod report is
/// about 30 KB; this leaves room for big nodes while bounding what one
/// hostile message can make a peer allocate.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Shortest and longest reporting period an agent may use: a longer one
/// would keep a node's data (and the memory it takes) for hours.
pub const MIN_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
pub const MAX_PERIOD: std::time::Duration = std::time::Duration::from_secs(600);

/// Most pods one report may carry. The kubelet's default is 110 per node and
/// few clusters go past 500.
pub const MAX_PODS_PER_REPORT: usize = 2_000;

/// Most containers one pod may carry in a report.
pub const MAX_CONTAINERS_PER_POD: usize = 256;
