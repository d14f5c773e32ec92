//! Simulated agents: one task per node and one gRPC+TLS connection per
//! (node, aggregator) stream. Each node reports every period at its own
//! offset (sends spread over the period), carries its labels only until a
//! stream has them (then by hash, as the real agent does), and follows the
//! shard maps it is sent to its node's owners.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::bail;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use metrics_proto::channel::Dialer;
use metrics_proto::ring::{owner_urls, should_follow};
use metrics_proto::v1::aggregator_message::Kind;
use metrics_proto::v1::ingest_client::IngestClient;
use metrics_proto::v1::{NodeReport, ShardMap};
use metrics_proto::MAX_MESSAGE_BYTES;

use xxhash_rust::xxh3::xxh3_64;

use super::workload::{bare, fill, Shape};

/// Most ack latencies kept (a bounded sample).
const MAX_LAG_SAMPLES: usize = 1 << 20;

/// What the fleet has done so far.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    /// Reports not sent because the stream still held two unsent ones.
    pub dropped: AtomicU64,
    pub connects: AtomicU64,
    pub stream_errors: AtomicU64,
    /// Report sent → its ack received, µs.
    lag_us: Mutex<Vec<u32>>,
    last_refusal: Mutex<Option<String>>,
}

impl FleetStats {
    fn lag(&self, d: Duration) {
        let mut v = match self.lag_us.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if v.len() < MAX_LAG_SAMPLES {
            v.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// Takes the ack latencies recorded since the last call, µs.
    pub fn take_lags(&self) -> Vec<u32> {
        match self.lag_us.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }

    /// The last reason a report was refused.
    pub fn last_refusal(&self) -> Option<String> {
        match self.last_refusal.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// One period's reports: with labels, and without them for streams that
/// already carry them.
struct Period {
    full: NodeReport,
    bare: NodeReport,
}

/// The running fleet; stops when dropped or on [`Fleet::stop`].
pub struct Fleet {
    cancel: CancellationToken,
    pub stats: Arc<FleetStats>,
}

impl Fleet {
    /// Starts `shape.nodes` simulated agents reporting every `period`;
    /// node `n` first dials `bootstrap[n % len]`. With `paced_acks` their
    /// reports carry the real agent's `answer_within_ms`, so aggregators
    /// answer only as often as that needs; without, every report is
    /// answered.
    pub fn start(
        shape: Shape,
        period: Duration,
        bootstrap: Vec<String>,
        tls: Arc<rustls::ClientConfig>,
        paced_acks: bool,
    ) -> Self {
        let cancel = CancellationToken::new();
        let stats = Arc::new(FleetStats::default());
        let start = tokio::time::Instant::now();
        for n in 0..shape.nodes {
            let node = NodeSim {
                n,
                shape,
                period,
                paced_acks,
                first_tick: start + period.mul_f64(n as f64 / shape.nodes.max(1) as f64),
                tls: tls.clone(),
                stats: stats.clone(),
                cancel: cancel.child_token(),
            };
            let url = bootstrap[n % bootstrap.len()].clone();
            tokio::spawn(node.run(url));
        }
        Self { cancel, stats }
    }

    /// Stops every node and stream.
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct NodeSim {
    n: usize,
    shape: Shape,
    period: Duration,
    paced_acks: bool,
    first_tick: tokio::time::Instant,
    tls: Arc<rustls::ClientConfig>,
    stats: Arc<FleetStats>,
    cancel: CancellationToken,
}

impl NodeSim {
    async fn run(self, bootstrap: String) {
        let period_ms = u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX);
        let mut template = self.shape.template(self.n, period_ms);
        if self.paced_acks {
            template.answer_within_ms = metrics_proto::acks::answer_within_ms(self.period);
        }
        let bare_template = bare(&template);
        let name = template.node_name.clone();
        let (periods, periods_rx) = watch::channel::<Option<Arc<Period>>>(None);
        let (maps_tx, mut maps) = mpsc::channel::<ShardMap>(8);
        let mut streams: HashMap<String, CancellationToken> = HashMap::new();
        let open = |url: String, streams: &mut HashMap<String, CancellationToken>| {
            let token = self.cancel.child_token();
            let s = StreamSim {
                url: url.clone(),
                tls: self.tls.clone(),
                periods: periods_rx.clone(),
                maps: maps_tx.clone(),
                stats: self.stats.clone(),
                cancel: token.clone(),
            };
            tokio::spawn(s.run());
            streams.insert(url, token);
        };
        open(bootstrap, &mut streams);
        let mut map: Option<ShardMap> = None;
        let mut tick = tokio::time::interval_at(self.first_tick, self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let window = i64::try_from(self.period.as_nanos()).unwrap_or(i64::MAX);
        let mut k = 0u64;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tick.tick() => {
                    k += 1;
                    let now = metrics_proto::time::unix_nanos(SystemTime::now());
                    let (mut full, mut b) = (template.clone(), bare_template.clone());
                    fill(&mut full, k, now, window);
                    fill(&mut b, k, now, window);
                    periods.send_replace(Some(Arc::new(Period { full, bare: b })));
                }
                Some(m) = maps.recv() => {
                    if !should_follow(map.as_ref(), &m, false) {
                        continue;
                    }
                    let want: BTreeSet<String> = owner_urls(&m, &name).into_iter().collect();
                    if !want.is_empty() {
                        streams.retain(|url, token| {
                            let keep = want.contains(url);
                            if !keep {
                                token.cancel();
                            }
                            keep
                        });
                        for url in want {
                            if !streams.contains_key(&url) {
                                open(url, &mut streams);
                            }
                        }
                    }
                    map = Some(m);
                }
            }
        }
        for token in streams.values() {
            token.cancel();
        }
    }
}

struct StreamSim {
    url: String,
    tls: Arc<rustls::ClientConfig>,
    periods: watch::Receiver<Option<Arc<Period>>>,
    maps: mpsc::Sender<ShardMap>,
    stats: Arc<FleetStats>,
    cancel: CancellationToken,
}

impl StreamSim {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(250);
        while !self.cancel.is_cancelled() {
            match self.once().await {
                Ok(()) => return,
                Err(e) => {
                    let errors = self.stats.stream_errors.fetch_add(1, Ordering::Relaxed);
                    tracing_free_log(&self.url, &e);
                    // Jittered to 50–100 % like the real agent.
                    let seed = xxh3_64(format!("{}/{errors}", self.url).as_bytes());
                    let jitter = 0.5 + (seed % 500) as f64 / 1000.0;
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One stream until it fails (Err) or is cancelled (Ok).
    async fn once(&mut self) -> anyhow::Result<()> {
        let channel = Dialer::new(&self.url, Some(self.tls.clone()))?
            .connect()
            .await?;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        // Cut into frames as the real agent's are.
        let mut client = IngestClient::new(metrics_proto::frames::SmallFrames::new(channel))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<NodeReport>(2);
        let mut inbound = client.report(ReceiverStream::new(rx)).await?.into_inner();
        let mut carried = false;
        let mut seq = 0u64;
        let mut answered = metrics_proto::acks::Answered::default();
        let mut sent: VecDeque<(u64, Instant)> = VecDeque::new();
        let mut pending = self.periods.borrow_and_update().clone();
        loop {
            if let Some(p) = pending.take() {
                seq += 1;
                let mut r = if carried {
                    p.bare.clone()
                } else {
                    p.full.clone()
                };
                r.sequence = seq;
                match tx.try_send(r) {
                    Ok(()) => {
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                        sent.push_back((seq, Instant::now()));
                        if sent.len() > 8 {
                            sent.pop_front();
                        }
                        carried = true;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Its number goes to the next report sent.
                        seq -= 1;
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => bail!("stream closed"),
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                changed = self.periods.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    pending = self.periods.borrow_and_update().clone();
                }
                msg = inbound.message() => match msg?.and_then(|m| m.kind) {
                    None => bail!("stream ended"),
                    Some(Kind::Ack(ack)) => {
                        if let Some(at) = sent.iter().find(|(s, _)| *s == ack.sequence) {
                            self.stats.lag(at.1.elapsed());
                        }
                        let reports = answered.count(&ack);
                        if ack.accepted {
                            self.stats.accepted.fetch_add(reports, Ordering::Relaxed);
                        } else {
                            self.stats.refused.fetch_add(reports, Ordering::Relaxed);
                            carried = false;
                            if let Ok(mut g) = self.stats.last_refusal.lock() {
                                *g = Some(ack.error);
                            }
                        }
                    }
                    Some(Kind::ShardMap(m)) => {
                        let _ = self.maps.try_send(m);
                    }
                },
            }
        }
    }
}

/// Stream failures are expected while replicas start or move nodes; they
/// are counted, and only printed with `LOADGEN_VERBOSE` set.
fn tracing_free_log(url: &str, e: &anyhow::Error) {
    if std::env::var_os("LOADGEN_VERBOSE").is_some() {
        eprintln!("stream to {url}: {e:#}");
    }
}
