//! One period of the agent: read the source, fold the batch into the rate
//! store, and build the report to send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_proto::v1::NodeReport;
use metrics_proto::PROTOCOL_VERSION;
use tokio_util::sync::CancellationToken;

use crate::batch::PodRef;
use crate::labels::{LabelCache, Origin, Period};
use crate::meta::ApiPods;
use crate::metrics::AgentMetrics;
use crate::pods::{PodCache, PodIndex};
use crate::rates::RateStore;
use crate::source::Source;

/// Samples one node and turns samples into reports.
pub struct Collector {
    node_name: String,
    source: Source,
    rates: RateStore,
    period: Duration,
    metrics: Arc<AgentMetrics>,
    failing: bool,
    pods: Option<PodCache>,
    api_labels: Option<Arc<ApiPods>>,
    /// The last period's labels, reused while they hold.
    labels: LabelCache,
    /// The pods of a report sent before, whose names the next report
    /// reuses.
    spare: Vec<metrics_proto::v1::PodUsage>,
    /// Pods (and the node's labels) already logged as unsendable.
    warned: std::collections::HashSet<String>,
    /// Problem series and when each was last logged (bounded).
    problem_logged: std::collections::HashMap<String, Instant>,
    /// Malformed lines are logged once an hour in all.
    malformed_log: metrics_proto::runtime::LogThrottle,
}

/// Most unsendable pods remembered for logging once each.
const WARNED_MAX: usize = 1024;

/// How often one problem series is logged again.
const PROBLEM_LOG_EVERY: Duration = Duration::from_secs(3600);

impl Collector {
    pub fn new(
        node_name: String,
        source: Source,
        period: Duration,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Self {
            node_name,
            source,
            rates: RateStore::new(period),
            period,
            metrics,
            failing: false,
            pods: None,
            api_labels: None,
            labels: LabelCache::default(),
            spare: Vec::new(),
            warned: Default::default(),
            problem_logged: Default::default(),
            malformed_log: metrics_proto::runtime::LogThrottle::new(PROBLEM_LOG_EVERY),
        }
    }

    /// Uses `cache` to map cgroups to pods and to label every pod.
    pub fn with_pods(mut self, cache: PodCache) -> Self {
        self.pods = Some(cache);
        self
    }

    /// Takes pod and node labels from the API watch (over the kubelet's).
    pub fn with_api_labels(mut self, labels: Arc<ApiPods>) -> Self {
        self.api_labels = Some(labels);
        self
    }

