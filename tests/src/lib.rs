//! Shared test support: locating `../shared/fixtures`, a fake kubelet, the
//! real binaries on 127.0.0.1, kubectl, and an independent quantity parser.

pub mod apiserver;
pub mod cgroupfs;
pub mod deploy;
pub mod fixtures;
pub mod https;
pub mod kubelet;
pub mod load;
pub mod pki;
pub mod procs;
pub mod procstat;
pub mod proxy;
pub mod quantity;
pub mod realcgroups;
pub mod replicas;
pub mod reports;
pub mod wait;
