//! Load harness: CPU and memory of a real `metrics-agent` reading a
//! 110-pod node from cgroups at several resolutions, with its pod watch on
//! the stand-in kube-apiserver (as in a cluster: pods and labels come from
//! the API). Everything runs on 127.0.0.1 and in a temp dir; every run is
//! bounded and stops itself.
//!
//! `cargo run --release -p metrics-e2e --bin agent-cpu -- [PODS] [SECONDS_PER_RESOLUTION...]`
//! (defaults: 110 pods; 30 s at 1s, 60 s at 5s, 120 s at 15s; a 0 skips a
//! resolution). `SOURCE=kubelet` measures the kubelet source instead.
//! `CGROUPS=real` (root) makes the pod and container cgroups in this host's
//! real hierarchy, one sleeping process in each container, so the agent
//! reads the kernel's files instead of copies in a temp dir.
//! `API=in-cluster` (root, util-linux's `unshare`) starts the agent as a
//! pod runs it, with no kubeconfig: the service-account token and CA at
//! their in-cluster path (in a mount namespace of the agent's own) and the
//! API's address in `KUBERNETES_SERVICE_HOST`/`_PORT`.

use std::path::Path;
use std::time::{Duration, Instant};

use metrics_e2e::apiserver::FakeApiServer;
use metrics_e2e::cgroupfs::{Driver, FakeCgroups, Layout, Qos, Runtime};
use metrics_e2e::kubelet::{self, FakeContainer, FakeNode, FakePod};
use metrics_e2e::procs::{
    binary, start_agent, start_agent_in_cluster, start_aggregator, InCluster,
};
use metrics_e2e::realcgroups::RealCgroups;

/// Total on-CPU time of every thread of `pid`, ns.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn node(pods: usize) -> FakeNode {
    FakeNode {
        cores: 1.0,
        memory: 4 << 30,
        pods: (0..pods)
            .map(|i| {
                let name = format!("app-{i}");
                FakePod {
                    uid: kubelet::pod_uid(&name),
                    namespace: format!("ns-{}", i % 10),
                    name: name.clone(),
                    labels: [("app".to_string(), name.clone())].into(),
                    containers: ["main", "sidecar"]
                        .iter()
                        .map(|c| FakeContainer {
                            name: c.to_string(),
                            id: kubelet::container_id(&format!("{name}/{c}")),
                            cores: 0.01,
                            memory: 64 << 20,
                        })
                        .collect(),
                }
            })
            .collect(),
        extra_lines: vec![],
    }
}

