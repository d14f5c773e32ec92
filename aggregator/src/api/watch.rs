//! `?watch=true` on every collection: ADDED, MODIFIED and DELETED events
//! as new windows arrive, in JSON (one event per line), protobuf
//! (`;stream=watch` length-prefixed frames) or Table form.
//!
//! A watch follows its query's answer, not the ingest path: it asks the
//! cluster (this replica and its peers, selectors applied where the data
//! is) every `--watch-poll-interval`, or less often when asking takes
//! long, and sends what changed since the last answer. Ingest does no
//! work for watches, so nobody watching costs nothing. A watch holds the
//! last object of each match (for DELETED events) and at most a few
//! events in flight: a client that stops reading for
//! `--watch-stall-timeout` has its connection closed, and what the watch
//! held is freed.
//!
//! `resourceVersion` of an object is its sample time in ns since the
//! epoch; bookmarks carry the newest sample time sent. A watch from a
//! resourceVersion gets MODIFIED events for objects sampled after it, and
//! none for the others; one older than the data kept gets an ERROR event
//! (410 Expired), as kube-apiserver sends for a compacted version.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::api::negotiate::Format;
use crate::api::object::Object;
use crate::api::status::ApiError;
use crate::api::table::{self, IncludeObject};
use crate::api::{protobuf, AppState};
use crate::format::rfc3339;
use crate::metrics::AggregatorMetrics;
use crate::query::{Hit, Kind, Query};
use crate::server::ConnHandle;
use metrics_proto::runtime::LogThrottle;

/// The annotation on the bookmark that ends a watch's initial events.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// How watches run.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Shortest time between two asks of the cluster.
    pub poll: Duration,
    /// Time between bookmarks, for clients that allow them.
    pub bookmark_every: Duration,
    /// A client that takes no event for this long is dropped.
    pub stall: Duration,
    /// Watches open at once; more are refused with 429.
    pub max_watches: usize,
    /// A watch without `timeoutSeconds` ends after between this and twice this.
    pub min_request_timeout: Duration,
    /// How far back a resourceVersion may go (the data kept).
    pub horizon: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            bookmark_every: Duration::from_secs(60),
            stall: Duration::from_secs(30),
            max_watches: 256,
            min_request_timeout: Duration::from_secs(1800),
            horizon: metrics_proto::MAX_PERIOD * 3,
        }
    }
}

/// Every watch of one server.
#[derive(Debug)]
pub struct Watches {
    config: WatchConfig,
    slots: Arc<Semaphore>,
    metrics: Arc<AggregatorMetrics>,
    log: LogThrottle,
}

impl Watches {
    pub fn new(config: WatchConfig, metrics: Arc<AggregatorMetrics>) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.max_watches)),
            config,
            metrics,
            log: LogThrottle::new(Duration::from_secs(60)),
        })
    }

    fn ended(&self, reason: &'static str) {
        self.metrics
            .watches_ended
            .get_or_create(&[("reason", reason)])
            .inc();
    }
}

/// A watch's own query parameters.
#[derive(Debug, Default, Clone)]
pub struct WatchParams {
    pub resource_version: String,
    pub resource_version_match: String,
    pub timeout_seconds: Option<String>,
    pub allow_bookmarks: bool,
    pub send_initial_events: Option<bool>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Every current object as ADDED first.
    Now,
    /// Only objects sampled after this time (ns).
    After(i64),
}

impl WatchParams {
    /// Reads one query parameter; false when it is not a watch parameter.
    pub fn take(&mut self, key: &str, value: &str) -> bool {
        match key {
            "resourceVersion" => self.resource_version = value.to_owned(),
            "resourceVersionMatch" => self.resource_version_match = value.to_owned(),
            "timeoutSeconds" => self.timeout_seconds = Some(value.to_owned()),
            "allowWatchBookmarks" => self.allow_bookmarks = is_true(value),
            "sendInitialEvents" => self.send_initial_events = Some(is_true(value)),
            _ => return false,
        }
        true
    }

