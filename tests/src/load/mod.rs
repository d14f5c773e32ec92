//! The load generator: real `metrics-aggregator` replicas on 127.0.0.1 fed
//! by a fleet of simulated agents in this process, then queried. It
//! measures each replica's CPU (utime + stime) and RSS over whole periods,
//! ingest lag (report sent → ack), API latency for the four queries with
//! 1 and with several clients, and metric age at query time; and it checks
//! that every answer is complete. Everything is bounded in count and time.

pub mod fleet;
pub mod queries;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::procs::AggregatorProc;
use crate::procstat;
use crate::replicas::ReplicaSet;
use fleet::{Fleet, FleetStats};
use queries::{Api, Outcome, QueryKind};
use workload::Shape;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub shape: Shape,
    pub replicas: usize,
    pub replication: usize,
    pub period: Duration,
    /// Whole periods measured for ingest cost.
    pub measure_periods: u32,
    /// Client counts to run the queries with, e.g. `[1, 4]`.
    pub clients: Vec<usize>,
    /// Queries per client and kind: HPA, pod GET, nodes, pods.
    pub queries: [usize; 4],
    /// Longest time one query phase may take.
    pub phase_limit: Duration,
    /// Extra flags for every replica.
    pub extra: Vec<String>,
    /// Where replicas keep their files.
    pub dir: PathBuf,
    /// All-pods lists asked in each representation (JSON, protobuf,
    /// Table, YAML) after the query phases; 0: none.
    pub representations: usize,
    /// After those lists, how long ingest runs on before every replica's
    /// RSS is read again (`rss_kib_settled`); zero: not read.
    pub settle: Duration,
    /// Reports carry the real agent's `answer_within_ms`, so replicas
    /// answer only as often as it needs (ingest lag is then measured on
    /// the reports answered); otherwise every report is answered.
    pub paced_acks: bool,
}

/// Percentiles of a sample, ms.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        let round = |v: f64| (v * 1e3).round() / 1e3;
        let at = |q: f64| round(ms[((ms.len() - 1) as f64 * q).round() as usize]);
        Self {
            count: ms.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: round(ms[ms.len() - 1]),
        }
    }
}

/// One replica's cost over the measured periods.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaCost {
    pub id: String,
    pub nodes_owned: usize,
    /// CPU over the measured interval, millicores.
    pub mcpu: f64,
    pub rss_kib_idle: u64,
    /// After the ingest periods, before any query.
    pub rss_kib: u64,
    /// The anonymous part of the two above (heap and stacks, without the
    /// pages of the binary's code that serving touched).
    pub rss_anon_kib_idle: u64,
    pub rss_anon_kib: u64,
    /// After every query phase (large answers included).
    pub rss_kib_after_queries: u64,
}

/// One query kind at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    pub latency_ms: Percentiles,
    pub incomplete: usize,
    pub warned: usize,
    pub problems: Vec<String>,
}

/// The JSON summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub shape: Shape,
    pub replicas: usize,
    pub replication: usize,
    pub period_s: f64,
    pub measured_s: f64,
    /// From the first report to every replica answering every object.
    pub converged_s: f64,
    pub replica_cost: Vec<ReplicaCost>,
    /// All replicas' CPU divided by the nodes, millicores.
    pub central_mcpu_per_node: f64,
    /// All replicas' RSS growth under load divided by the nodes, KiB.
    pub central_rss_kib_per_node: f64,
    /// The same for the anonymous part of RSS: the growth that is the
    /// nodes' and connections' data, without the code pages that serving
    /// them brought in once.
    pub central_anon_kib_per_node: f64,
    pub reports_sent: u64,
    pub reports_accepted: u64,
    pub reports_refused: u64,
    pub reports_dropped: u64,
    pub last_refusal: Option<String>,
    pub stream_connects: u64,
    pub stream_errors: u64,
    pub ingest_lag_ms: Percentiles,
    /// clients → query kind → result.
    pub queries: BTreeMap<usize, BTreeMap<QueryKind, QueryResult>>,
    pub metric_age_ms: Percentiles,
    /// Cost of an all-pods list by representation.
    pub representations: BTreeMap<&'static str, RepresentationCost>,
    /// Every replica's RSS summed, KiB, [`Config::settle`] after the
    /// representations' lists: what the replicas gave back.
    pub rss_kib_settled: Option<u64>,
    /// Every replica answered every node and pod at the end, and no query
    /// answer was incomplete.
    pub complete: bool,
}

