//! Which aggregators the agent streams to. It starts with the bootstrap
//! URLs (`--aggregator`, typically the Service); as soon as a shard map
//! arrives on any stream it streams to its node's owners instead, and it
//! follows every new map. If no report has been accepted for a few periods
//! (say the map is stale), the bootstrap URLs join again to fetch a fresh
//! map.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use metrics_proto::ring::{owner_urls, should_follow};
use metrics_proto::v1::ShardMap;

use crate::transport::{answer_deadline, run_sender, SenderCtx, Target};

/// Periods without an accepted report before bootstrap URLs are used again.
const STALE_PERIODS: u32 = 3;

/// How long without an accepted answer before the shard map followed is
/// taken as stale: [`STALE_PERIODS`] periods, and at least a period more
/// than an aggregator may hold an answer ([`answer_deadline`]), as it
/// does when nothing is new.
fn stale_after(period: Duration) -> Duration {
    (period * STALE_PERIODS).max(answer_deadline(period) + period)
}

/// The set of streams and how to open new ones.
pub struct Router {
    pub node: String,
    pub period: Duration,
    pub bootstrap: Vec<Target>,
    /// TLS for `https://` URLs learnt from shard maps.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Router {
    /// The URLs to stream to under `map` (bootstrap when none).
    fn desired(&self, map: Option<&ShardMap>, stale: bool) -> BTreeSet<String> {
        let mut urls: BTreeSet<String> = map
            .map(|m| owner_urls(m, &self.node))
            .unwrap_or_default()
            .into_iter()
            .collect();
        if urls.is_empty() || stale {
            urls.extend(self.bootstrap.iter().map(|t| t.url().to_owned()));
        }
        urls
    }

    fn target(&self, url: &str) -> Option<Target> {
        if let Some(t) = self.bootstrap.iter().find(|t| t.url() == url) {
            return Some(t.clone());
        }
        let tls = if url.starts_with("https://") {
            self.tls.clone()
        } else {
            None
        };
        match Target::new(url, tls) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot stream to a shard map member");
                None
            }
        }
    }

    /// Runs until `cancel` fires.
    pub async fn run(
        self,
        ctx: SenderCtx,
        mut maps: mpsc::Receiver<ShardMap>,
        cancel: CancellationToken,
    ) {
        let mut tasks = JoinSet::new();
        let mut senders: HashMap<String, CancellationToken> = HashMap::new();
        let mut map: Option<ShardMap> = None;
        let mut stale = false;
        // Staleness is looked at as each period's report comes out: the
        // collector's tick, with no timer of the router's own to wake for.
        let mut periods = ctx.reports.clone();
        loop {
            let want = self.desired(map.as_ref(), stale);
            senders.retain(|url, token| {
                let keep = want.contains(url);
                if !keep {
                    tracing::info!(aggregator = %url, "closing stream: not an owner of this node");
                    token.cancel();
                }
                keep
            });
            for url in &want {
                if senders.contains_key(url) {
                    continue;
                }
                let Some(target) = self.target(url) else {
                    continue;
                };
                let token = cancel.child_token();
                senders.insert(url.clone(), token.clone());
                let span = tracing::info_span!("sender", aggregator = %url);
                tasks.spawn(tracing::Instrument::instrument(
                    run_sender(target, ctx.clone(), token),
                    span,
                ));
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(m) = maps.recv() => {
                    if should_follow(map.as_ref(), &m, stale) {
                        tracing::info!(version = m.version, generation = m.generation, members = m.members.len(), owners = ?owner_urls(&m, &self.node), "following shard map");
                        map = Some(m);
                        stale = false;
                    } else if map.as_ref().is_some_and(|old| old.version != m.version) {
                        tracing::debug!(version = m.version, generation = m.generation, "ignoring an older shard map");
                    }
                }
                changed = periods.changed() => {
                    if changed.is_err() {
                        // The collector has ended: no report will come.
                        break;
                    }
                    let last = ctx.last_ack_ms.load(Ordering::Relaxed);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    let limit = i64::try_from(stale_after(self.period).as_millis()).unwrap_or(i64::MAX);
                    let was = stale;
                    stale = map.is_some() && last > 0 && now - last > limit;
                    if stale && !was {
                        tracing::warn!(after = ?stale_after(self.period), "no report accepted; asking the bootstrap aggregators for a fresh shard map");
                    }
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_goes_stale_only_after_an_answer_could_have_come() {
        let s = Duration::from_secs;
        // At 1 s an aggregator may hold answers up to the 5 s bound.
        assert_eq!(stale_after(s(1)), s(6));
        assert_eq!(stale_after(s(15)), s(55));
        // Long periods: three of them.
        assert_eq!(stale_after(s(60)), s(180));
    }
}
