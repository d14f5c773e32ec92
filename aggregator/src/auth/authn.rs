//! The authentication chain of k8s.io/apiserver's delegating authenticator:
//! front-proxy certificate + identity headers, then client certificate, then
//! bearer token (TokenReview); the first success wins, a failure with no
//! success is 401, and no credentials at all is `system:anonymous`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;
use rustls::pki_types::CertificateDer;

use super::config::AuthConfig;
use super::request_header::{strip, user_from_headers};
use super::token::{TokenReviewer, TokenVerdict};
use super::user::User;
use super::x509::subject_user;

/// Why a request with credentials was not authenticated; logged, never sent.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Unauthenticated(pub Vec<String>);

/// The chain, with a configuration that watchers can swap at run time.
pub struct Authenticator {
    config: ArcSwap<AuthConfig>,
    tokens: Option<TokenReviewer>,
}

/// The bearer token of an `Authorization` header, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Authenticator {
    pub fn new(config: AuthConfig, tokens: Option<TokenReviewer>) -> Self {
        Self {
            config: ArcSwap::from_pointee(config),
            tokens,
        }
    }

    /// Replaces the trusted CAs and header names (ConfigMap or flag change).
    pub fn set_config(&self, config: AuthConfig) {
        self.config.store(Arc::new(config));
    }

    /// Authenticates a request presenting `chain` (leaf first; empty when
    /// no client certificate) and `headers`. Identity headers and the
    /// `Authorization` header are removed from `headers` in every case.
    pub async fn authenticate(
        &self,
        chain: &[CertificateDer<'static>],
        headers: &mut HeaderMap,
    ) -> Result<User, Unauthenticated> {
        let cfg = self.config.load_full();
        let mut errors = Vec::new();
        let mut found = None;
        if let (Some(rh), Some(leaf)) = (&cfg.request_header, chain.first()) {
            match rh.ca.verify(chain).and_then(|()| subject_user(leaf)) {
                Ok(proxy)
                    if !rh.allowed_names.is_empty() && !rh.allowed_names.contains(&proxy.name) =>
                {
                    errors.push(format!(
                        "x509: subject with cn={} is not in the allowed list",
                        proxy.name
                    ));
                }
                Ok(_) => found = user_from_headers(rh, headers),
                Err(e) => errors.push(format!("front-proxy: {e}")),
            }
        }
        strip(cfg.request_header.as_ref(), headers);
        if found.is_none() {
            if let (Some(ca), Some(leaf)) = (&cfg.client_ca, chain.first()) {
                match ca.verify(chain).and_then(|()| subject_user(leaf)) {
                    Ok(u) if !u.name.is_empty() => found = Some(u),
                    Ok(_) => errors.push("client certificate without a common name".into()),
                    Err(e) => errors.push(format!("client certificate: {e}")),
                }
            }
        }
        let token = bearer(headers).map(str::to_owned);
        headers.remove(http::header::AUTHORIZATION);
        if found.is_none() {
            if let Some(token) = token {
                match &self.tokens {
                    None => errors.push("bearer tokens are not accepted here".into()),
                    Some(reviewer) => match reviewer.review(&token).await {
                        Ok(TokenVerdict::Authenticated(u)) => found = Some(u),
                        Ok(TokenVerdict::Rejected(why)) => {
                            errors.push(format!("invalid bearer token: {why}"))
                        }
                        Err(e) => errors.push(e.to_string()),
                    },
                }
            }
        }
        match found {
            Some(u) => Ok(u.with_authenticated_group()),
            None if errors.is_empty() => Ok(User::anonymous()),
            None => Err(Unauthenticated(errors)),
        }
    }
}