/// What one all-pods list costs in one representation.
#[derive(Debug, Clone, Serialize)]
pub struct RepresentationCost {
    pub latency_ms: Percentiles,
    /// CPU of every replica per answer, ms.
    pub cpu_ms_per_answer: f64,
    pub bytes: usize,
    /// Answers that were not 200 in the asked content type.
    pub failed: usize,
    /// Every replica's RSS summed, KiB: before the first answer, and
    /// after the last.
    pub rss_kib_before: u64,
    pub rss_kib_after: u64,
    /// The most any replica's RSS rose above its level before the
    /// answers while they ran (sampled every [`RSS_SAMPLE`]), KiB.
    pub rss_kib_peak_rise: u64,
}

/// How often RSS is sampled while large answers are being written.
pub const RSS_SAMPLE: Duration = Duration::from_millis(20);

/// `work`'s output, and the highest RSS each of `pids` had while it ran,
/// sampled every [`RSS_SAMPLE`] and once at its end, KiB.
async fn peak_rss_while<T>(
    pids: &[u32],
    work: impl std::future::Future<Output = T>,
) -> anyhow::Result<(T, Vec<u64>)> {
    let mut peaks = vec![0u64; pids.len()];
    let sample = |peaks: &mut [u64]| -> anyhow::Result<()> {
        for (peak, &pid) in peaks.iter_mut().zip(pids) {
            *peak = (*peak).max(procstat::rss_kib(pid)?);
        }
        Ok(())
    };
    let mut tick = tokio::time::interval(RSS_SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick() => sample(&mut peaks)?,
        }
    };
    sample(&mut peaks)?;
    Ok((out, peaks))
}

/// The representations measured, by their `Accept` headers.
pub const REPRESENTATIONS: [(&str, &str); 4] = [
    ("json", "application/json"),
    ("protobuf", "application/vnd.kubernetes.protobuf"),
    ("table", "application/json;as=Table;v=v1;g=meta.k8s.io"),
    ("yaml", "application/yaml"),
];

/// Asks every pod `count` times in each representation from replica 0.
async fn representations(
    api: &Api,
    aggs: &[AggregatorProc],
    count: usize,
) -> anyhow::Result<BTreeMap<&'static str, RepresentationCost>> {
    let mut out = BTreeMap::new();
    for (name, accept) in REPRESENTATIONS {
        let cpu = |aggs: &[AggregatorProc]| -> anyhow::Result<f64> {
            aggs.iter().map(|a| procstat::cpu_seconds(pid(a)?)).sum()
        };
        let pids: Vec<u32> = aggs.iter().map(pid).collect::<anyhow::Result<_>>()?;
        let before = rss_each(aggs)?;
        let cpu0 = cpu(aggs)?;
        let answers = async {
            let mut latencies = Vec::new();
            let (mut bytes, mut failed) = (0, 0);
            for _ in 0..count {
                let (status, headers, body, latency) = api.get_as(0, "pods", accept).await?;
                let ct = headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if status != http::StatusCode::OK
                    || !ct.starts_with(accept.split(';').next().unwrap_or(""))
                {
                    failed += 1;
                }
                bytes = body.len();
                latencies.push(ms(latency));
            }
            anyhow::Ok((latencies, bytes, failed))
        };
        let (answered, peaks) = peak_rss_while(&pids, answers).await?;
        let (latencies, bytes, failed) = answered?;
        let cpu_ms = (cpu(aggs)? - cpu0) * 1e3 / count.max(1) as f64;
        let after = rss_each(aggs)?;
        let rss_kib_peak_rise = peaks
            .iter()
            .zip(&before)
            .map(|(peak, before)| peak.saturating_sub(*before))
            .max()
            .unwrap_or(0);
        out.insert(
            name,
            RepresentationCost {
                latency_ms: Percentiles::of(latencies),
                cpu_ms_per_answer: cpu_ms,
                bytes,
                failed,
                rss_kib_before: before.iter().sum(),
                rss_kib_after: after.iter().sum(),
                rss_kib_peak_rise,
            },
        );
    }
    Ok(out)
}

