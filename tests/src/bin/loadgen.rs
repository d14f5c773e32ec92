//! Load generator: N simulated agents (one gRPC+TLS connection per stream)
//! against real `metrics-aggregator` replicas on 127.0.0.1; prints one JSON
//! summary of per-replica CPU and RSS, ingest lag, API latency with 1 and
//! more clients, metric age, and completeness. Bounded in time; stops by
//! itself.
//!
//! `cargo run --release -p metrics-e2e --bin loadgen -- --nodes 1000 --replicas 1 --replication 1`

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use metrics_e2e::load::{self, workload::Shape};

#[derive(Debug, Parser)]
#[command(about = "Load generator for metrics-aggregator")]
struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods per node.
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Containers per pod.
    #[arg(long, default_value_t = 2)]
    containers: usize,
    /// Namespaces the Deployments are spread over.
    #[arg(long, default_value_t = 200)]
    namespaces: usize,
    /// Aggregator replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Owners per node.
    #[arg(long, default_value_t = 2)]
    replication: usize,
    /// Reporting period, seconds.
    #[arg(long, default_value_t = 15)]
    period: u64,
    /// Whole periods measured for ingest cost.
    #[arg(long, default_value_t = 4)]
    measure_periods: u32,
    /// Client counts the queries run with.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    clients: Vec<usize>,
    /// Queries per client: HPA-style, pod GET, all nodes, all pods.
    #[arg(long, value_delimiter = ',', default_value = "200,200,50,10")]
    queries: Vec<usize>,
    /// Longest a query phase may run, seconds.
    #[arg(long, default_value_t = 120)]
    phase_limit: u64,
    /// All-pods lists asked in each representation (JSON, protobuf, Table,
    /// YAML) after the query phases, for their cost; 0: none.
    #[arg(long, default_value_t = 0)]
    representations: usize,
    /// Seconds ingest runs on after those lists before the replicas' RSS is
    /// read again (what large answers left behind); 0: not read.
    #[arg(long, default_value_t = 0)]
    settle: u64,
    /// Reports carry the real agent's `answer_within_ms`, so replicas answer
    /// only as often as it needs (ingest lag is then measured on the reports
    /// answered); by default every report is answered.
    #[arg(long)]
    paced_acks: bool,

    /// Extra flag for every replica (repeatable), e.g. --extra=--peer-timeout=2s.
    #[arg(long)]
    extra: Vec<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    metrics_proto::tls::install_crypto_provider();
    let args = Args::parse();
    let q = |i: usize| args.queries.get(i).copied().unwrap_or(0);
    let dir = tempfile::tempdir()?;
    let cfg = load::Config {
        shape: Shape {
            nodes: args.nodes,
            pods_per_node: args.pods,
            containers_per_pod: args.containers,
            namespaces: args.namespaces,
        },
        replicas: args.replicas,
        replication: args.replication,
        period: Duration::from_secs(args.period.max(1)),
        measure_periods: args.measure_periods.max(1),
        clients: args.clients.clone(),
        queries: [q(0), q(1), q(2), q(3)],
        phase_limit: Duration::from_secs(args.phase_limit),
        extra: args.extra.clone(),
        dir: dir.path().to_owned(),
        representations: args.representations,
        settle: Duration::from_secs(args.settle),
        paced_acks: args.paced_acks,
    };
    let summary = load::run(&cfg).await.context("load run")?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