    fn start(&self) -> Result<Start, ApiError> {
        match self.send_initial_events {
            Some(true) => {
                if self.resource_version_match != "NotOlderThan" {
                    return Err(ApiError::BadRequest(
                        "sendInitialEvents requires resourceVersionMatch=NotOlderThan".into(),
                    ));
                }
                if !self.allow_bookmarks {
                    return Err(ApiError::BadRequest(
                        "sendInitialEvents requires allowWatchBookmarks=true".into(),
                    ));
                }
                return Ok(Start::Now);
            }
            Some(false) if self.resource_version_match != "NotOlderThan" => {
                return Err(ApiError::BadRequest(
                    "sendInitialEvents requires resourceVersionMatch=NotOlderThan".into(),
                ))
            }
            None if !self.resource_version_match.is_empty() => return Err(ApiError::BadRequest(
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
                    .into(),
            )),
            _ => {}
        }
        match self.resource_version.as_str() {
            "" | "0" if self.send_initial_events != Some(false) => Ok(Start::Now),
            "" | "0" => Ok(Start::After(now_ns())),
            rv => rv
                .parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .map(Start::After)
                .ok_or_else(|| ApiError::BadRequest(format!("invalid resource version: {rv:?}"))),
        }
    }

    /// How long the watch lasts.
    fn timeout(&self, config: &WatchConfig) -> Result<Duration, ApiError> {
        match &self.timeout_seconds {
            Some(t) => t
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds: {t:?}"))),
            None => {
                // Spread reconnects: between the minimum and twice it.
                let base = config.min_request_timeout;
                let spread = base.as_millis().max(1) as u64;
                let jitter = (now_ns() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % spread;
                Ok(base + Duration::from_millis(jitter))
            }
        }
    }
}

fn is_true(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

fn now_ns() -> i64 {
    metrics_proto::time::unix_nanos(SystemTime::now())
}

/// How events are written.
#[derive(Debug, Clone, Copy)]
struct Writer {
    format: Format,
    include: IncludeObject,
    kind: Kind,
}

impl Writer {
    fn content_type(&self) -> String {
        match self.format {
            Format::Protobuf => "application/vnd.kubernetes.protobuf;stream=watch".into(),
            _ => "application/json".into(),
        }
    }

    fn object_kind(&self) -> &'static str {
        match self.kind {
            Kind::Nodes => "NodeMetrics",
            Kind::Pods => "PodMetrics",
        }
    }

    fn json_event(event_type: &str, object: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(object.len() + 32);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(event_type.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        out.extend_from_slice(object);
        out.extend_from_slice(b"}\n");
        out.into()
    }

    /// An ADDED, MODIFIED or DELETED event for `hit`.
    fn object(&self, event_type: &str, hit: &Hit, created: &str) -> Result<Bytes, ApiError> {
        let mut o = Object::from_hit(hit, created)?;
        o.metadata.resource_version = Some(hit.timestamp_ns.to_string());
        Ok(match self.format {
            Format::Protobuf => {
                protobuf::watch_frame(event_type, protobuf::object(self.kind, &o)).into()
            }
            Format::Table(v) => Self::json_event(
                event_type,
                &table::of_object(v, self.kind, &o, self.include)?,
            ),
            Format::Json | Format::Yaml => {
                #[derive(serde::Serialize)]
                struct Whole<'a> {
                    kind: &'static str,
                    #[serde(rename = "apiVersion")]
                    api_version: &'static str,
                    #[serde(flatten)]
                    object: &'a Object,
                }
                let body = serde_json::to_vec(&Whole {
                    kind: self.object_kind(),
                    api_version: "metrics.k8s.io/v1beta1",
                    object: &o,
                })
                .map_err(|e| ApiError::Internal(format!("event does not encode: {e}")))?;
                Self::json_event(event_type, &body)
            }
        })
    }

    /// A BOOKMARK event at `rv`; `initial_end` marks the end of the
    /// initial events.
    fn bookmark(&self, rv: i64, initial_end: bool) -> Bytes {
        let rv = rv.to_string();
        let mut annotations = BTreeMap::new();
        if initial_end {
            annotations.insert(INITIAL_EVENTS_END.to_owned(), "true".to_owned());
        }
        match self.format {
            Format::Protobuf => {
                protobuf::watch_frame("BOOKMARK", protobuf::bookmark(self.kind, &rv, &annotations))
                    .into()
            }
            Format::Table(v) => {
                let object = serde_json::json!({
                    "kind": "Table",
                    "apiVersion": v.api_version(),
                    "metadata": {"resourceVersion": rv},
                    "columnDefinitions": [],
                    "rows": [],
                });
                Self::json_event("BOOKMARK", object.to_string().as_bytes())
            }
            Format::Json | Format::Yaml => {
                let mut metadata = serde_json::json!({
                    "resourceVersion": rv,
                    "creationTimestamp": null,
                });
                if !annotations.is_empty() {
                    metadata["annotations"] = serde_json::json!(annotations);
                }
                let object = serde_json::json!({
                    "kind": self.object_kind(),
                    "apiVersion": "metrics.k8s.io/v1beta1",
                    "metadata": metadata,
                });
                Self::json_event("BOOKMARK", object.to_string().as_bytes())
            }
        }
    }

    /// An ERROR event carrying `e` as a Status.
    fn error(&self, e: &ApiError) -> Bytes {
        match self.format {
            Format::Protobuf => protobuf::watch_frame(
                "ERROR",
                protobuf::status(e.code().as_u16(), e.reason(), &e.to_string()),
            )
            .into(),
            _ => Self::json_event("ERROR", &e.to_json()),
        }
    }
}

/// One open watch's work, run in its own task.
struct Run {
    state: AppState,
    watches: Arc<Watches>,
    query: Query,
    writer: Writer,
    start: Start,
    initial_events: bool,
    bookmarks: bool,
    ends_at: Instant,
    tx: mpsc::Sender<Bytes>,
    conn: Option<ConnHandle>,
    _slot: OwnedSemaphorePermit,
}

/// Why sending stopped.
enum Stop {
    ClientGone,
    Stalled,
}

/// The last object sent for one key, and the answer it was last seen in.
struct Known {
    hit: Hit,
    seen: u64,
}

impl Run {
    async fn send(&self, event: Bytes, event_type: &'static str) -> Result<(), Stop> {
        match self.tx.send_timeout(event, self.watches.config.stall).await {
            Ok(()) => {
                self.watches
                    .metrics
                    .watch_events
                    .get_or_create(&[("type", event_type)])
                    .inc();
                Ok(())
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Stop::ClientGone),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Stop::Stalled),
        }
    }