impl Serialize for QueryKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            QueryKind::Hpa => "hpa_namespace_selector",
            QueryKind::PodGet => "pod_get",
            QueryKind::Nodes => "all_nodes",
            QueryKind::Pods => "all_pods",
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Each replica's RSS, KiB.
fn rss_each(aggs: &[AggregatorProc]) -> anyhow::Result<Vec<u64>> {
    aggs.iter().map(|a| procstat::rss_kib(pid(a)?)).collect()
}

fn pid(agg: &AggregatorProc) -> anyhow::Result<u32> {
    agg.proc.child.id().context("replica exited")
}

/// Whether every replica answers every node (and, with `pods`, every pod).
async fn all_complete(api: &Api, shape: &Shape, replicas: usize, pods: bool) -> bool {
    let mut pick = queries::Picker::new(1);
    for r in 0..replicas {
        for kind in [QueryKind::Nodes, QueryKind::Pods] {
            if kind == QueryKind::Pods && !pods {
                continue;
            }
            if !queries::one(api, shape, kind, r, &mut pick).await.complete {
                return false;
            }
        }
    }
    true
}

fn summarize(outcomes: &[Outcome]) -> QueryResult {
    QueryResult {
        latency_ms: Percentiles::of(outcomes.iter().map(|o| ms(o.latency)).collect()),
        incomplete: outcomes.iter().filter(|o| !o.complete).count(),
        warned: outcomes.iter().filter(|o| o.warned).count(),
        problems: outcomes
            .iter()
            .filter_map(|o| o.problem.clone())
            .take(5)
            .collect(),
    }
}

