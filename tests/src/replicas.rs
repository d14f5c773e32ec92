//! A set of anonymous loopback aggregator replicas that list each other
//! with `--peers`, share one certificate, and keep their ports across a
//! restart (so agents and peers find a restarted replica again).

use std::path::PathBuf;

use crate::procs::{free_port, shared_cert, start_aggregator, AggregatorProc};

/// The replicas' fixed identity: IDs, ports and certificate.
pub struct ReplicaSet {
    pub dir: PathBuf,
    pub ids: Vec<String>,
    pub grpc_ports: Vec<u16>,
    /// The gRPC port each replica is listed under in `--peers` (its own,
    /// unless a test puts a proxy in front of it).
    pub grpc_advertised: Vec<u16>,
    pub api_ports: Vec<u16>,
    /// (certificate, key) shared by every replica; the certificate is also
    /// the CA agents and clients trust.
    pub cert: (String, String),
    /// Replication factor.
    pub replication: usize,
    /// Flags every replica gets beyond identity, peers and certificate.
    pub extra: Vec<String>,
}

impl ReplicaSet {
    /// `n` replicas `agg-0..` with replication `r`, under `dir`.
    pub fn new(dir: &std::path::Path, n: usize, r: usize, extra: &[&str]) -> Self {
        let grpc_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        Self {
            dir: dir.to_owned(),
            ids: (0..n).map(|i| format!("agg-{i}")).collect(),
            grpc_advertised: grpc_ports.clone(),
            grpc_ports,
            api_ports: (0..n).map(|_| free_port()).collect(),
            cert: shared_cert(dir),
            replication: r,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// gRPC URL replica `i` is listed under.
    pub fn grpc_url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.grpc_advertised[i])
    }

    /// The `--peers` flag listing every replica.
    pub fn peers_flag(&self) -> String {
        let list: Vec<String> = (0..self.ids.len())
            .map(|i| format!("{}={}", self.ids[i], self.grpc_url(i)))
            .collect();
        format!("--peers={}", list.join(","))
    }

    /// Starts (or restarts) replica `i`.
    pub async fn start(&self, i: usize) -> anyhow::Result<AggregatorProc> {
        let dir = self.dir.join(&self.ids[i]);
        std::fs::create_dir_all(&dir)?;
        let mut args = vec![
            format!("--shard-id={}", self.ids[i]),
            self.peers_flag(),
            format!("--replication-factor={}", self.replication),
            format!("--grpc-port={}", self.grpc_ports[i]),
            format!("--secure-port={}", self.api_ports[i]),
            format!("--tls-cert-file={}", self.cert.0),
            format!("--tls-private-key-file={}", self.cert.1),
        ];
        args.extend(self.extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        start_aggregator(&dir, &args).await
    }

    /// Simulated agents for `shape` reporting every `period`, bootstrapped
    /// from every replica and trusting the shared certificate.
    pub fn fleet(
        &self,
        shape: crate::load::workload::Shape,
        period: std::time::Duration,
    ) -> anyhow::Result<crate::load::fleet::Fleet> {
        let tls = metrics_proto::tls::client_config(
            metrics_proto::tls::Verify::CaFile(std::path::Path::new(&self.cert.0)),
            &[b"h2"],
        )?;
        let bootstrap = (0..self.ids.len()).map(|i| self.grpc_url(i)).collect();
        // Every report answered.
        Ok(crate::load::fleet::Fleet::start(
            shape, period, bootstrap, tls, false,
        ))
    }

    /// Starts every replica.
    pub async fn start_all(&self) -> anyhow::Result<Vec<AggregatorProc>> {
        let mut out = Vec::with_capacity(self.ids.len());
        for i in 0..self.ids.len() {
            out.push(self.start(i).await?);
        }
        Ok(out)
    }
}
