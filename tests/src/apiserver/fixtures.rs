//! Objects tests put into the stand-in API server.

use serde_json::{json, Value};

/// `kube-system/extension-apiserver-authentication` as kube-apiserver
/// publishes it, trusting `client_ca` for client certificates and
/// `front_proxy_ca` (CN `front-proxy-client`) for the front proxy.
pub fn authentication_configmap(client_ca: &str, front_proxy_ca: &str) -> Value {
    json!({
        "metadata": {"namespace": "kube-system", "name": "extension-apiserver-authentication"},
        "data": {
            "client-ca-file": client_ca,
            "requestheader-client-ca-file": front_proxy_ca,
            "requestheader-allowed-names": "[\"front-proxy-client\"]",
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
            "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
        }
    })
}

/// An EndpointSlice of `service` in kube-system with one ready endpoint:
/// the pod `pod` on 127.0.0.1, port `grpc` named "grpc". One slice per
/// replica lets replicas on one address differ by port.
pub fn endpoint_slice(service: &str, pod: &str, grpc: u16) -> Value {
    json!({
        "metadata": {
            "namespace": "kube-system",
            "name": format!("{service}-{pod}"),
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": ["127.0.0.1"],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": pod},
        }],
        "ports": [{"name": "grpc", "port": grpc, "protocol": "TCP"}],
    })
}
