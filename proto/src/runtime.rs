//! Process plumbing both binaries share: logging set-up, the shutdown
//! signal, and OpenMetrics encoding of a registry.

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), coloured only
/// on a terminal.
pub fn init_logging(verbosity: Option<u8>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(verbosity)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The log filter for klog's `-v` level when `RUST_LOG` is not set:
/// up to 3 is `info` (klog's steady-state levels), 4 and 5 `debug`, 6 and
/// above `trace`.
pub fn log_filter(verbosity: Option<u8>) -> &'static str {
    match verbosity.unwrap_or(0) {
        0..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    }
}

/// Lets a log line through at most once per period, for events that can
/// repeat as fast as peers make them (their counters count every one).
#[derive(Debug)]
pub struct LogThrottle {
    every: std::time::Duration,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl LogThrottle {
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            last: std::sync::Mutex::new(None),
        }
    }

    /// True the first time, then once `every` has passed since the last true.
    pub fn ready(&self) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        if last.is_some_and(|t| t.elapsed() < self.every) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// Content type of [`encode_metrics`]'s output.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders `registry` in the OpenMetrics text format.
pub fn encode_metrics(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_through_per_period() {
        let t = LogThrottle::new(std::time::Duration::from_secs(3600));
        assert!(t.ready());
        assert!(!t.ready());
        let t = LogThrottle::new(std::time::Duration::ZERO);
        assert!(t.ready() && t.ready());
    }

    #[test]
    fn klog_levels_map_to_filters() {
        assert_eq!(log_filter(None), "info");
        assert_eq!(log_filter(Some(2)), "info");
        assert_eq!(log_filter(Some(4)), "debug");
        assert_eq!(log_filter(Some(10)), "trace");
    }
}