fn build_tree(root: &Path, spec: &FakeNode) -> FakeCgroups {
    let tree = FakeCgroups::new(root, Layout::V2, Driver::Systemd, Runtime::Containerd);
    tree.set_node(1_000_000_000_000, 2 << 30);
    for p in &spec.pods {
        let pod = tree.pod_rel(Qos::Burstable, &p.uid);
        tree.set(&pod, 10_000_000_000, 128 << 20);
        for c in &p.containers {
            tree.set(&tree.container_rel(&pod, &c.id), 5_000_000_000, c.memory);
        }
    }
    tree
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    metrics_proto::tls::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().map_or(Ok(110), |a| a.parse())?;
    let secs: Vec<u64> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let plan: Vec<(u64, u64)> = [1, 5, 15]
        .into_iter()
        .zip(if secs.is_empty() {
            vec![30, 60, 120]
        } else {
            secs
        })
        .collect();

    let dir = tempfile::tempdir()?;
    let spec = node(pods);
    let tree = build_tree(&dir.path().join("cg"), &spec);
    let real = match std::env::var("CGROUPS").as_deref() {
        Ok("real") => {
            let name = format!("agent-cpu-{}", std::process::id());
            let mut real = RealCgroups::new(dir.path(), &name)?;
            for p in &spec.pods {
                for c in &p.containers {
                    real.add_container(&p.uid, &c.id)?;
                }
            }
            Some(real)
        }
        _ => None,
    };
    let cgroup_root = real.as_ref().map_or(tree.root.clone(), |r| r.root.clone());
    let api = FakeApiServer::start(dir.path()).await?;
    let now = kubelet::now_secs();
    let kubeconfig = api.kubeconfig(dir.path(), "agent.kubeconfig")?;
    let k = kubelet::start(spec.clone(), "tok", dir.path()).await?;
    let token = dir.path().join("token");
    std::fs::write(&token, "tok")?;
    let agg = start_aggregator(dir.path(), &[]).await?;
    let source = std::env::var("SOURCE").unwrap_or_else(|_| "cgroup".into());
    let agent_bin = binary("metrics-agent");
    let in_cluster = match std::env::var("API").as_deref() {
        Ok("in-cluster") => true,
        Ok("kubeconfig") | Err(_) => false,
        Ok(other) => anyhow::bail!("API={other}: expected in-cluster or kubeconfig"),
    };
    println!(
        "pods={pods} containers={} source={source} api={} (cgroup tree: {}, systemd, containerd)",
        pods * 2,
        if in_cluster {
            "in-cluster"
        } else {
            "kubeconfig"
        },
        real.as_ref()
            .map_or("fake v2 in a temp dir".to_owned(), |r| format!(
                "real {}",
                r.hierarchy
            ))
    );
    println!("resolution  measured_s  agent_mcpu  cpu_per_period_us  rss_mib  pods_served");
    for (resolution, seconds) in plan.into_iter().filter(|(_, s)| *s > 0) {
        let node_name = format!("bench-{resolution}s");
        for o in kubelet::api_pods(&spec, &node_name, now) {
            api.apply("pods", o);
        }
        let flags = [
            k.agent_flags(&token),
            vec![
                format!("--source={source}"),
                format!("--cgroup-root={}", cgroup_root.display()),
                format!("--aggregator={}", agg.grpc_url()),
                format!("--aggregator-ca-file={}", agg.ca.display()),
                format!("--metric-resolution={resolution}s"),
            ],
        ]
        .concat();
        let mut agent = if in_cluster {
            let api = InCluster {
                api: api.addr,
                ca_file: &api.ca_file,
                token: &api.admin_token,
                agent: &agent_bin,
            };
            start_agent_in_cluster(dir.path(), &node_name, &flags, &api)?
        } else {
            let with_kubeconfig = [
                flags,
                vec![format!("--kubeconfig={}", kubeconfig.display())],
            ];
            start_agent(dir.path(), &node_name, &with_kubeconfig.concat())?
        };
        let pid = agent
            .child
            .id()
            .ok_or_else(|| anyhow::anyhow!("agent exited"))?;
        let log = agent.log.clone();
        // Warm up: connection, first /pods fetch, two samples.
        tokio::time::sleep(Duration::from_secs(resolution * 2 + 1)).await;
        let (c0, t0) = (cpu_ns(pid), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (c1, elapsed) = (cpu_ns(pid), t0.elapsed().as_secs_f64());
        if c1 == 0 {
            anyhow::bail!(
                "the agent is not running; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        // What the agent's reports gave the aggregator: every pod, unless
        // readings were dropped.
        let served = agg.list_names("pods").await.map_or(0, |p| p.len());
        // And the agent watched its pods through the API, however started.
        let watched = |r: &String| r.contains("spec.nodeName") && r.contains(&node_name);
        if !api.requests().iter().any(watched) {
            anyhow::bail!(
                "the agent never asked the API for its pods; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let used = (c1 - c0) as f64;
        let periods = elapsed / resolution as f64;
        println!(
            "{:>9}s  {:>10.1}  {:>10.3}  {:>17.0}  {:>7.1}  {:>11}",
            resolution,
            elapsed,
            used / elapsed / 1e6,
            used / periods / 1e3,
            rss_kib(pid) as f64 / 1024.0,
            served
        );
        agent.kill().await;
    }
    Ok(())
}