    async fn object(&self, event_type: &'static str, hit: &Hit, created: &str) -> Result<(), Stop> {
        match self.writer.object(event_type, hit, created) {
            Ok(event) => self.send(event, event_type).await,
            Err(e) => {
                tracing::warn!(error = %e, "watch event left out");
                Ok(())
            }
        }
    }

    /// Sends what changed between `known` and the cluster's current
    /// answer; the newest sample time sent so far is `rv`.
    async fn tick(
        &self,
        known: &mut HashMap<(String, String), Known>,
        round: u64,
        rv: &mut i64,
    ) -> Result<(), Stop> {
        let got = self.state.cluster.gather(&self.query).await;
        let created = rfc3339(now_ns());
        for hit in got.hits {
            *rv = (*rv).max(hit.timestamp_ns);
            let key = (hit.namespace.clone(), hit.name.clone());
            match known.get_mut(&key) {
                Some(k) => {
                    k.seen = round;
                    if k.hit.timestamp_ns != hit.timestamp_ns {
                        self.object("MODIFIED", &hit, &created).await?;
                        k.hit = hit;
                    }
                }
                None => {
                    let event = match (round, self.start) {
                        (0, Start::After(after)) if hit.timestamp_ns <= after => None,
                        (0, Start::After(_)) => Some("MODIFIED"),
                        _ => Some("ADDED"),
                    };
                    if let Some(t) = event {
                        self.object(t, &hit, &created).await?;
                    }
                    known.insert(key, Known { hit, seen: round });
                }
            }
        }
        // Objects gone from a complete answer are deleted; from one that
        // missed replicas, nothing is known about them.
        if got.missing.is_none() {
            let gone: Vec<(String, String)> = known
                .iter()
                .filter(|(_, k)| k.seen != round)
                .map(|(key, _)| key.clone())
                .collect();
            for key in gone {
                if let Some(k) = known.remove(&key) {
                    self.object("DELETED", &k.hit, &created).await?;
                }
            }
        }
        Ok(())
    }

