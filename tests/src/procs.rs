//! Spawning the real `metrics-aggregator` and `metrics-agent` binaries on
//! 127.0.0.1, and running the real `kubectl` against them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Directory of the binaries built with the same profile as this test.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> or target/<profile>/<harness> → target/<profile>
    let dir = exe.parent().unwrap_or(Path::new("target/debug"));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Builds both binaries once per test process and returns the path of `name`;
/// with `METRICS_BIN_DIR` set, takes them from there unbuilt (to measure
/// another build side by side).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("METRICS_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = bin_dir();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "metrics-agent",
            "-p",
            "metrics-aggregator",
            "--bins",
        ]);
        // target/<profile>: the same profile (`release`, `dist`, ...).
        if let Some(profile) = dir.file_name().filter(|n| *n != "debug") {
            cmd.arg("--profile").arg(profile);
        }
        cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build exited with {s}")),
            Err(e) => Err(format!("running cargo: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("building the binaries failed: {e}");
    }
    dir.join(name)
}

/// A child process that is killed when dropped; its stderr goes to a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// The process's log so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGKILL and waits.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Spawns `bin`; stdout is piped only when the caller reads it.
/// A command every binary of this test process is started through (the
/// binary and its arguments follow it), e.g. a sandbox.
static WRAPPER: OnceLock<Vec<String>> = OnceLock::new();

/// Starts every later binary of this test process through `wrapper`; the
/// first call wins.
pub fn run_binaries_through(wrapper: Vec<String>) {
    let _ = WRAPPER.set(wrapper);
}

fn spawn(bin: &str, args: &[String], log: &Path, stdout: Stdio) -> anyhow::Result<Child> {
    let log_file = std::fs::File::create(log)?;
    let mut cmd = match WRAPPER.get().and_then(|w| w.split_first()) {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(binary(bin));
            c
        }
        None => Command::new(binary(bin)),
    };
    cmd.args(args);
    run_logged(cmd, args, log_file, stdout).with_context(|| format!("spawning {bin}"))
}

/// Starts `cmd` (whose binary takes `args`) with its stderr in `log_file`,
/// logging at `info` unless given a klog verbosity to follow, killed when
/// dropped.
fn run_logged(
    mut cmd: Command,
    args: &[String],
    log_file: std::fs::File,
    stdout: Stdio,
) -> std::io::Result<Child> {
    if args.iter().any(|a| a.starts_with("--v=")) {
        cmd.env_remove("RUST_LOG");
    } else {
        cmd.env("RUST_LOG", "info");
    }
    cmd.env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
}

/// A running aggregator and what it takes to reach it.
pub struct AggregatorProc {
    pub proc: Proc,
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    /// Its serving certificate (self-signed).
    pub ca: PathBuf,
    /// A kubeconfig for kubectl pointing at its API.
    pub kubeconfig: PathBuf,
}

impl AggregatorProc {
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.grpc)
    }
    pub fn api_url(&self) -> String {
        format!("https://{}", self.api)
    }

    /// Flags that point an agent at this aggregator (trusting its
    /// certificate, reporting every second), with `token` as its
    /// ServiceAccount token file when given.
    pub fn agent_flags(&self, token: Option<&Path>) -> Vec<String> {
        let mut flags = vec![
            format!("--aggregator={}", self.grpc_url()),
            format!("--aggregator-ca-file={}", self.ca.display()),
            "--metric-resolution=1s".into(),
        ];
        if let Some(t) = token {
            flags.push(format!("--aggregator-token-file={}", t.display()));
        }
        flags
    }

    /// A connected gRPC channel to the ingest port, trusting its certificate.
    pub async fn grpc_channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let tls = metrics_proto::tls::client_config(
            metrics_proto::tls::Verify::CaFile(&self.ca),
            &[b"h2"],
        )?;
        Ok(
            metrics_proto::channel::Dialer::new(&self.grpc_url(), Some(tls))?
                .connect()
                .await?,
        )
    }

    /// Every object of a `Peer.Query` answer (all its chunks), sending
    /// `token` as the bearer token when given.
    pub async fn peer_query(
        &self,
        req: metrics_proto::v1::QueryRequest,
        token: Option<&str>,
    ) -> Result<Vec<metrics_proto::v1::RenderedObject>, tonic::Status> {
        let channel = self
            .grpc_channel()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(req);
        if let Some(t) = token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("token"))?;
            req.metadata_mut().insert("authorization", v);
        }
        let mut chunks = metrics_proto::v1::peer_client::PeerClient::new(channel)
            .query(req)
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            out.extend(chunk.objects);
        }
        Ok(out)
    }

    /// The value of one series of its `/metrics` (name and labels exactly
    /// as exposed), asked anonymously; `None` when absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let url = format!("{}/metrics", self.api_url());
        let (_, _, body) = crate::https::get(&url, &self.ca, &[]).await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Names of the items of the list at `path` under
    /// `/apis/metrics.k8s.io/v1beta1/`, asked anonymously; `None` unless
    /// the answer is a 200 list.
    pub async fn list_names(&self, path: &str) -> Option<Vec<String>> {
        let url = format!("{}/apis/metrics.k8s.io/v1beta1/{path}", self.api_url());
        let (code, _, body) = crate::https::get(&url, &self.ca, &[]).await.ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(
            v["items"]
                .as_array()?
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
                .collect(),
        )
    }
}

