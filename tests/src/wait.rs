//! Polling for a condition that real processes reach in their own time.

use std::time::{Duration, Instant};

/// How often a condition is checked again.
const EVERY: Duration = Duration::from_millis(200);

/// Whether `ok` holds at some check within `within`.
pub async fn eventually(within: Duration, mut ok: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ok().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Like [`eventually`], panicking with `what` on a timeout.
pub async fn until(what: &str, within: Duration, ok: impl AsyncFnMut() -> bool) {
    assert!(eventually(within, ok).await, "timed out waiting for {what}");
}
