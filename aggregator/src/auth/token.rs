//! Bearer tokens checked with a TokenReview (authentication.k8s.io/v1),
//! positive and negative answers cached for one TTL, keyed by the token's
//! SHA-256 so tokens themselves are not kept.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::Api;

use super::cache::TtlCache;
use super::user::User;

/// The answer for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVerdict {
    /// The token is valid (for one of the requested audiences).
    Authenticated(User),
    /// The token is not valid; the reason, for logs.
    Rejected(String),
}

/// Calls TokenReview, through a cache.
pub struct TokenReviewer {
    client: kube::Client,
    audiences: Vec<String>,
    cache: TtlCache<[u8; 32], TokenVerdict>,
}

/// A review that could not be made (API unreachable, refused): not cached.
#[derive(Debug, thiserror::Error)]
#[error("TokenReview failed: {0}")]
pub struct ReviewError(#[from] pub kube::Error);

impl TokenReviewer {
    /// Reviews tokens for `audiences` (empty: the API server's own).
    pub fn new(client: kube::Client, audiences: Vec<String>, ttl: Duration) -> Self {
        Self {
            client,
            audiences,
            cache: TtlCache::new(ttl),
        }
    }

    /// Who `token` belongs to; cached answers when fresh.
    pub async fn review(&self, token: &str) -> Result<TokenVerdict, ReviewError> {
        let key: [u8; 32] = {
            let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let mut k = [0u8; 32];
            k.copy_from_slice(d.as_ref());
            k
        };
        if let Some(v) = self.cache.get(&key) {
            return Ok(v);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await?;
        let verdict = verdict(&self.audiences, answer);
        self.cache.insert(key, verdict.clone());
        Ok(verdict)
    }
}

/// Turns a TokenReview answer into a verdict.
fn verdict(wanted: &[String], answer: TokenReview) -> TokenVerdict {
    let Some(status) = answer.status else {
        return TokenVerdict::Rejected("TokenReview without status".into());
    };
    if status.authenticated != Some(true) {
        let why = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "token not authenticated".into());
        return TokenVerdict::Rejected(why);
    }
    if !wanted.is_empty() {
        let got = status.audiences.unwrap_or_default();
        if !got.iter().any(|a| wanted.contains(a)) {
            return TokenVerdict::Rejected(format!(
                "token audiences {got:?} do not include {wanted:?}"
            ));
        }
    }
    let info = status.user.unwrap_or_default();
    let Some(name) = info.username.filter(|n| !n.is_empty()) else {
        return TokenVerdict::Rejected("TokenReview without a user name".into());
    };
    TokenVerdict::Authenticated(User {
        name,
        uid: info.uid.unwrap_or_default(),
        groups: info.groups.unwrap_or_default(),
        extra: info.extra.unwrap_or_default().into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn answer(auth: bool, auds: &[&str]) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(auth),
                audiences: Some(auds.iter().map(|s| s.to_string()).collect()),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:kube-system:metrics-agent".into()),
                    groups: Some(vec!["system:serviceaccounts".into()]),
                    ..UserInfo::default()
                }),
                error: (!auth).then(|| "token has expired".into()),
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn verdicts() {
        let want = vec!["metrics-aggregator".to_owned()];
        assert!(matches!(
            verdict(&want, answer(true, &["metrics-aggregator"])),
            TokenVerdict::Authenticated(u) if u.name.ends_with(":metrics-agent")
        ));
        assert_eq!(
            verdict(&want, answer(false, &[])),
            TokenVerdict::Rejected("token has expired".into())
        );
        assert!(matches!(
            verdict(&want, answer(true, &["https://kubernetes.default.svc"])),
            TokenVerdict::Rejected(m) if m.contains("audiences")
        ));
        assert!(matches!(
            verdict(&[], answer(true, &["https://kubernetes.default.svc"])),
            TokenVerdict::Authenticated(_)
        ));
    }
}