/// Runs the whole measurement and returns its summary.
pub async fn run(cfg: &Config) -> anyhow::Result<Summary> {
    let shape = cfg.shape;
    let extra: Vec<&str> = cfg.extra.iter().map(String::as_str).collect();
    let set = ReplicaSet::new(&cfg.dir, cfg.replicas, cfg.replication, &extra);
    let aggs = set.start_all().await?;
    let idle: Vec<(u64, u64)> = aggs
        .iter()
        .map(|a| procstat::rss_parts_kib(pid(a)?))
        .collect::<anyhow::Result<_>>()?;
    let ca = PathBuf::from(&set.cert.0);
    let api = Api::new(&ca, aggs.iter().map(AggregatorProc::api_url).collect())?;
    let tls = metrics_proto::tls::client_config(metrics_proto::tls::Verify::CaFile(&ca), &[b"h2"])?;
    let bootstrap: Vec<String> = (0..cfg.replicas).map(|i| set.grpc_url(i)).collect();

    let started = Instant::now();
    let fleet = Fleet::start(shape, cfg.period, bootstrap, tls, cfg.paced_acks);
    let converge_limit = (cfg.period * 10).max(Duration::from_secs(120));
    // Node lists first (cheap), then every pod once: repeated lists of
    // every pod would leave their memory in the replicas' RSS.
    let converged = crate::wait::eventually(converge_limit, async || {
        all_complete(&api, &shape, cfg.replicas, false).await
    })
    .await
        && crate::wait::eventually(converge_limit, async || {
            all_complete(&api, &shape, 1, true).await
        })
        .await;
    if !converged {
        anyhow::bail!(
            "replicas did not converge within {converge_limit:?}: sent {} accepted {} refused {} (last: {:?}), stream errors {}",
            FleetStats::get(&fleet.stats.sent),
            FleetStats::get(&fleet.stats.accepted),
            FleetStats::get(&fleet.stats.refused),
            fleet.stats.last_refusal(),
            FleetStats::get(&fleet.stats.stream_errors),
        );
    }
    let converged_s = started.elapsed().as_secs_f64();
    // One more period so every stream has settled on its owners.
    tokio::time::sleep(cfg.period).await;
    fleet.stats.take_lags();

    // Ingest cost over whole periods, with no queries running.
    let cpu0: Vec<f64> = aggs
        .iter()
        .map(|a| procstat::cpu_seconds(pid(a)?))
        .collect::<anyhow::Result<_>>()?;
    let t0 = Instant::now();
    tokio::time::sleep(cfg.period * cfg.measure_periods).await;
    let measured = t0.elapsed().as_secs_f64();
    let mut replica_cost = Vec::new();
    for (i, a) in aggs.iter().enumerate() {
        let p = pid(a)?;
        let owned = (0..shape.nodes)
            .filter(|n| {
                metrics_proto::ring::owns(
                    &set.ids,
                    &shape.node_name(*n),
                    cfg.replication,
                    &set.ids[i],
                )
            })
            .count();
        let (rss_kib, rss_anon_kib) = procstat::rss_parts_kib(p)?;
        replica_cost.push(ReplicaCost {
            id: set.ids[i].clone(),
            nodes_owned: owned,
            mcpu: (procstat::cpu_seconds(p)? - cpu0[i]) / measured * 1e3,
            rss_kib_idle: idle[i].0,
            rss_kib,
            rss_anon_kib_idle: idle[i].1,
            rss_anon_kib,
            rss_kib_after_queries: 0,
        });
    }
    let ingest_lag_ms = Percentiles::of(
        fleet
            .stats
            .take_lags()
            .into_iter()
            .map(|us| f64::from(us) / 1e3)
            .collect(),
    );

    let mut results = BTreeMap::new();
    let mut ages = Vec::new();
    let mut any_incomplete = false;
    for &clients in &cfg.clients {
        let mut by_kind = BTreeMap::new();
        for (kind, count) in QueryKind::ALL.into_iter().zip(cfg.queries) {
            if count == 0 {
                continue;
            }
            let outcomes = queries::run(&api, shape, kind, clients, count, cfg.phase_limit).await;
            ages.extend(outcomes.iter().flat_map(|o| o.ages_ms.iter().copied()));
            let r = summarize(&outcomes);
            any_incomplete |= r.incomplete > 0;
            by_kind.insert(kind, r);
        }
        results.insert(clients, by_kind);
    }
    let representations = if cfg.representations > 0 {
        representations(&api, &aggs, cfg.representations).await?
    } else {
        BTreeMap::new()
    };
    let rss_kib_settled = if cfg.representations > 0 && !cfg.settle.is_zero() {
        tokio::time::sleep(cfg.settle).await;
        Some(rss_each(&aggs)?.iter().sum())
    } else {
        None
    };
    let complete = !any_incomplete && all_complete(&api, &shape, cfg.replicas, true).await;
    for (r, a) in replica_cost.iter_mut().zip(&aggs) {
        r.rss_kib_after_queries = procstat::rss_kib(pid(a)?)?;
    }
    fleet.stop();

    let nodes = shape.nodes.max(1) as f64;
    let per_node = |of: fn(&ReplicaCost) -> f64| replica_cost.iter().map(of).sum::<f64>() / nodes;
    let central_mcpu_per_node = per_node(|r| r.mcpu);
    let central_rss_kib_per_node = per_node(|r| r.rss_kib.saturating_sub(r.rss_kib_idle) as f64);
    let central_anon_kib_per_node =
        per_node(|r| r.rss_anon_kib.saturating_sub(r.rss_anon_kib_idle) as f64);
    Ok(Summary {
        shape,
        replicas: cfg.replicas,
        replication: cfg.replication,
        period_s: cfg.period.as_secs_f64(),
        measured_s: measured,
        converged_s,
        central_mcpu_per_node,
        central_rss_kib_per_node,
        central_anon_kib_per_node,
        replica_cost,
        reports_sent: FleetStats::get(&fleet.stats.sent),
        reports_accepted: FleetStats::get(&fleet.stats.accepted),
        reports_refused: FleetStats::get(&fleet.stats.refused),
        reports_dropped: FleetStats::get(&fleet.stats.dropped),
        last_refusal: fleet.stats.last_refusal(),
        stream_connects: FleetStats::get(&fleet.stats.connects),
        stream_errors: FleetStats::get(&fleet.stats.stream_errors),
        ingest_lag_ms,
        queries: results,
        metric_age_ms: Percentiles::of(ages),
        representations,
        rss_kib_settled,
        complete,
    })
}
