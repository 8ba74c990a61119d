//! The REST API (`docs/api.md`) and the internal API for agents and relays.
//!
//! # Layout
//! - [`auth`]: callers as extractors (API key, admin, node, relay).
//! - [`body`]: request bodies (one JSON object, errors in the API's shape).
//! - [`sessions`], [`nodes`], [`tenants`]: the public API by resource;
//!   [`grants`]: revoking a session's refresh grants; [`events`]: the
//!   session lifecycle stream; [`sandbox`]: exec and files in a session;
//!   [`snapshots`]: sessions saved as images.
//! - [`internal`]: agents and relays (`/internal/v1/`).
//! - [`openapi`]: `GET /openapi.json`, from the handlers' annotations.
//! - here: errors as answers, the router, per-address rate limits.
mod auth;
mod body;
mod events;
mod grants;
pub(crate) mod internal;
mod nodes;
mod openapi;
mod recordings;
mod sandbox;
mod sessions;
mod shares;
mod snapshots;
mod tenants;

use auth::{Admin, Caller, NodeCaller, RelayCaller};
use body::{Body, OptionalBody};
use events::*;
use grants::*;
use internal::*;
use nodes::*;
use openapi::*;
use recordings::*;
use sandbox::*;
use sessions::*;
use shares::*;
pub use snapshots::SNAPSHOT_COMMIT_LIMIT_MS;
use snapshots::*;
use std::sync::Arc;
use std::time::Duration;
use tenants::*;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warren_proto::internal::ErrorBody;

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
    SshAction, SshAuditEvent, SshAuthorizeRequest, VerifyNodeRequest, WarmCount, WarmPool,
    WatchQuery, WatchResponse,
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

/// What a caller is told when the database did not answer.
fn db_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the control plane's database is not answering; try again",
    )
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
            // The reason stays in the log; the caller is told to try again.
            StoreError::Unavailable(why) => {
                tracing::warn!("database unavailable: {why}");
                db_unavailable()
            }
            StoreError::Db(e) => {
                tracing::error!("database error: {e}");
                db_unavailable()
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

/// The public API, every route of it in `GET /openapi.json`.
///
/// To add a public route: give its handler a `#[utoipa::path(method, path
/// = "/v1/…", tag = "…", params(…), request_body = …, responses(…))]`
/// naming every status it answers (errors as `body = ErrorBody`), and
/// register it here with `.routes(routes!(handler))`, one `routes!` per
/// path (`routes!(get_x, delete_x)` for two methods of one path). Bodies
/// and answers need `utoipa::ToSchema`. A route added with plain `.route()`
/// would be served but left out of the document; tests/openapi.rs checks
/// the document against the router and docs/api.md.
fn public() -> OpenApiRouter<Arc<Control>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(get_session, delete_session))
        .routes(routes!(session_token))
        .routes(routes!(exec))
        .routes(routes!(get_file, put_file, post_file, delete_file))
        .routes(routes!(create_snapshot))
        .routes(routes!(list_snapshots))
        .routes(routes!(delete_snapshot))
        .routes(routes!(revoke_grants))
        .routes(routes!(create_share))
        .routes(routes!(list_shares))
        .routes(routes!(revoke_share))
        .routes(routes!(list_recordings))
        .routes(routes!(get_recording))
        .routes(routes!(event_stream))
        .routes(routes!(list_nodes))
        .routes(routes!(join_token))
        .routes(routes!(node_action))
        .routes(routes!(remove_node))
        .routes(routes!(create_tenant))
        .routes(routes!(create_key))
        .routes(routes!(audit))
        .routes(routes!(add_ssh_key, list_ssh_keys))
        .routes(routes!(delete_ssh_key))
        .routes(routes!(host_keys))
        .routes(routes!(jwks))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// Agents and relays (`/internal/v1/…`): not public, not in the document.
fn internal() -> Router<Arc<Control>> {
    Router::new()
        .route("/join", post(join))
        .route("/heartbeat", post(heartbeat))
        .route("/watch", get(watch))
        .route("/routes/{id}", get(route))
        .route("/nodes/verify", post(verify_node))
        .route("/ssh/authorize", post(ssh_authorize))
        .route("/ssh/audit", post(ssh_audit))
        .route("/ssh/host-key", post(ssh_host_key))
        .route("/tokens/grant", post(grant))
        .route("/tokens/refresh", post(refresh))
        .route("/recordings/{id}/{terminal}", post(append_recording))
        .route("/sessions/{id}/shares/{share}/joined", post(share_joined))
}

/// The public API's OpenAPI 3.1 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    public().into_openapi()
}

pub fn router(c: Arc<Control>) -> Router {
    let (public, _) = public().split_for_parts();
    public
        .nest("/internal/v1", internal())
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
