//! Streams reports to one aggregator: a long-lived bidirectional gRPC stream,
//! the latest report sent every period, reconnects with jittered exponential
//! backoff. Reports are never queued: a sender that falls behind skips to the
//! newest one.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use metrics_proto::acks::Answered;
use metrics_proto::v1::aggregator_message::Kind;
use metrics_proto::v1::ShardMap;
use metrics_proto::MAX_MESSAGE_BYTES;

use crate::encoded::{open_report_stream, Outgoing};
use crate::labels::Period;
use crate::metrics::AgentMetrics;

/// The newest report, shared by every sender.
pub type ReportRx = watch::Receiver<Option<Arc<Period>>>;

/// What every sender shares with the agent.
#[derive(Clone)]
pub struct SenderCtx {
    pub reports: ReportRx,
    pub metrics: Arc<AgentMetrics>,
    /// Shard maps received from aggregators go here.
    pub maps: mpsc::Sender<ShardMap>,
    /// Unix ms of the last accepted report on any stream.
    pub last_ack_ms: Arc<AtomicI64>,
    /// Bearer token sent when a stream opens.
    pub token_file: Option<Arc<metrics_proto::token::TokenFile>>,
    /// A stream whose aggregator says nothing this long after a report
    /// was sent is given up ([`answer_deadline`]).
    pub answer_deadline: Duration,
}