fn parse_addr(line: &str, key: &str) -> anyhow::Result<SocketAddr> {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .ok_or_else(|| anyhow!("no {key} in {line:?}"))?;
    Ok(v.parse()?)
}

/// Starts an anonymous loopback aggregator in `dir` with `extra` flags.
pub async fn start_aggregator(dir: &Path, extra: &[&str]) -> anyhow::Result<AggregatorProc> {
    start_aggregator_with(dir, true, extra).await
}

/// Starts a loopback aggregator with delegated authentication (flags such
/// as `--kubeconfig` in `extra`).
pub async fn start_secure_aggregator(dir: &Path, extra: &[&str]) -> anyhow::Result<AggregatorProc> {
    start_aggregator_with(dir, false, extra).await
}

async fn start_aggregator_with(
    dir: &Path,
    anonymous: bool,
    extra: &[&str],
) -> anyhow::Result<AggregatorProc> {
    let cert_dir = dir.join("certs");
    let mut args: Vec<String> = vec![
        "--bind-address=127.0.0.1".into(),
        format!("--cert-dir={}", cert_dir.display()),
    ];
    if anonymous {
        args.push("--insecure-allow-anonymous".into());
    }
    // OS-chosen ports unless the caller names them.
    for flag in ["--secure-port", "--grpc-port"] {
        if !extra.iter().any(|e| e.starts_with(flag)) {
            args.push(format!("{flag}=0"));
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = dir.join("aggregator.log");
    let mut child = spawn("metrics-aggregator", &args, &log, Stdio::piped())?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("metrics-aggregator listening") {
                return Ok(line);
            }
        }
        bail!(
            "aggregator exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })
    .await
    .context("aggregator did not report its ports")??;
    // Keep reading so later output never meets a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let api = parse_addr(&line, "api=")?;
    let grpc = parse_addr(&line, "grpc=")?;
    // The serving certificate: the one given, else the generated one.
    let ca = extra
        .iter()
        .find_map(|e| e.strip_prefix("--tls-cert-file="))
        .map_or_else(|| cert_dir.join("apiserver.crt"), PathBuf::from);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_text(&format!("https://{api}"), &ca))?;
    Ok(AggregatorProc {
        proc: Proc { child, log },
        api,
        grpc,
        ca,
        kubeconfig,
    })
}

/// A kubeconfig trusting `ca` for `server`.
pub fn kubeconfig_text(server: &str, ca: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server}\n    certificate-authority: {}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: u\ncurrent-context: t\nusers:\n- name: u\n  user:\n    username: test\n",
        ca.display()
    )
}

/// A kubeconfig trusting `ca` for `server` whose user authenticates with
/// `user` (kubeconfig `user:` fields, e.g. `token: T` or
/// `client-certificate: C` + `client-key: K`).
pub fn kubeconfig_as(server: &str, ca: &Path, user: &[(&str, &str)]) -> String {
    let mut text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server}\n    certificate-authority: {}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: u\ncurrent-context: t\nusers:\n- name: u\n  user:\n",
        ca.display()
    );
    for (k, v) in user {
        text.push_str(&format!("    {k}: {v}\n"));
    }
    text
}

/// Starts an agent for `node` with `args` (flags beyond the node name).
pub fn start_agent(dir: &Path, node: &str, args: &[String]) -> anyhow::Result<Proc> {
    let log = dir.join(format!("agent-{node}.log"));
    let mut all = vec![format!("--node-name={node}")];
    // Never the Kubernetes API of whatever machine runs the tests.
    if !args.iter().any(|a| a.starts_with("--kubeconfig")) {
        all.push("--no-api".into());
    }
    all.extend(args.iter().cloned());
    let child = spawn("metrics-agent", &all, &log, Stdio::null())?;
    Ok(Proc { child, log })
}

/// Where an agent started by [`start_agent_in_cluster`] finds the API, as a
/// pod does: the service's address and the pod's service-account files.
pub struct InCluster<'a> {
    pub api: SocketAddr,
    pub ca_file: &'a Path,
    pub token: &'a str,
    /// The agent binary to start.
    pub agent: &'a Path,
}

/// The in-cluster service-account directory an agent reads (`/var/run`
/// is a link to `/run`).
const SERVICE_ACCOUNT_DIR: &str = "/run/secrets/kubernetes.io/serviceaccount";

