//! Which agent may report: a projected ServiceAccount token on the stream
//! (`authorization: Bearer …`), checked with TokenReview for the agents'
//! audience, from an allowed ServiceAccount; a token bound to a node may
//! report only for that node.

use tonic::metadata::MetadataMap;
use tonic::Status;

use super::token::{TokenReviewer, TokenVerdict};

/// The `extra` key kube-apiserver sets on tokens bound to a pod on a node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// An accepted agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// `system:serviceaccount:NS:NAME`.
    pub user: String,
    /// The node the token is bound to, when it is.
    pub node: Option<String>,
}

/// Checks agent streams.
pub struct AgentAuth {
    reviewer: TokenReviewer,
    /// Allowed user names (`system:serviceaccount:NS:NAME`).
    users: Vec<String>,
}

impl AgentAuth {
    /// `accounts` as `NAMESPACE/NAME`.
    pub fn new(reviewer: TokenReviewer, accounts: &[String]) -> Self {
        let users = accounts
            .iter()
            .filter_map(|a| a.split_once('/'))
            .map(|(ns, name)| format!("system:serviceaccount:{ns}:{name}"))
            .collect();
        Self { reviewer, users }
    }

    /// The identity behind a stream's metadata, or the gRPC status to end
    /// it with.
    pub async fn check(&self, md: &MetadataMap) -> Result<AgentIdentity, Status> {
        let token = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
            .map(|(_, t)| t.trim().to_owned())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "missing bearer token: agents authenticate with a ServiceAccount token (--aggregator-token-file)",
                )
            })?;
        let user = match self.reviewer.review(&token).await {
            Ok(TokenVerdict::Authenticated(u)) => u,
            Ok(TokenVerdict::Rejected(why)) => {
                return Err(Status::unauthenticated(format!(
                    "invalid agent token: {why}"
                )))
            }
            Err(e) => {
                return Err(Status::unavailable(format!(
                    "cannot check the agent token: {e}"
                )))
            }
        };
        if !self.users.contains(&user.name) {
            return Err(Status::permission_denied(format!(
                "{} may not send node reports (allowed: {})",
                user.name,
                self.users.join(", ")
            )));
        }
        let node = user
            .extra
            .get(NODE_NAME_EXTRA)
            .and_then(|v| v.first())
            .filter(|n| !n.is_empty())
            .cloned();
        Ok(AgentIdentity {
            user: user.name,
            node,
        })
    }

    pub fn reviewer(&self) -> &TokenReviewer {
        &self.reviewer
    }
}

/// The status that ends a stream whose report names another node.
pub fn wrong_node(identity: &AgentIdentity, node: &str) -> Option<Status> {
    match &identity.node {
        Some(bound) if bound != node => Some(Status::permission_denied(format!(
            "{} holds a token bound to node {bound:?} and may not report for node {node:?}",
            identity.user
        ))),
        _ => None,
    }
}
