//! Delegated authentication and authorization, as an extension API server
//! behind kube-apiserver's aggregation layer does it.

pub mod args;
pub mod attributes;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod callers;
pub mod config;
pub mod request_header;
pub mod setup;
pub mod token;
pub mod user;
pub mod watch;
pub mod x509;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::pki_types::CertificateDer;

use crate::api::status::ApiError;
use attributes::Attributes;
use authz::Decision;

/// The client certificate chain of a connection (leaf first; empty when
/// the client sent none), put into every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct PeerCerts(pub Arc<[CertificateDer<'static>]>);

/// Both halves, shared by all requests.
pub struct Auth {
    pub authn: Arc<authn::Authenticator>,
    pub authz: authz::Authorizer,
}

/// Middleware: authenticate, authorize, then run the handler.
pub async fn middleware(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let chain = req
        .extensions()
        .get::<PeerCerts>()
        .map(|p| Arc::clone(&p.0))
        .unwrap_or_else(|| Arc::from(Vec::new()));
    let user = match auth.authn.authenticate(&chain, req.headers_mut()).await {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(path = %req.uri().path(), error = %e, "unauthorized request");
            return ApiError::Unauthorized.into_response();
        }
    };
    let attrs = Attributes::from_request(req.method(), req.uri().path(), req.uri().query());
    match auth.authz.authorize(&user, &attrs).await {
        Ok(Decision::Allow) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Ok(Decision::Deny(reason)) => {
            tracing::debug!(user = %user.name, ?attrs, %reason, "forbidden");
            ApiError::Forbidden {
                user: user.name,
                attrs: Box::new(attrs),
                reason,
            }
            .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "authorization failed");
            ApiError::Internal(e.to_string()).into_response()
        }
    }
}
