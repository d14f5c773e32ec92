//! Pod labels from the kubelet's `/pods`, refreshed periodically and as
//! soon as a pod without known labels shows up, so label selectors work
//! without any Kubernetes API access.

use std::time::Duration;

use tokio::time::Instant;

use crate::batch::Batch;
use crate::source::kubelet::{KubeletSource, PodLabels};

/// Fastest refetch when an unknown pod appears.
const MIN_GAP: Duration = Duration::from_secs(5);

/// Cached labels of the pods on this node.
pub struct LabelCache {
    kubelet: KubeletSource,
    labels: PodLabels,
    fetched: Option<Instant>,
    refresh: Duration,
    failing: bool,
}

impl LabelCache {
    pub fn new(kubelet: KubeletSource, refresh: Duration) -> Self {
        Self {
            kubelet,
            labels: PodLabels::new(),
            fetched: None,
            refresh,
            failing: false,
        }
    }

    /// Current labels.
    pub fn labels(&self) -> &PodLabels {
        &self.labels
    }

    /// Refetches when stale, or when `batch` has a pod not seen yet. On
    /// failure the last known labels stay in use.
    pub async fn update(&mut self, batch: &Batch) {
        let since = self.fetched.map(|t| t.elapsed());
        let stale = since.is_none_or(|d| d >= self.refresh);
        let unknown = since.is_none_or(|d| d >= MIN_GAP)
            && batch.pods.keys().any(|p| !self.labels.contains_key(p));
        if !(stale || unknown) {
            return;
        }
        self.fetched = Some(Instant::now());
        match self.kubelet.pod_labels().await {
            Ok(labels) => {
                if self.failing {
                    tracing::info!("pod labels from the kubelet recovered");
                }
                self.failing = false;
                self.labels = labels;
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "reading pod labels from the kubelet failed; keeping the last known labels");
                }
                self.failing = true;
            }
        }
    }
}
