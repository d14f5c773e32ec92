//! Where samples come from: the kubelet, or the host's own `/proc`.

pub mod decode;
pub mod host;
pub mod kubelet;
pub mod prom;

use crate::batch::Batch;

/// A configured source of samples.
#[derive(Clone)]
pub enum Source {
    Kubelet(Box<kubelet::KubeletSource>),
    Host(host::HostSource),
}

/// A failed read of a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Kubelet(#[from] kubelet::KubeletError),
    #[error(transparent)]
    Host(#[from] host::HostError),
}

impl Source {
    /// Short name used in logs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Kubelet(_) => "kubelet",
            Source::Host(_) => "proc",
        }
    }

    /// Reads one batch; decode problems are logged and counted, not fatal.
    pub async fn read(&self) -> Result<(Batch, decode::DecodeStats), SourceError> {
        match self {
            Source::Kubelet(k) => Ok(k.scrape().await?),
            Source::Host(h) => Ok((h.sample()?, decode::DecodeStats::default())),
        }
    }
}
