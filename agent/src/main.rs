//! metrics-agent binary: flags, logging, signals; the work is in the library.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use metrics_agent::{args::Args, Agent};
use metrics_proto::runtime::{init_logging, shutdown_signal};

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

fn main() -> anyhow::Result<()> {
    metrics_proto::tls::install_crypto_provider();
    let args = Args::parse();
    init_logging(args.verbosity);
    let agent = match Agent::from_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("metrics-agent: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    // One thread does all of the agent's work: nothing it does blocks for
    // long (a sample is milliseconds), and waking a second thread each
    // period would cost more than the work.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let metrics = match args.metrics_bind_address {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => anyhow::bail!("binding --metrics-bind-address {addr}: {e}"),
            },
            None => None,
        };
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            stop.cancel();
        });
        tracing::info!(node = %args.node_name, source = ?args.source, resolution = ?args.metric_resolution, "metrics-agent started");
        agent.run(metrics, cancel).await;
        Ok(())
    })
}