    async fn run(self) {
        let reason = self.events().await;
        self.watches.ended(reason);
        self.watches.metrics.watches.dec();
        if reason == "stalled" {
            if let Some(conn) = &self.conn {
                conn.close.cancel();
            }
            if self.watches.log.ready() {
                tracing::warn!("a watch client took no event for {:?}: its connection was closed (logged at most once a minute; see metrics_aggregator_watches_ended_total)", self.watches.config.stall);
            }
        }
    }

    async fn events(&self) -> &'static str {
        let config = &self.watches.config;
        if let Start::After(after) = self.start {
            let oldest = now_ns().saturating_sub(config.horizon.as_nanos() as i64);
            if after < oldest {
                let e = ApiError::Expired(after.to_string());
                let _ = self.send(self.writer.error(&e), "ERROR").await;
                return "expired";
            }
        }
        let mut known = HashMap::new();
        let mut rv = match self.start {
            Start::After(after) => after,
            Start::Now => 0,
        };
        let mut last_bookmark = Instant::now();
        let mut round = 0u64;
        loop {
            let asked = Instant::now();
            let sent = self.tick(&mut known, round, &mut rv).await;
            let sent = match sent {
                Ok(()) if round == 0 && self.initial_events => self
                    .send(self.writer.bookmark(rv, true), "BOOKMARK")
                    .await
                    .map(|()| last_bookmark = Instant::now()),
                Ok(()) if self.bookmarks && last_bookmark.elapsed() >= config.bookmark_every => {
                    self.send(self.writer.bookmark(rv, false), "BOOKMARK")
                        .await
                        .map(|()| last_bookmark = Instant::now())
                }
                other => other,
            };
            match sent {
                Ok(()) => {}
                Err(Stop::ClientGone) => return "client_gone",
                Err(Stop::Stalled) => return "stalled",
            }
            round += 1;
            // Asking again no sooner than twice what asking took.
            let next = Instant::now().max(asked + config.poll.max(asked.elapsed() * 2));
            tokio::select! {
                _ = tokio::time::sleep_until(next.min(self.ends_at)) => {
                    if Instant::now() >= self.ends_at {
                        return "timeout";
                    }
                }
                _ = self.state.draining.cancelled() => return "shutdown",
                _ = self.tx.closed() => return "client_gone",
            }
        }
    }
}

