//! Replica membership from the EndpointSlices of the aggregator's headless
//! Service, kept by a kube-runtime reflector: every endpoint not marked
//! unready is a member, named by its Pod (the default `--shard-id`), reached
//! by its stable DNS name when it has a hostname (StatefulSet), else by its
//! address, on the slice's port named `--peers-port-name`.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{reflector, WatchStreamExt};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::shard::{Shard, SharedShard};

/// The headless Service whose endpoints are the replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadlessService {
    pub namespace: String,
    pub name: String,
    /// Name of the gRPC port in the slices.
    pub port_name: String,
}

impl HeadlessService {
    /// `NAME` (in `default_namespace`) or `NAMESPACE/NAME`.
    pub fn parse(s: &str, default_namespace: &str, port_name: &str) -> Option<Self> {
        let (namespace, name) = match s.split_once('/') {
            Some((ns, n)) => (ns, n),
            None => (default_namespace, s),
        };
        (!namespace.is_empty() && !name.is_empty()).then(|| HeadlessService {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port_name: port_name.to_owned(),
        })
    }
}

/// The members (ID → gRPC URL) the slices describe, sorted by ID.
pub fn members<'a>(
    svc: &HeadlessService,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<(String, String)> {
    let mut out = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(svc.port_name.as_str()))
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let host = match &ep.hostname {
                Some(h) if !h.is_empty() => format!("{h}.{}.{}.svc", svc.name, svc.namespace),
                _ => match ep.addresses.first() {
                    Some(a) if a.contains(':') => format!("[{a}]"),
                    Some(a) => a.clone(),
                    None => continue,
                },
            };
            let id = ep
                .target_ref
                .as_ref()
                .and_then(|t| t.name.clone())
                .or_else(|| ep.hostname.clone())
                .unwrap_or_else(|| host.clone());
            out.entry(id)
                .or_insert_with(|| format!("https://{host}:{port}"));
        }
    }
    out.into_iter().collect()
}

fn resource_version(slice: &EndpointSlice) -> u64 {
    slice
        .resource_version()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// Follows the slices until `cancel` fires, swapping in each changed
/// member list with the newest resourceVersion seen as its generation.
pub async fn watch(
    client: kube::Client,
    svc: HeadlessService,
    shared: SharedShard,
    cancel: CancellationToken,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &svc.namespace);
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", svc.name));
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, config)).default_backoff();
    futures::pin_mut!(stream);
    let mut generation = 0u64;
    let mut synced = false;
    let mut failing = false;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = stream.next() => e,
        };
        match event {
            None => return,
            Some(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, service = %svc.name, "watching EndpointSlices; keeping the current replica set");
                }
                failing = true;
                continue;
            }
            Some(Ok(ev)) => {
                failing = false;
                match &ev {
                    Event::Apply(s) | Event::Delete(s) | Event::InitApply(s) => {
                        generation = generation.max(resource_version(s));
                    }
                    Event::Init => synced = false,
                    Event::InitDone => synced = true,
                }
            }
        }
        if !synced {
            continue;
        }
        let state = reader.state();
        let list = members(&svc, state.iter().map(|s| s.as_ref()));
        let current = shared.get();
        if list == current.members {
            continue;
        }
        if list.is_empty() {
            tracing::warn!(service = %svc.name, "no ready replicas in the EndpointSlices; keeping the current replica set");
            continue;
        }
        let next = Shard::with_generation(
            current.self_id.clone(),
            list,
            current.replication(),
            generation,
        );
        tracing::info!(
            version = next.map.version,
            generation,
            members = next.members.len(),
            listed = next.is_member(),
            "replica set changed"
        );
        shared.set(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn ep(pod: &str, addr: &str, hostname: Option<&str>, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![addr.to_owned()],
            hostname: hostname.map(str::to_owned),
            conditions: Some(EndpointConditions {
                ready,
                ..EndpointConditions::default()
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        }
    }

    fn slice(port: i32, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(vec![
                EndpointPort {
                    name: Some("https".into()),
                    port: Some(10250),
                    ..EndpointPort::default()
                },
                EndpointPort {
                    name: Some("grpc".into()),
                    port: Some(port),
                    ..EndpointPort::default()
                },
            ]),
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn members_from_slices() {
        let svc =
            HeadlessService::parse("kube-system/metrics-aggregator-peers", "x", "grpc").unwrap();
        let slices = vec![
            slice(
                10251,
                vec![
                    ep(
                        "metrics-aggregator-0",
                        "10.0.0.5",
                        Some("metrics-aggregator-0"),
                        Some(true),
                    ),
                    ep(
                        "metrics-aggregator-1",
                        "10.0.0.6",
                        Some("metrics-aggregator-1"),
                        None,
                    ),
                    ep(
                        "metrics-aggregator-2",
                        "10.0.0.7",
                        Some("metrics-aggregator-2"),
                        Some(false),
                    ),
                ],
            ),
            slice(7000, vec![ep("other", "fd00::1", None, Some(true))]),
        ];
        assert_eq!(
            members(&svc, &slices),
            vec![
                (
                    "metrics-aggregator-0".to_owned(),
                    "https://metrics-aggregator-0.metrics-aggregator-peers.kube-system.svc:10251"
                        .to_owned()
                ),
                (
                    "metrics-aggregator-1".to_owned(),
                    "https://metrics-aggregator-1.metrics-aggregator-peers.kube-system.svc:10251"
                        .to_owned()
                ),
                ("other".to_owned(), "https://[fd00::1]:7000".to_owned()),
            ]
        );
        let no_port = vec![EndpointSlice {
            ports: None,
            ..slice(1, vec![ep("a", "10.0.0.1", None, None)])
        }];
        assert!(members(&svc, &no_port).is_empty());
        assert_eq!(
            HeadlessService::parse("peers", "monitoring", "grpc")
                .unwrap()
                .namespace,
            "monitoring"
        );
        assert!(HeadlessService::parse("ns/", "x", "grpc").is_none());
    }
}