pub use metrics_proto::acks::answer_deadline;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Errors of one connection attempt or stream.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The aggregator URL is not usable.
    #[error(transparent)]
    Url(#[from] metrics_proto::channel::UrlError),
    /// TCP, TLS or HTTP/2 setup failed.
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The token file could not be read or is not a valid header value.
    #[error(transparent)]
    Token(#[from] metrics_proto::token::TokenError),
    /// Nothing came back from the aggregator for a report in time: the
    /// stream (or the path to it) is stalled.
    #[error("stream to {url} stalled: no answer within {waited:?} of a report")]
    Stalled { url: String, waited: Duration },
    /// The stream failed or the aggregator refused it.
    #[error("stream to {url}: {source}")]
    Stream {
        url: String,
        #[source]
        source: tonic::Status,
    },
}

/// Where and how to reach one aggregator.
pub type Target = metrics_proto::channel::Dialer;

/// Outcome of one stream, to decide on backoff.
struct StreamEnd {
    acked: bool,
}

/// Keeps one aggregator fed until `cancel` fires.
pub async fn run_sender(target: Target, mut ctx: SenderCtx, cancel: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    let mut jitter = Jitter::seeded();
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = stream_once(&target, &mut ctx, &cancel) => r,
        };
        ctx.metrics.stream(target.url(), result.is_ok());
        match result {
            Ok(end) => {
                if end.acked {
                    backoff = BACKOFF_MIN;
                }
                tracing::info!(aggregator = target.url(), "stream closed by aggregator");
            }
            Err(e) => tracing::warn!(error = %e, "aggregator stream failed"),
        }
        if cancel.is_cancelled() {
            return;
        }
        let wait = jitter.spread(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn stream_once(
    target: &Target,
    ctx: &mut SenderCtx,
    cancel: &CancellationToken,
) -> Result<StreamEnd, TransportError> {
    let reports = &mut ctx.reports;
    let channel = target
        .connect()
        .await
        .map_err(|source| TransportError::Connect {
            url: target.url().to_owned(),
            source,
        })?;
    let (tx, rx) = mpsc::channel::<Outgoing>(2);
    let stream_err = |source| TransportError::Stream {
        url: target.url().to_owned(),
        source,
    };
    let mut out = Outbox {
        tx,
        sequence: 0,
        labels_sent: None,
    };
    // What the aggregator last said it left out of accepted reports;
    // logged when it changes, not every period.
    let mut last_note = String::new();
    // Since when a sent report has had no answer (any message counts).
    let mut unanswered: Option<tokio::time::Instant> = None;
    if let Some(r) = reports.borrow_and_update().clone() {
        out.send(&r);
        unanswered = Some(tokio::time::Instant::now());
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &ctx.token_file {
        request
            .metadata_mut()
            .insert("authorization", token.authorization().await?);
    }
    let mut inbound = open_report_stream(channel, request, MAX_MESSAGE_BYTES)
        .await
        .map_err(stream_err)?
        .into_inner();
    tracing::info!(aggregator = target.url(), "stream open");
    let mut end = StreamEnd { acked: false };
    let mut answered = Answered::default();
    let deadline = ctx.answer_deadline;
    loop {
        let stall = async {
            match unanswered {
                Some(since) => tokio::time::sleep_until(since + deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(end),
            _ = stall => {
                return Err(TransportError::Stalled {
                    url: target.url().to_owned(),
                    waited: deadline,
                });
            }
            changed = reports.changed() => {
                if changed.is_err() {
                    return Ok(end);
                }
                if let Some(r) = reports.borrow_and_update().clone() {
                    out.send(&r);
                    unanswered.get_or_insert_with(tokio::time::Instant::now);
                }
            }
            msg = inbound.message() => {
                let Some(m) = msg.map_err(stream_err)? else {
                    return Ok(end);
                };
                unanswered = None;
                match m.kind {
                    Some(Kind::ShardMap(map)) => {
                        let _ = ctx.maps.try_send(map);
                    }
                    Some(Kind::Ack(ack)) => {
                        ctx.metrics.ack(target.url(), ack.accepted, answered.count(&ack));
                        if ack.accepted {
                            end.acked = true;
                            if ack.error != last_note {
                                if !ack.error.is_empty() {
                                    tracing::warn!(
                                        aggregator = target.url(), note = %ack.error,
                                        "aggregator accepted the report but left part of it out"
                                    );
                                }
                                last_note = ack.error;
                            }
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as i64);
                            ctx.last_ack_ms.store(now, Ordering::Relaxed);
                        } else {
                            // Whatever the reason, the next report carries
                            // its labels in full.
                            out.labels_sent = None;
                            tracing::warn!(
                                aggregator = target.url(), sequence = ack.sequence, error = %ack.error,
                                "aggregator refused report"
                            );
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// The sending half of one stream: sequence numbers, and labels left out
/// while they equal those this stream last carried. The report's bytes are
/// the period's, shared with every other stream.
struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    sequence: u64,
    /// `labels_version` of the last report sent with its labels.
    labels_sent: Option<u64>,
}

impl Outbox {
    fn send(&mut self, period: &Period) {
        self.sequence += 1;
        let unchanged = period.labels_held_by(self.labels_sent);
        let out = Outgoing {
            report: period.encoded_for(self.labels_sent),
            sequence: self.sequence,
        };
        // A full channel means the aggregator is behind: skip this period
        // (its sequence number goes to the next report, so the numbers an
        // Ack answers up to are all of reports sent).
        match self.tx.try_send(out) {
            Ok(()) if !unchanged => self.labels_sent = period.labels_version(),
            Ok(()) => {}
            Err(_) => self.sequence -= 1,
        }
    }
}

/// xorshift64* seeded from the clock and address space; jitter needs no
/// cryptographic quality.
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let addr = &t as *const u64 as u64;
        Self((t ^ addr.rotate_left(32)) | 1)
    }

    /// A duration uniformly in `[d/2, d)`.
    fn spread(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        let frac = r as f64 / (1u64 << 53) as f64;
        d.mul_f64(0.5 + frac / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use metrics_proto::v1::NodeReport;

    use super::*;

    fn labelled(app: &str) -> NodeReport {
        let mut r = NodeReport {
            node_name: "n".into(),
            node_labels: [("zone".to_owned(), "z1".to_owned())].into_iter().collect(),
            pods: vec![metrics_proto::v1::PodUsage {
                namespace: "ns".into(),
                name: "p".into(),
                labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
                ..Default::default()
            }],
            ..NodeReport::default()
        };
        r.labels_version = metrics_proto::labels::version(&r);
        r
    }

    #[test]
    fn labels_are_sent_when_they_change() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut out = Outbox {
            tx,
            sequence: 0,
            labels_sent: None,
        };
        let next = |out: &mut Outbox, rx: &mut mpsc::Receiver<Outgoing>, r: &NodeReport| {
            out.send(&Period::from_report(r.clone()));
            rx.try_recv().ok().map(|o| o.decoded())
        };
        let first = next(&mut out, &mut rx, &labelled("shop")).unwrap();
        assert!(!first.labels_omitted && first.pods[0].labels["app"] == "shop");
        let second = next(&mut out, &mut rx, &labelled("shop")).unwrap();
        assert!(second.labels_omitted && second.pods[0].labels.is_empty());
        assert!(second.node_labels.is_empty());
        let changed = next(&mut out, &mut rx, &labelled("checkout")).unwrap();
        assert!(!changed.labels_omitted && changed.pods[0].labels["app"] == "checkout");
        out.labels_sent = None; // a refused ack
        assert!(
            !next(&mut out, &mut rx, &labelled("checkout"))
                .unwrap()
                .labels_omitted
        );

        // A report dropped on a full channel does not count as sent.
        out.send(&Period::from_report(labelled("shop")));
        out.send(&Period::from_report(labelled("web")));
        assert_eq!(
            rx.try_recv().unwrap().decoded().pods[0].labels["app"],
            "shop"
        );
        let after = next(&mut out, &mut rx, &labelled("web")).unwrap();
        assert!(!after.labels_omitted, "web never reached the stream");
        // Its number went to the next report: the numbers an Ack answers
        // up to are all of reports sent.
        assert_eq!(after.sequence, 6);
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::seeded();
        let d = Duration::from_secs(2);
        let spread: Vec<_> = (0..1000).map(|_| j.spread(d)).collect();
        assert!(spread.iter().all(|s| *s >= d / 2 && *s < d));
        assert!(spread.iter().any(|s| *s != spread[0]), "jitter must vary");
    }

    #[test]
    fn target_urls() {
        assert!(Target::new("http://127.0.0.1:1", None).is_ok());
        assert!(Target::new("https://127.0.0.1:1", None).is_err());
        assert!(Target::new("ftp://x:1", None).is_err());
        assert!(Target::new("not a url", None).is_err());
    }
}
