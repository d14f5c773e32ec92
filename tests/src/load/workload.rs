//! The simulated cluster: node, namespace, pod and container names of
//! realistic length, 5–10 labels per pod, and usage that moves every
//! period. Everything is a pure function of indices, so the load generator
//! knows exactly what every answer must contain.
//!
//! Pods are dealt to nodes column-wise (global index `slot * nodes +
//! node`), and every run of [`PODS_PER_APP`] consecutive global indices is
//! one Deployment, so an app's pods sit on different nodes, as a scheduler
//! spreads them.

use std::collections::HashMap;

use metrics_proto::v1::{ContainerUsage, NodeReport, PodUsage, Usage};
use xxhash_rust::xxh3::xxh3_64;

/// Pods of one Deployment (the HPA query's answer size).
pub const PODS_PER_APP: usize = 10;

const APPS: &[&str] = &[
    "checkout-api",
    "payments-worker",
    "frontend-web",
    "search-indexer",
    "inventory-service",
    "notification-dispatcher",
    "user-profile",
    "recommendation-engine",
    "order-history",
    "image-resizer",
    "session-cache",
    "billing-reconciler",
];
const TEAMS: &[&str] = &[
    "payments",
    "storefront",
    "platform",
    "search",
    "growth",
    "identity",
    "data",
    "logistics",
];
const TIERS: &[&str] = &["web", "api", "worker"];
const SIDECARS: &[&str] = &["istio-proxy", "log-shipper", "config-reloader"];
/// The characters Kubernetes uses for generated name suffixes.
const ALNUM: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Shape of the simulated cluster.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Shape {
    pub nodes: usize,
    pub pods_per_node: usize,
    pub containers_per_pod: usize,
    pub namespaces: usize,
}

fn suffix(seed: u64, len: usize) -> String {
    let mut x = seed;
    (0..len)
        .map(|_| {
            let c = ALNUM[(x % ALNUM.len() as u64) as usize] as char;
            x /= ALNUM.len() as u64;
            if x == 0 {
                x = xxh3_64(&seed.to_le_bytes()) | 1;
            }
            c
        })
        .collect()
}

impl Shape {
    pub fn total_pods(&self) -> usize {
        self.nodes * self.pods_per_node
    }

    /// Number of Deployments.
    pub fn apps(&self) -> usize {
        self.total_pods().div_ceil(PODS_PER_APP)
    }

    /// Name of node `n`, as a cloud provider names it.
    pub fn node_name(&self, n: usize) -> String {
        format!(
            "ip-10-{}-{}-{}.eu-west-1.compute.internal",
            (n >> 16) & 255,
            (n >> 8) & 255,
            n & 255
        )
    }

    /// Namespace of Deployment `app`.
    pub fn namespace(&self, app: usize) -> String {
        let k = app % self.namespaces.max(1);
        format!("{}-{}-prod", TEAMS[k % TEAMS.len()], k)
    }

    /// Value of the `app` label of Deployment `app`.
    pub fn app_name(&self, app: usize) -> String {
        format!("{}-{app}", APPS[app % APPS.len()])
    }

    fn template_hash(app: usize) -> String {
        suffix(xxh3_64(&(app as u64).to_le_bytes()), 10)
    }

    /// (node, slot) of global pod index `g`.
    fn place(&self, g: usize) -> (usize, usize) {
        (g % self.nodes, g / self.nodes)
    }

    /// Global index of the pod in `slot` on `node`.
    fn global(&self, node: usize, slot: usize) -> usize {
        slot * self.nodes + node
    }

    /// (namespace, name) of global pod `g`.
    pub fn pod_key(&self, g: usize) -> (String, String) {
        let app = g / PODS_PER_APP;
        (
            self.namespace(app),
            format!(
                "{}-{}-{}",
                self.app_name(app),
                Self::template_hash(app),
                suffix(xxh3_64(&(g as u64 ^ 0x5bd1e995).to_le_bytes()), 5)
            ),
        )
    }

    /// How many pods the HPA-style query for `app` must return.
    pub fn app_size(&self, app: usize) -> usize {
        let start = app * PODS_PER_APP;
        self.total_pods().min(start + PODS_PER_APP) - start
    }