/// Starts an agent for `node` configured as in a pod (no kubeconfig:
/// `KUBERNETES_SERVICE_HOST`/`_PORT` and the service-account token and CA
/// at their fixed path), for harnesses that measure the agent as deployed.
/// The files are put on a tmpfs over `/run` in a mount namespace of the
/// agent's own, so the host's `/run` is neither seen nor changed. Needs
/// root and util-linux's `unshare`; the agent keeps the launcher's pid.
pub fn start_agent_in_cluster(
    dir: &Path,
    node: &str,
    args: &[String],
    api: &InCluster<'_>,
) -> anyhow::Result<Proc> {
    let log = dir.join(format!("agent-{node}.log"));
    // $1 CA file, $2 token, $3 host, $4 port, $5 agent, then its flags.
    let script = format!(
        "set -e; mount -t tmpfs -o mode=0755 tmpfs /run; \
         mkdir -p {SERVICE_ACCOUNT_DIR}; \
         cp \"$1\" {SERVICE_ACCOUNT_DIR}/ca.crt; \
         printf %s \"$2\" > {SERVICE_ACCOUNT_DIR}/token; \
         echo default > {SERVICE_ACCOUNT_DIR}/namespace; \
         export KUBERNETES_SERVICE_HOST=\"$3\" KUBERNETES_SERVICE_PORT=\"$4\"; \
         shift 4; exec \"$@\""
    );
    let log_file = std::fs::File::create(&log)?;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(api.ca_file)
    .arg(api.token)
    .arg(api.api.ip().to_string())
    .arg(api.api.port().to_string())
    .arg(api.agent)
    .arg(format!("--node-name={node}"))
    .args(args);
    let child = run_logged(cmd, args, log_file, Stdio::null())
        .context("spawning the agent through unshare")?;
    Ok(Proc { child, log })
}

/// Output of one kubectl run.
#[derive(Debug)]
pub struct KubectlOut {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `kubectl` with `kubeconfig`. Panics when kubectl is not
/// installed: `.ci/run` installs it, and these tests must not skip.
pub async fn kubectl(kubeconfig: &Path, args: &[&str]) -> KubectlOut {
    let out = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) => KubectlOut {
            success: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Err(e) => panic!("kubectl is required for this test (install kubernetes-client): {e}"),
    }
}

/// Plain-HTTP GET of `path` on `addr` (the agent's metrics port).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await?;
    Ok(out)
}

/// Address the agent logged for its metrics server.
pub fn agent_metrics_addr(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("serving agent metrics"))?;
    let start = line.find("Some(")? + 5;
    let end = start + line[start..].find(')')?;
    line[start..end].parse().ok()
}

/// Lowest port a free port is picked from.
const FIRST_PICKED_PORT: u16 = 10_000;

/// Ports [`free_port`] has handed out in this process.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free port on 127.0.0.1 for a process that must be told its port
/// before it starts (replicas listing each other). Picked at random below
/// the kernel's ephemeral range and checked free: a port the OS hands out
/// for `:0` comes from that range, and between its release here and the
/// process's bind, any outgoing connection (a load test opens hundreds)
/// could be given it as its own. Never the same port twice in one process:
/// the check releases the port at once, so two replicas (or a replica's
/// API and gRPC ports) picked one after the other could otherwise both be
/// given it, and the second to bind would fail.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let port = pick_port(&handed_out);
    handed_out.push(port);
    port
}

fn pick_port(handed_out: &[u16]) -> u16 {
    use std::hash::BuildHasher;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if let Some(span) = ephemeral_low
        .checked_sub(FIRST_PICKED_PORT)
        .filter(|s| *s > 0)
    {
        for attempt in 0..1_000u32 {
            let r = std::collections::hash_map::RandomState::new().hash_one(attempt);
            let port = FIRST_PICKED_PORT + (r % u64::from(span)) as u16;
            if !handed_out.contains(&port)
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                return port;
            }
        }
    }
    // The OS's own pick, skipping ports already handed out: each one
    // skipped stays bound until a port is found, so the OS picks another.
    let mut skipped = Vec::new();
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no free port: {e}"))
            .port();
        if !handed_out.contains(&port) {
            return port;
        }
        skipped.push(listener);
    }
}

/// A self-signed certificate for 127.0.0.1 shared by several replicas:
/// (certificate path, key path) in `dir`.
pub fn shared_cert(dir: &Path) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap_or_else(|e| panic!("certificate: {e}"));
    let (cert, key) = (dir.join("shared.crt"), dir.join("shared.key"));
    std::fs::write(&cert, c.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    (cert.display().to_string(), key.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Picked at random from about 22,000 ports, 500 picks would repeat
    /// one almost surely (without the record of ports handed out, a repeat
    /// came at the 178th pick); handed out once each, none repeats.
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..500 {
            let port = free_port();
            assert!(seen.insert(port), "pick {i}: port {port} handed out twice");
        }
    }
}
