//! metrics-aggregator binary: flags, logging, signals; the work is in the
//! library.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use metrics_aggregator::{args::Args, Aggregator};

/// mimalloc rather than glibc's malloc: at 5,000 nodes on 3 replicas it
/// cut ingest CPU by a third and gave back most of the memory that lists of
/// every pod take (BENCHMARKS.md). Built without transparent huge pages
/// (`no_thp`): with them, each 2 MiB region it touched became resident
/// whole, a quarter of the memory a node costs at rest.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

fn main() -> anyhow::Result<()> {
    metrics_proto::tls::install_crypto_provider();
    let args = Args::parse();
    let delay = args.shutdown_delay_duration;
    metrics_proto::runtime::init_logging(args.verbosity);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agg = match Aggregator::bind(args).await {
            Ok(a) => a,
            Err(e) if e.is_config() => {
                eprintln!("metrics-aggregator: {e}");
                std::process::exit(EXIT_CONFIG);
            }
            Err(e) => return Err(e.into()),
        };
        if let (Some(api), Some(grpc)) = (agg.api_addr(), agg.grpc_addr()) {
            // One machine-readable line for scripts and tests.
            println!("metrics-aggregator listening api={api} grpc={grpc}");
        }
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let draining = agg.draining();
        tokio::spawn(async move {
            metrics_proto::runtime::shutdown_signal().await;
            draining.cancel();
            if !delay.is_zero() {
                tracing::info!(?delay, "shutting down: not ready, still serving");
                tokio::time::sleep(delay).await;
            }
            tracing::info!("shutting down");
            stop.cancel();
        });
        agg.run(cancel).await.map_err(anyhow::Error::from)
    })
}