/// Starts a watch of `query` and answers with its event stream.
pub fn serve(
    state: &AppState,
    query: Query,
    format: Format,
    include: IncludeObject,
    params: &WatchParams,
    conn: Option<ConnHandle>,
) -> Result<Response, ApiError> {
    if matches!(format, Format::Yaml) {
        return Err(ApiError::NotAcceptable);
    }
    let watches = Arc::clone(&state.watches);
    let start = params.start()?;
    let timeout = params.timeout(&watches.config)?;
    let Ok(slot) = Arc::clone(&watches.slots).try_acquire_owned() else {
        watches.metrics.limit("max_watches");
        if watches.log.ready() {
            tracing::warn!(
                "watches refused with 429: --max-watches reached (logged at most once a minute)"
            );
        }
        return Err(ApiError::TooManyRequests);
    };
    let writer = Writer {
        format,
        include,
        kind: query.kind,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(EVENTS_IN_FLIGHT);
    // While the events stream, the connection is not idle for reading.
    let guard = conn
        .as_ref()
        .map(|c| crate::read_idle::StreamingGuard::new(&c.streaming));
    watches.metrics.watches.inc();
    let run = Run {
        state: state.clone(),
        watches: Arc::clone(&watches),
        query,
        writer,
        start,
        initial_events: params.send_initial_events == Some(true),
        bookmarks: params.allow_bookmarks,
        ends_at: Instant::now() + timeout,
        tx,
        conn,
        _slot: slot,
    };
    tokio::spawn(run.run());
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |b| {
        let _streaming = &guard;
        Ok::<_, std::convert::Infallible>(b)
    });
    Ok((
        [
            (http::header::CONTENT_TYPE, writer.content_type()),
            (http::header::CACHE_CONTROL, "no-cache, private".to_owned()),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Events queued for a client beyond what its connection buffers.
const EVENTS_IN_FLIGHT: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> WatchParams {
        let mut p = WatchParams::default();
        for (k, v) in pairs {
            assert!(p.take(k, v), "{k}");
        }
        p
    }

    #[test]
    fn where_a_watch_starts() {
        assert_eq!(params(&[]).start(), Ok(Start::Now));
        assert_eq!(params(&[("resourceVersion", "0")]).start(), Ok(Start::Now));
        assert_eq!(
            params(&[("resourceVersion", "1700000000000000000")]).start(),
            Ok(Start::After(1_700_000_000_000_000_000))
        );
        assert!(matches!(
            params(&[("resourceVersion", "abc")]).start(),
            Err(ApiError::BadRequest(_))
        ));
        // sendInitialEvents needs its companions, as kube-apiserver says.
        assert!(params(&[("sendInitialEvents", "true")]).start().is_err());
        assert!(params(&[
            ("sendInitialEvents", "true"),
            ("resourceVersionMatch", "NotOlderThan")
        ])
        .start()
        .is_err());
        assert_eq!(
            params(&[
                ("sendInitialEvents", "true"),
                ("resourceVersionMatch", "NotOlderThan"),
                ("allowWatchBookmarks", "true"),
            ])
            .start(),
            Ok(Start::Now)
        );
        assert!(params(&[("resourceVersionMatch", "Exact")])
            .start()
            .is_err());
    }

    #[test]
    fn timeouts() {
        let c = WatchConfig::default();
        assert_eq!(
            params(&[("timeoutSeconds", "5")]).timeout(&c),
            Ok(Duration::from_secs(5))
        );
        assert!(params(&[("timeoutSeconds", "x")]).timeout(&c).is_err());
        let t = params(&[]).timeout(&c).unwrap_or_default();
        assert!(
            t >= c.min_request_timeout && t < c.min_request_timeout * 2,
            "{t:?}"
        );
    }

    #[test]
    fn protobuf_bookmark_and_json_events_are_framed() {
        let w = Writer {
            format: Format::Json,
            include: IncludeObject::Metadata,
            kind: Kind::Pods,
        };
        let b = w.bookmark(42, true);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(v["type"], "BOOKMARK");
        assert_eq!(v["object"]["kind"], "PodMetrics");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "42");
        assert_eq!(
            v["object"]["metadata"]["annotations"][INITIAL_EVENTS_END],
            "true"
        );
        assert!(b.ends_with(b"\n"));
        let p = Writer {
            format: Format::Protobuf,
            ..w
        };
        let frame = p.error(&ApiError::Expired("1".into()));
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len + 4, frame.len());
        assert_eq!(&frame[4..8], protobuf::MAGIC);
    }
}
