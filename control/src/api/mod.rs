//! The REST API (`docs/api.md`) and the internal API for agents and relays.
//!
//! # Layout
//! - [`auth`]: callers as extractors (API key, admin, node, relay).
//! - [`body`]: request bodies (one JSON object, errors in the API's shape).
//! - [`sessions`], [`nodes`], [`tenants`]: the public API by resource;
//!   [`grants`]: revoking a session's refresh grants; [`events`]: the
//!   session lifecycle stream.
//! - [`internal`]: agents and relays (`/internal/v1/`).
//! - here: errors as answers, the router, per-address rate limits.
mod auth;
mod body;
mod events;
mod grants;
mod internal;
mod nodes;
mod sessions;
mod tenants;

use auth::{Admin, Caller, NodeCaller, RelayCaller};
use body::{Body, OptionalBody};
use events::*;
use grants::*;
use internal::*;
use nodes::*;
use sessions::*;
use std::sync::Arc;
use std::time::Duration;
use tenants::*;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::Control;
use crate::store::{
    NewAudit, NewSession, NodeState, Principal, Session, SessionStatus, StoreError,
    constant_time_eq, now_ms,
};
use warren_proto::api::{
    CreateSession, Links, Session as ApiSession, SessionList, TokenRequest, TokenResponse,
};
use warren_proto::internal::{
    DesiredSession, GrantRequest, GrantResponse, HeartbeatRequest, HostKeyRequest, JoinRequest,
    JoinResponse, MAX_REPORTED_SESSIONS, RefreshRequest, RefreshResponse, RelayInfo, RouteResponse,
    SshAction, SshAuditEvent, SshAuthorizeRequest, VerifyNodeRequest, WatchQuery, WatchResponse,
};
use warren_proto::is_session_id;
use warren_proto::token::Scope;

/// An error as the API shows it: a stable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 422 `invalid`: a request that parsed but cannot be served as asked.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid API key as Authorization: Bearer <key>",
        )
    }
    fn forbidden(m: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", m)
    }
    fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::QuotaExceeded(m) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", m)
            }
            StoreError::NoCapacity(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", m)
            }
            StoreError::Invalid(m) => ApiError::invalid(m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Revoked(m) => ApiError::new(StatusCode::UNAUTHORIZED, "revoked", m),
            StoreError::Db(e) => {
                tracing::error!("database error: {e}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the control plane's database is not answering; try again",
                )
            }
        }
    }
}

impl From<crate::issuer::SignError> for ApiError {
    fn from(e: crate::issuer::SignError) -> Self {
        tracing::error!("{e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "cannot sign tokens right now",
        )
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(c: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route("/v1/sessions/{id}/token", post(session_token))
        .route("/v1/sessions/{id}/grants", delete(revoke_grants))
        .route("/v1/events", get(event_stream))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/join-tokens", post(join_token))
        .route("/v1/nodes/{id}/{action}", post(node_action))
        .route("/v1/nodes/{id}", delete(remove_node))
        .route("/v1/tenants", post(create_tenant))
        .route("/v1/tenants/{id}/api-keys", post(create_key))
        .route("/v1/audit", get(audit))
        .route(
            "/v1/users/me/ssh-keys",
            post(add_ssh_key).get(list_ssh_keys),
        )
        .route("/v1/users/me/ssh-keys/{id}", delete(delete_ssh_key))
        .route("/v1/ssh/host-keys", get(host_keys))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/internal/v1/join", post(join))
        .route("/internal/v1/heartbeat", post(heartbeat))
        .route("/internal/v1/watch", get(watch))
        .route("/internal/v1/routes/{id}", get(route))
        .route("/internal/v1/nodes/verify", post(verify_node))
        .route("/internal/v1/ssh/authorize", post(ssh_authorize))
        .route("/internal/v1/ssh/audit", post(ssh_audit))
        .route("/internal/v1/ssh/host-key", post(ssh_host_key))
        .route("/internal/v1/tokens/grant", post(grant))
        .route("/internal/v1/tokens/refresh", post(refresh))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::from_fn_with_state(c.clone(), rate_limit))
        .with_state(c)
}

/// The registry an image reference names, if any: its first path component
/// when that looks like a host (a dot, a port, or `localhost`).
pub fn image_registry(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// Per-address limits before any handler: an address that keeps failing
/// authentication, or keeps trying to join, gets 429 without touching the
/// database (each failure would otherwise cost a query and an audit row).
async fn rate_limit(
    State(c): State<Arc<Control>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|ci| ci.0.ip());
    let Some(ip) = ip else {
        return next.run(req).await;
    };
    let ip = crate::limits::client_ip(ip, req.headers());
    let key = crate::limits::address_key(ip);
    // The internal API authenticates nodes and relays itself (and the relay
    // never forwards it): its callers are never locked out by others' guesses.
    let internal = req.uri().path().starts_with("/internal/");
    let too_many = |what: &str| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many {what} from this address; try again in a minute"),
        )
        .into_response()
    };
    if !internal && c.limits.auth_failures.limited(&key) {
        return too_many("failed sign-ins");
    }
    if req.uri().path() == "/internal/v1/join" && !c.limits.joins.allow(&key) {
        return too_many("join attempts");
    }
    let resp = next.run(req).await;
    if !internal && resp.status() == StatusCode::UNAUTHORIZED {
        c.limits.auth_failures.allow(&key);
    }
    resp
}