    fn pod_labels(&self, app: usize) -> HashMap<String, String> {
        let team = TEAMS[(app % self.namespaces.max(1)) % TEAMS.len()];
        let name = APPS[app % APPS.len()];
        let all = [
            ("app", self.app_name(app)),
            ("pod-template-hash", Self::template_hash(app)),
            ("app.kubernetes.io/name", name.to_owned()),
            ("app.kubernetes.io/instance", self.app_name(app)),
            ("app.kubernetes.io/part-of", format!("{team}-platform")),
            ("app.kubernetes.io/version", format!("v1.{}.3", app % 20)),
            ("team", team.to_owned()),
            ("tier", TIERS[app % TIERS.len()].to_owned()),
            ("environment", "production".to_owned()),
            ("security.istio.io/tlsMode", "istio".to_owned()),
        ];
        let n = 5 + app % 6;
        all.into_iter()
            .take(n)
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    fn node_labels(&self, n: usize) -> HashMap<String, String> {
        let zone = ["a", "b", "c"][n % 3];
        [
            ("kubernetes.io/hostname", self.node_name(n)),
            ("kubernetes.io/os", "linux".to_owned()),
            ("kubernetes.io/arch", "amd64".to_owned()),
            ("node.kubernetes.io/instance-type", "m6i.2xlarge".to_owned()),
            ("topology.kubernetes.io/region", "eu-west-1".to_owned()),
            ("topology.kubernetes.io/zone", format!("eu-west-1{zone}")),
            ("eks.amazonaws.com/nodegroup", format!("general-{zone}")),
            ("eks.amazonaws.com/capacityType", "ON_DEMAND".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn container_names(&self, app: usize) -> Vec<String> {
        (0..self.containers_per_pod)
            .map(|i| match i {
                0 => APPS[app % APPS.len()].to_owned(),
                i if i <= SIDECARS.len() => SIDECARS[i - 1].to_owned(),
                i => format!("sidecar-{i}"),
            })
            .collect()
    }

    /// Node `n`'s report with every label and zero usage; [`fill`] sets
    /// the usage of one period. Its pods are in the order the agent sends
    /// them (by namespace, then name), each pod's containers by name.
    pub fn template(&self, n: usize, period_ms: u64) -> NodeReport {
        let mut pods: Vec<PodUsage> = (0..self.pods_per_node)
            .map(|slot| self.global(n, slot))
            .filter(|g| *g < self.total_pods())
            .map(|g| {
                let app = g / PODS_PER_APP;
                let (namespace, name) = self.pod_key(g);
                PodUsage {
                    namespace,
                    name,
                    labels: self.pod_labels(app),
                    timestamp_unix_nanos: 0,
                    window_nanos: 0,
                    containers: self
                        .container_names(app)
                        .into_iter()
                        .map(|name| ContainerUsage {
                            name,
                            ..Default::default()
                        })
                        .collect(),
                }
            })
            .collect();
        for p in &mut pods {
            p.containers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        }
        pods.sort_unstable_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut report = NodeReport {
            protocol_version: metrics_proto::PROTOCOL_VERSION,
            node_name: self.node_name(n),
            sequence: 0,
            period_ms,
            node_labels: self.node_labels(n),
            node: None,
            pods,
            source: "kubelet".into(),
            labels_version: 0,
            labels_omitted: false,
            // Every report answered unless the fleet paces its Acks.
            answer_within_ms: 0,
        };
        report.labels_version = metrics_proto::labels::version(&report);
        report
    }

    /// Node and pod of global index `g` (for checks).
    pub fn pod_node(&self, g: usize) -> usize {
        self.place(g).0
    }
}

/// The same report without labels, marked as omitting them.
pub fn bare(template: &NodeReport) -> NodeReport {
    let mut r = template.clone();
    metrics_proto::labels::omit(&mut r);
    r
}

/// Sets the usage of period `tick` sampled at `now_ns`, with a window of
/// `window_ns`: values move every period, as real counters' rates do.
pub fn fill(report: &mut NodeReport, tick: u64, now_ns: i64, window_ns: i64) {
    let wiggle = |seed: u64| xxh3_64(&(seed ^ tick.wrapping_mul(0x9e37_79b9)).to_le_bytes());
    report.node = Some(Usage {
        timestamp_unix_nanos: now_ns,
        window_nanos: window_ns,
        cpu_nanocores: 2_000_000_000 + wiggle(1) % 1_000_000_000,
        memory_working_set_bytes: (8 << 30) + (wiggle(2) % (1 << 30)),
        swap_bytes: 0,
    });
    for (i, p) in report.pods.iter_mut().enumerate() {
        // Containers' samples are a few ms older than the node's.
        p.timestamp_unix_nanos = now_ns - 3_000_000;
        p.window_nanos = window_ns;
        for (j, c) in p.containers.iter_mut().enumerate() {
            let w = wiggle(((i as u64) << 8) | j as u64);
            c.cpu_nanocores = 1_000_000 + w % 250_000_000;
            c.memory_working_set_bytes = (32 << 20) + (w >> 20) % (512 << 20);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pod_is_placed_once_and_apps_have_their_size() {
        let s = Shape {
            nodes: 7,
            pods_per_node: 5,
            containers_per_pod: 2,
            namespaces: 3,
        };
        let mut seen = std::collections::HashSet::new();
        let mut per_app: HashMap<(String, String), usize> = HashMap::new();
        for n in 0..s.nodes {
            let r = s.template(n, 15_000);
            assert!(metrics_proto::labels::version(&r) != 0);
            // In the agent's order: pods by namespace and name, each
            // pod's containers by name.
            assert!(r
                .pods
                .windows(2)
                .all(|w| (&w[0].namespace, &w[0].name) < (&w[1].namespace, &w[1].name)));
            for p in &r.pods {
                assert!(p.containers.windows(2).all(|w| w[0].name < w[1].name));
                assert!(seen.insert((p.namespace.clone(), p.name.clone())));
                assert!((5..=10).contains(&p.labels.len()), "{:?}", p.labels);
                *per_app
                    .entry((p.namespace.clone(), p.labels["app"].clone()))
                    .or_default() += 1;
            }
        }
        assert_eq!(seen.len(), s.total_pods());
        for app in 0..s.apps() {
            let key = (s.namespace(app), s.app_name(app));
            assert_eq!(per_app[&key], s.app_size(app), "{key:?}");
        }
        // An app's pods are spread over nodes.
        let nodes: std::collections::HashSet<usize> =
            (0..PODS_PER_APP).map(|g| s.pod_node(g)).collect();
        assert_eq!(nodes.len(), s.nodes);
    }
}
