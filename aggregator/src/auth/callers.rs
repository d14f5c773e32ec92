//! Who may use the gRPC port: a projected ServiceAccount token in the call's
//! metadata (`authorization: Bearer …`), checked with TokenReview for the
//! aggregator's audience, from an allowed ServiceAccount. Agents send node
//! reports (with a token bound to a node, only for that node); peer replicas
//! send queries.

use tonic::metadata::MetadataMap;
use tonic::Status;

use super::token::{TokenReviewer, TokenVerdict};

/// The `extra` key kube-apiserver sets on tokens bound to a pod on a node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// What callers of a service do, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Agents streaming node reports.
    Reports,
    /// Peer replicas querying this one.
    PeerQueries,
}

impl Purpose {
    fn action(self) -> &'static str {
        match self {
            Purpose::Reports => "send node reports",
            Purpose::PeerQueries => "query this replica",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Purpose::Reports => "--aggregator-token-file",
            Purpose::PeerQueries => "--peer-token-file",
        }
    }
}

/// A bearer token, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// An accepted caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `system:serviceaccount:NS:NAME`.
    pub user: String,
    /// The node the token is bound to, when it is.
    pub node: Option<String>,
    /// The token it presented, for later re-checks.
    pub token: Token,
}

/// Checks the callers of one gRPC service.
pub struct CallerAuth {
    reviewer: TokenReviewer,
    /// Allowed user names (`system:serviceaccount:NS:NAME`).
    users: Vec<String>,
    purpose: Purpose,
}

/// The bearer token of gRPC metadata, if any.
fn bearer(md: &MetadataMap) -> Option<String> {
    let v = md.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

impl CallerAuth {
    /// `accounts` as `NAMESPACE/NAME`.
    pub fn new(reviewer: TokenReviewer, accounts: &[String], purpose: Purpose) -> Self {
        let users = accounts
            .iter()
            .filter_map(|a| a.split_once('/'))
            .map(|(ns, name)| format!("system:serviceaccount:{ns}:{name}"))
            .collect();
        Self {
            reviewer,
            users,
            purpose,
        }
    }

    /// The caller behind a call's metadata, or the gRPC status to refuse
    /// it with.
    pub async fn check(&self, md: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer(md).ok_or_else(|| {
            Status::unauthenticated(format!(
                "missing bearer token: callers authenticate with a ServiceAccount token ({})",
                self.purpose.flag()
            ))
        })?;
        self.review(token).await
    }

    /// Reviews a long-lived caller's token again: the status to end its
    /// stream with once the token is no longer valid (expired, or its pod
    /// deleted) or names someone else.
    pub async fn recheck(&self, caller: &Caller) -> Result<(), Status> {
        let again = self.review(caller.token.0.clone()).await?;
        if again.user != caller.user || again.node != caller.node {
            return Err(Status::permission_denied(
                "the stream's token changed identity",
            ));
        }
        Ok(())
    }

    async fn review(&self, token: String) -> Result<Caller, Status> {
        let user = match self.reviewer.review(&token).await {
            Ok(TokenVerdict::Authenticated(u)) => u,
            Ok(TokenVerdict::Rejected(why)) => {
                return Err(Status::unauthenticated(format!("invalid token: {why}")))
            }
            Err(e) => return Err(Status::unavailable(format!("cannot check the token: {e}"))),
        };
        if !self.users.contains(&user.name) {
            return Err(Status::permission_denied(format!(
                "{} may not {} (allowed: {})",
                user.name,
                self.purpose.action(),
                self.users.join(", ")
            )));
        }
        let node = user
            .extra
            .get(NODE_NAME_EXTRA)
            .and_then(|v| v.first())
            .filter(|n| !n.is_empty())
            .cloned();
        Ok(Caller {
            user: user.name,
            node,
            token: Token(token),
        })
    }
}

/// The status that ends a stream whose report names another node.
pub fn wrong_node(caller: &Caller, node: &str) -> Option<Status> {
    match &caller.node {
        Some(bound) if bound != node => Some(Status::permission_denied(format!(
            "{} holds a token bound to node {bound:?} and may not report for node {node:?}",
            caller.user
        ))),
        _ => None,
    }
}
