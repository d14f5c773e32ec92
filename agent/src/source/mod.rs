//! Where samples come from: the kubelet, the kernel's cgroups, or the
//! host's own `/proc`; `auto` prefers the kubelet and falls back to cgroups
//! for any cycle in which the kubelet fails or returns no node usage.

pub mod cgroup;
pub mod decode;
pub mod host;
pub mod kubelet;
pub mod prom;

use crate::batch::Batch;
use crate::pods::PodIndex;
use decode::DecodeStats;

/// A configured source of samples.
pub enum Source {
    Kubelet(Box<kubelet::KubeletSource>),
    Cgroup(cgroup::CgroupSource),
    Auto {
        kubelet: Box<kubelet::KubeletSource>,
        cgroup: cgroup::CgroupSource,
        /// True while cycles are served from cgroups.
        on_fallback: bool,
    },
    Host(host::HostSource),
}

/// A failed read of a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Kubelet(#[from] kubelet::KubeletError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Host(#[from] host::HostError),
}

impl Source {
    /// Short name used in logs and reports: the source that served the
    /// last cycle.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Kubelet(_) => "kubelet",
            Source::Cgroup(_) => "cgroup",
            Source::Auto {
                on_fallback: false, ..
            } => "kubelet",
            Source::Auto {
                on_fallback: true, ..
            } => "cgroup",
            Source::Host(_) => "proc",
        }
    }

    /// Whether reads need the pod index (to map cgroups to pods).
    pub fn needs_pods(&self) -> bool {
        matches!(self, Source::Cgroup(_) | Source::Auto { .. })
    }

    /// Reads one batch; decode problems are counted, not fatal.
    pub async fn read(&mut self, pods: &PodIndex) -> Result<(Batch, DecodeStats), SourceError> {
        match self {
            Source::Kubelet(k) => Ok(k.scrape().await?),
            Source::Cgroup(c) => Ok(c.sample(pods)?),
            Source::Host(h) => Ok((h.sample()?, DecodeStats::default())),
            Source::Auto {
                kubelet,
                cgroup,
                on_fallback,
            } => {
                let why = match kubelet.scrape().await {
                    Ok((batch, stats)) if batch.node.is_some() => {
                        if *on_fallback {
                            tracing::info!(
                                "kubelet stats usable again; switching back from cgroups"
                            );
                            *on_fallback = false;
                        }
                        return Ok((batch, stats));
                    }
                    Ok(_) => {
                        "kubelet returned no usable node usage (zeros or no timestamps)".to_owned()
                    }
                    Err(e) => e.to_string(),
                };
                if !*on_fallback {
                    tracing::warn!(reason = %why, "kubelet stats unusable; reading cgroups until it recovers");
                    *on_fallback = true;
                }
                Ok(cgroup.sample(pods)?)
            }
        }
    }
}
