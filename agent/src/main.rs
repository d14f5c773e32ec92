//! metrics-agent binary: flags, logging, signals; the work is in the library.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use metrics_agent::{args::Args, Agent};

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
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agent = match Agent::from_args(&args) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("metrics-agent: {e}");
                std::process::exit(EXIT_CONFIG);
            }
        };
        let metrics = match args.metrics_bind_address {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("metrics-agent: binding --metrics-bind-address {addr}: {e}");
                    std::process::exit(1);
                }
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
    });
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