    /// The node this collector reports for.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Reads the source once and returns the report for this period, its
    /// labels beside it. A failed read is logged (once per outage) and
    /// yields `None`.
    pub async fn collect(&mut self) -> Option<Period> {
        let empty = PodIndex::default();
        if let Some(cache) = self.pods.as_mut().filter(|_| self.source.needs_pods()) {
            cache.refresh(false).await;
        }
        let index = self.pods.as_ref().map_or(&empty, |c| c.index());
        let (batch, stats) = match self.source.read(index).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.read(false);
                if !self.failing {
                    tracing::warn!(source = self.source.name(), error = %e, "reading source failed");
                }
                self.failing = true;
                return None;
            }
        };
        if self.failing {
            tracing::info!(source = self.source.name(), "source recovered");
            self.failing = false;
        }
        self.warn_problems(&stats);
        self.metrics.read(true);
        self.metrics.decoded(&stats);
        self.rates.store(&batch);
        let mut pods = self.rates.pod_usages_into(std::mem::take(&mut self.spare));
        if let Some(cache) = &mut self.pods {
            let unknown =
                stats.unmapped_cgroups > 0 || batch.pods.keys().any(|p| !cache.index().knows(p));
            cache.refresh(unknown).await;
        }
        self.drop_unsendable(&mut pods);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        self.metrics
            .last_report
            .set(now.map_or(0, |d| d.as_secs() as i64));
        let report = NodeReport {
            protocol_version: PROTOCOL_VERSION,
            node_name: self.node_name.clone(),
            sequence: 0,
            period_ms: u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX),
            node_labels: Default::default(),
            node: self.sendable_node(self.rates.node_usage()),
            pods,
            source: self.source.name().to_owned(),
            labels_version: 0,
            labels_omitted: false,
            answer_within_ms: metrics_proto::acks::answer_within_ms(self.period),
        };
        let api = self.api_labels.as_deref();
        // Pods from the API watch carry the labels the API gives; only the
        // kubelet's `/pods` is a source of its own.
        let kubelet_pods = self
            .pods
            .as_ref()
            .filter(|c| !c.from_api_watch())
            .map(PodCache::index);
        let origin = Origin {
            api: api.map(ApiPods::generation),
            index: kubelet_pods.map(PodIndex::version),
        };
        let (period, refusals) = self.labels.apply(
            report,
            origin,
            |namespace, name| {
                let key = PodRef {
                    namespace: namespace.into(),
                    name: name.into(),
                };
                api.and_then(|a| a.pod(&key))
                    .or_else(|| kubelet_pods.and_then(|i| i.labels(&key).cloned()))
                    .map(|l| l.into_iter().collect())
            },
            || {
                api.map(|a| a.node().into_iter().collect())
                    .unwrap_or_default()
            },
        );
        for (p, reason) in &refusals.pods {
            let what = format!("pod {}", metrics_proto::checks::pod_key(p));
            self.refuse(what, reason, "invalid_pod");
        }
        if let Some(reason) = &refusals.node {
            self.refuse("node labels".into(), reason, "invalid_node_labels");
        }
        Some(period)
    }

    /// Logs each problem series once an hour (counters count every one),
    /// and malformed lines once an hour in all.
    fn warn_problems(&mut self, stats: &crate::source::decode::DecodeStats) {
        let now = Instant::now();
        let due = |last: Option<&Instant>| {
            last.is_none_or(|t| now.duration_since(*t) >= PROBLEM_LOG_EVERY)
        };
        for p in &stats.problems {
            if due(self.problem_logged.get(p)) {
                if self.problem_logged.len() >= WARNED_MAX {
                    self.problem_logged
                        .retain(|_, t| now.duration_since(*t) < PROBLEM_LOG_EVERY);
                }
                if self.problem_logged.len() < WARNED_MAX {
                    self.problem_logged.insert(p.clone(), now);
                    tracing::warn!(series = %p, "sample left out or overridden (logged once an hour per series; counted in metrics_agent_dropped_total)");
                }
            }
        }
        if stats.malformed_lines > 0 && self.malformed_log.ready() {
            tracing::warn!(
                lines = stats.malformed_lines,
                "malformed lines in the source's payload (logged once an hour)"
            );
        }
    }

    /// The node's usage unless the aggregator would refuse it (which would
    /// cost the whole report): out-of-range values or times are left out,
    /// counted and logged once, and the pods still go.
    fn sendable_node(
        &mut self,
        usage: Option<metrics_proto::v1::Usage>,
    ) -> Option<metrics_proto::v1::Usage> {
        let u = usage?;
        match metrics_proto::checks::check_node_usage(&u) {
            Ok(()) => Some(u),
            Err(reason) => {
                self.metrics
                    .dropped
                    .get_or_create(&[("reason", "invalid_node_usage")])
                    .inc();
                if self.warned.len() < WARNED_MAX && self.warned.insert("node usage".into()) {
                    tracing::warn!(%reason, "node usage left out of reports: the aggregator would refuse it");
                }
                None
            }
        }
    }

    /// Leaves out the pods an aggregator would refuse (which would cost
    /// the whole report), one by one; their labels are checked where they
    /// are read ([`LabelCache`]).
    fn drop_unsendable(&mut self, pods: &mut Vec<metrics_proto::v1::PodUsage>) {
        use metrics_proto::checks::{check_pod, pod_key};
        let mut refused = Vec::new();
        pods.retain(|p| match check_pod(p) {
            Ok(()) => true,
            Err(reason) => {
                refused.push((format!("pod {}", pod_key(p)), reason));
                false
            }
        });
        for (what, reason) in refused {
            self.refuse(what, &reason, "invalid_pod");
        }
    }

    /// Counts one thing left out of this period's report, and logs it the
    /// first time.
    fn refuse(&mut self, what: String, reason: &str, counter: &'static str) {
        self.metrics
            .dropped
            .get_or_create(&[("reason", counter)])
            .inc();
        if self.warned.len() < WARNED_MAX && self.warned.insert(what.clone()) {
            tracing::warn!(dropped = %what, %reason, "left out of reports: the aggregator would refuse it");
        }
    }

    /// Collects every period until cancelled, handing each report to
    /// `sink`. The sink hands back an earlier period it is done with, if it
    /// has one, and its pods' names are reused for the next report.
    pub async fn run(
        mut self,
        mut sink: impl FnMut(Period) -> Option<Period>,
        cancel: CancellationToken,
    ) {
        let mut tick = crate::ticker::Ticker::new(self.period);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let report = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.collect() => r,
            };
            if let Some(old) = report.and_then(&mut sink) {
                self.spare = old.report.pods;
            }
        }
    }
}
