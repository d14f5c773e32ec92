//! Shared test support: locating `../shared/fixtures`, fake kubelets, and
//! spawning the real binaries on 127.0.0.1.

pub mod fixtures;
