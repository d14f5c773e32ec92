//! metrics-aggregator binary: flags, logging, signals; the work is in the
//! library.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use metrics_aggregator::{args::Args, Aggregator};

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

fn main() -> anyhow::Result<()> {
    metrics_proto::tls::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
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
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
            stop.cancel();
        });
        #[cfg(unix)]
        {
            let stop = cancel.clone();
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                tokio::spawn(async move {
                    term.recv().await;
                    tracing::info!("shutting down");
                    stop.cancel();
                });
            }
        }
        agg.run(cancel).await.map_err(anyhow::Error::from)
    })
}
