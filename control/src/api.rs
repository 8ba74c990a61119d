//! The REST API (CONTRACT.md) and the internal API for agents and relays.
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Control;
use crate::store::{NewSession, Principal, Session, StoreError, now_ms};
use warren_proto::internal::{
    self, DesiredSession, HeartbeatRequest, HostKeyRequest, JoinRequest, JoinResponse, RelayInfo,
    RouteResponse, SshAction, SshAuditEvent, SshAuthorizeRequest, VerifyNodeRequest, WatchQuery,
    WatchResponse,
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
            StoreError::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
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

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn principal(c: &Control, h: &HeaderMap) -> ApiResult<Principal> {
    let key = bearer(h).ok_or_else(ApiError::unauthorized)?;
    if key.len() > 200 {
        return Err(ApiError::unauthorized());
    }
    c.store
        .authenticate(key)
        .await?
        .ok_or_else(ApiError::unauthorized)
}

async fn admin(c: &Control, h: &HeaderMap) -> ApiResult<Principal> {
    let p = principal(c, h).await?;
    if !p.admin {
        return Err(ApiError::forbidden("this needs the operator's admin key"));
    }
    Ok(p)
}

/// A node authenticates with `Authorization: Bearer <node_id>:<credential>`.
async fn node_auth(c: &Control, h: &HeaderMap) -> ApiResult<String> {
    let (node, cred) = bearer(h)
        .and_then(|b| b.split_once(':'))
        .ok_or_else(ApiError::unauthorized)?;
    if c.store.verify_node(node, cred).await? {
        Ok(node.to_string())
    } else {
        Err(ApiError::unauthorized())
    }
}

fn relay_auth(c: &Control, h: &HeaderMap) -> ApiResult<()> {
    let ok = bearer(h).is_some_and(|b| {
        let want = c.cfg.relay_secret.expose();
        b.len() == want.len()
            && b.bytes()
                .zip(want.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

pub fn router(c: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route("/v1/sessions/{id}/token", post(session_token))
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    image: Option<String>,
    memory_mb: Option<i64>,
    cpus: Option<f64>,
    disk_mb: Option<i64>,
    ttl_seconds: Option<i64>,
    idle_timeout_seconds: Option<i64>,
}

#[derive(Serialize)]
struct SessionView {
    id: String,
    tenant: String,
    node: String,
    status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
    image: String,
    memory_mb: i64,
    cpus: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_mb: Option<i64>,
    url: String,
    ssh: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_expires_at: Option<i64>,
    expires_at: i64,
    created_at: i64,
}

impl Control {
    fn view(&self, s: &Session, token: Option<(String, i64)>) -> SessionView {
        let port = self
            .cfg
            .https_port
            .filter(|p| *p != 443)
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let base = format!("https://{}.{}{port}/", s.id, self.cfg.domain);
        let url = match &token {
            Some((t, _)) => format!("{base}?token={t}"),
            None => base,
        };
        let (host, sport) = match self
            .cfg
            .ssh_endpoint
            .as_deref()
            .and_then(|e| e.rsplit_once(':'))
        {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (self.cfg.domain.clone(), "2222".into()),
        };
        SessionView {
            id: s.id.clone(),
            tenant: s.tenant.clone(),
            node: s.node.clone(),
            status: s.status.clone(),
            reason: s.reason.clone(),
            image: s.image.clone(),
            memory_mb: s.memory_mb,
            cpus: s.millicpus as f64 / 1000.0,
            disk_mb: (s.disk_mb > 0).then_some(s.disk_mb),
            url,
            ssh: format!("ssh -p {sport} {}@{host}", s.id),
            token: token.as_ref().map(|t| t.0.clone()),
            token_expires_at: token.map(|t| t.1),
            expires_at: s.expires_at / 1000,
            created_at: s.created_at / 1000,
        }
    }

    async fn owned(&self, p: &Principal, id: &str) -> ApiResult<Session> {
        if !is_session_id(id) {
            return Err(ApiError::not_found(format!("session {id} does not exist")));
        }
        let s = self.store.session(id).await?;
        // Another tenant's session is indistinguishable from no session.
        if !p.admin && s.tenant != p.tenant {
            return Err(ApiError::not_found(format!("session {id} does not exist")));
        }
        Ok(s)
    }
}

async fn create_session(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    body: Result<Json<CreateSession>, JsonRejection>,
) -> ApiResult<Response> {
    let p = principal(&c, &h).await?;
    if !c.limits.creates.allow(&p.tenant) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many sessions created by this tenant in the last minute",
        ));
    }
    let Json(req) = body?;
    let d = &c.cfg.sessions;
    let image = req.image.unwrap_or_else(|| d.image.clone());
    if image.is_empty()
        || image.len() > 255
        || !image
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "._/:@-".contains(ch))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "image must be an image reference",
        ));
    }
    if let Some(registry) = image_registry(&image)
        && !d.allowed_registries.iter().any(|r| r == registry)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "registry_not_allowed",
            format!(
                "images from {registry} are not allowed here (the operator lists registries in sessions.allowed_registries)"
            ),
        ));
    }
    let memory_mb = req.memory_mb.unwrap_or(d.memory_mb as i64);
    if !(16..=1_048_576).contains(&memory_mb) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "memory_mb must be between 16 and 1048576",
        ));
    }
    let cpus = req.cpus.unwrap_or(d.cpus);
    if !(cpus > 0.0 && cpus <= 256.0) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "cpus must be in (0, 256]",
        ));
    }
    let disk_mb = req.disk_mb.unwrap_or(0);
    if disk_mb != 0 && !(64..=4_194_304).contains(&disk_mb) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "disk_mb must be between 64 and 4194304",
        ));
    }
    let ttl = req.ttl_seconds.unwrap_or(d.ttl_secs as i64);
    let idle = req
        .idle_timeout_seconds
        .unwrap_or(d.idle_timeout_secs as i64);
    if !(10..=7 * 86_400).contains(&ttl) || !(10..=7 * 86_400).contains(&idle) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "ttl_seconds and idle_timeout_seconds must be between 10 and 604800",
        ));
    }
    let spec = NewSession {
        image,
        memory_mb,
        millicpus: (cpus * 1000.0) as i64,
        disk_mb,
        ttl_ms: ttl * 1000,
        idle_timeout_ms: idle * 1000,
    };
    let hb = c.cfg.scheduler.heartbeat_timeout_secs as i64 * 1000;
    let s = match c
        .store
        .create_session(&p.tenant, &spec, c.cfg.scheduler.strategy, hb)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            c.store
                .audit(
                    &p.key_id,
                    &p.tenant,
                    "session.create",
                    "-",
                    "refused",
                    &e.to_string(),
                )
                .await;
            return Err(e.into());
        }
    };
    c.changed.notify_waiters();
    c.store
        .audit(
            &p.key_id,
            &p.tenant,
            "session.create",
            &s.id,
            "scheduled",
            &format!("node {} memory {} MB", s.node, s.memory_mb),
        )
        .await;
    // Answer once it runs, or fail clearly after the deadline.
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(c.cfg.sessions.create_timeout_secs);
    let s = loop {
        let s = c.store.session(&s.id).await?;
        match s.status.as_str() {
            "running" => break s,
            "pending" if tokio::time::Instant::now() < deadline => {
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), c.reported.notified()).await;
            }
            "pending" => {
                c.store.stop_session(&s.id, "did not start in time").await?;
                c.changed.notify_waiters();
                c.store
                    .audit(&p.key_id, &p.tenant, "session.create", &s.id, "timeout", "")
                    .await;
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "start_timeout",
                    format!(
                        "session {} did not start within {} s on node {}",
                        s.id, c.cfg.sessions.create_timeout_secs, s.node
                    ),
                ));
            }
            other => {
                c.store
                    .audit(
                        &p.key_id,
                        &p.tenant,
                        "session.create",
                        &s.id,
                        "failed",
                        &s.reason,
                    )
                    .await;
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session_failed",
                    format!("session {} is {other}: {}", s.id, s.reason),
                ));
            }
        }
    };
    let token = c.issuer.mint(&s, &p.key_id, &Scope::claim(&Scope::ALL))?;
    Ok((StatusCode::CREATED, Json(c.view(&s, Some(token)))).into_response())
}

async fn list_sessions(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let p = principal(&c, &h).await?;
    let list = c
        .store
        .sessions(if p.admin { None } else { Some(&p.tenant) })
        .await?;
    Ok(Json(
        json!({"sessions": list.iter().map(|s| c.view(s, None)).collect::<Vec<_>>()}),
    ))
}

async fn get_session(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionView>> {
    let p = principal(&c, &h).await?;
    let s = c.owned(&p, &id).await?;
    Ok(Json(c.view(&s, None)))
}

async fn delete_session(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let p = principal(&c, &h).await?;
    let s = c.owned(&p, &id).await?;
    c.store.stop_session(&s.id, "deleted").await?;
    c.changed.notify_waiters();
    c.store
        .audit(&p.key_id, &s.tenant, "session.delete", &s.id, "ok", "")
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenReq {
    scope: Option<String>,
}

async fn session_token(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let p = principal(&c, &h).await?;
    // The body is optional: none (or `{}`) keeps both scopes, as before.
    let req: TokenReq = if body.iter().all(u8::is_ascii_whitespace) {
        TokenReq::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid JSON body: {e}"),
            )
        })?
    };
    let scopes: &[Scope] = match req.scope.as_deref() {
        None => &Scope::ALL,
        Some(name) => match Scope::parse(name) {
            Some(Scope::Terminal) => &[Scope::Terminal],
            Some(Scope::Preview) => &[Scope::Preview],
            None => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    format!("scope {name:?} is not one of \"terminal\", \"preview\""),
                ));
            }
        },
    };
    let scope = Scope::claim(scopes);
    let scope = scope.as_str();
    let s = c.owned(&p, &id).await?;
    if s.status != "running" && s.status != "pending" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_ended",
            format!("session {id} is {}", s.status),
        ));
    }
    let (token, exp) = c.issuer.mint(&s, &p.key_id, scope)?;
    c.store
        .audit(&p.key_id, &s.tenant, "session.token", &s.id, "ok", scope)
        .await;
    Ok(Json(
        json!({"token": token, "expires_at": exp, "scope": scope}),
    ))
}

async fn list_nodes(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    admin(&c, &h).await?;
    Ok(Json(json!({"nodes": c.store.nodes().await?})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JoinTokenReq {
    ttl_seconds: Option<i64>,
}

async fn join_token(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    body: Option<Json<JoinTokenReq>>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let p = admin(&c, &h).await?;
    let ttl = body.and_then(|b| b.0.ttl_seconds).unwrap_or(3600);
    if !(60..=7 * 86_400).contains(&ttl) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "ttl_seconds must be between 60 and 604800",
        ));
    }
    let token = c.store.create_join_token(ttl * 1000).await?;
    c.store
        .audit(
            &p.key_id,
            &p.tenant,
            "node.join_token",
            "-",
            "ok",
            &format!("ttl {ttl} s"),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": now_ms() / 1000 + ttl})),
    ))
}

async fn node_action(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let p = admin(&c, &h).await?;
    if !matches!(action.as_str(), "drain" | "cordon" | "uncordon") {
        return Err(ApiError::not_found(format!(
            "no node action {action}; use drain, cordon or uncordon"
        )));
    }
    c.store.node_action(&id, &action).await?;
    c.changed.notify_waiters();
    c.store
        .audit(
            &p.key_id,
            &p.tenant,
            &format!("node.{action}"),
            &id,
            "ok",
            "",
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_node(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let p = admin(&c, &h).await?;
    c.store.node_action(&id, "remove").await?;
    c.changed.notify_waiters();
    c.store
        .audit(&p.key_id, &p.tenant, "node.remove", &id, "ok", "")
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantReq {
    name: String,
    max_sessions: Option<i64>,
    max_memory_mb: Option<i64>,
}

async fn create_tenant(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    body: Result<Json<TenantReq>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let p = admin(&c, &h).await?;
    let Json(req) = body?;
    if req.name.trim().is_empty() || req.name.len() > 100 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "name must be 1-100 characters",
        ));
    }
    let ms = req
        .max_sessions
        .unwrap_or(c.cfg.sessions.tenant_max_sessions as i64);
    let mm = req
        .max_memory_mb
        .unwrap_or(c.cfg.sessions.tenant_max_memory_mb as i64);
    if !(0..=1_000_000).contains(&ms) || !(0..=1 << 40).contains(&mm) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "quotas out of range",
        ));
    }
    let t = c.store.create_tenant(&req.name, ms, mm).await?;
    c.store
        .audit(&p.key_id, &t.id, "tenant.create", &t.id, "ok", &req.name)
        .await;
    Ok((StatusCode::CREATED, Json(json!(t))))
}

async fn create_key(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let p = admin(&c, &h).await?;
    c.store.tenant(&id).await?;
    let key = crate::store::random_secret("wk");
    let key_id = c.store.add_api_key(&id, &key, false).await?;
    c.store
        .audit(&p.key_id, &id, "key.create", &key_id, "ok", "")
        .await;
    // Shown once; only its hash is kept.
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": key_id, "tenant": id, "key": key})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SshKeyReq {
    public_key: String,
}

/// Registers a public key for the caller's tenant: it then opens every
/// session of that tenant over SSH.
async fn add_ssh_key(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    body: Result<Json<SshKeyReq>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let p = principal(&c, &h).await?;
    let Json(req) = body?;
    let key = crate::sshkeys::parse(&req.public_key)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m))?;
    let k = c.store.add_ssh_key(&p.tenant, &p.key_id, &key).await?;
    c.store
        .audit(
            &p.key_id,
            &p.tenant,
            "ssh_key.add",
            &k.id,
            "ok",
            &k.fingerprint,
        )
        .await;
    Ok((StatusCode::CREATED, Json(json!(k))))
}

async fn list_ssh_keys(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let p = principal(&c, &h).await?;
    Ok(Json(json!({"keys": c.store.ssh_keys(&p.tenant).await?})))
}

async fn delete_ssh_key(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let p = principal(&c, &h).await?;
    if id.len() > 64 {
        return Err(ApiError::not_found("no such SSH key"));
    }
    c.store.delete_ssh_key(&p.tenant, &id).await?;
    c.store
        .audit(&p.key_id, &p.tenant, "ssh_key.delete", &id, "ok", "")
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The relays' SSH host keys, for users to pin (public, no key needed).
async fn host_keys(State(c): State<Arc<Control>>) -> ApiResult<Json<serde_json::Value>> {
    let keys: Vec<_> = c
        .store
        .host_keys()
        .await?
        .into_iter()
        .map(|(k, fp)| json!({"public_key": k, "fingerprint": fp}))
        .collect();
    Ok(Json(
        json!({"host_keys": keys, "endpoint": c.cfg.ssh_endpoint}),
    ))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
}

async fn audit(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let p = principal(&c, &h).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = c
        .store
        .audit_log(if p.admin { None } else { Some(&p.tenant) }, limit)
        .await?;
    Ok(Json(json!({"entries": entries})))
}

async fn jwks(State(c): State<Arc<Control>>) -> ApiResult<Json<serde_json::Value>> {
    let keys: Vec<_> = c
        .store
        .public_keys()
        .await?
        .into_iter()
        .map(|(kid, x)| json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": x}))
        .collect();
    Ok(Json(json!({"keys": keys})))
}

async fn readyz(State(c): State<Arc<Control>>) -> ApiResult<&'static str> {
    c.store.version().await?;
    Ok("ready\n")
}

async fn metrics(State(c): State<Arc<Control>>) -> ApiResult<String> {
    let nodes = c.store.nodes().await?;
    let mut out = String::from("# TYPE warren_control_nodes gauge\n");
    for state in ["ready", "lost", "draining", "joining"] {
        out.push_str(&format!(
            "warren_control_nodes{{state=\"{state}\"}} {}\n",
            nodes.iter().filter(|n| n.state == state).count()
        ));
    }
    out.push_str("# TYPE warren_control_reserved_memory_mb gauge\n");
    for n in &nodes {
        out.push_str(&format!(
            "warren_control_reserved_memory_mb{{node=\"{}\"}} {}\n",
            n.id, n.reserved_mb
        ));
        out.push_str(&format!(
            "warren_control_allocatable_memory_mb{{node=\"{}\"}} {}\n",
            n.id, n.allocatable_mb
        ));
    }
    Ok(out)
}

// ---- internal: agents ---------------------------------------------------------

async fn join(
    State(c): State<Arc<Control>>,
    body: Result<Json<JoinRequest>, JsonRejection>,
) -> ApiResult<Json<JoinResponse>> {
    let Json(req) = body?;
    if !warren_config::is_dns_label(&req.node_id) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "node_id must be a DNS label",
        ));
    }
    if !(16..=1 << 30).contains(&req.allocatable_mb) || req.token.len() > 200 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "allocatable_mb out of range",
        ));
    }
    match c
        .store
        .join(&req.token, &req.node_id, req.allocatable_mb)
        .await
    {
        Ok(credential) => {
            c.store
                .audit(
                    &format!("node:{}", req.node_id),
                    "",
                    "node.join",
                    &req.node_id,
                    "ok",
                    "",
                )
                .await;
            let relays: Vec<_> = c
                .cfg
                .relays
                .iter()
                .map(|r| {
                    let ca = r
                        .ca_file
                        .as_ref()
                        .and_then(|p| std::fs::read_to_string(p).ok());
                    RelayInfo {
                        addr: r.addr.clone(),
                        server_name: r.server_name.clone(),
                        ca_pem: ca,
                    }
                })
                .collect();
            Ok(Json(JoinResponse {
                node_id: req.node_id,
                credential,
                relays,
            }))
        }
        Err(e) => {
            c.store
                .audit(
                    &format!("node:{}", req.node_id),
                    "",
                    "node.join",
                    &req.node_id,
                    "refused",
                    &e.to_string(),
                )
                .await;
            match e {
                StoreError::Conflict(m) => {
                    Err(ApiError::new(StatusCode::CONFLICT, "node_exists", m))
                }
                StoreError::Db(_) => Err(e.into()),
                e => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "join_refused",
                    e.to_string(),
                )),
            }
        }
    }
}

async fn heartbeat(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    body: Result<Json<HeartbeatRequest>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let node = node_auth(&c, &h).await?;
    let Json(req) = body?;
    if req.sessions.len() > internal::MAX_REPORTED_SESSIONS
        || req.sessions.iter().any(|s| !is_session_id(&s.id))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "bad session report",
        ));
    }
    c.store
        .heartbeat(
            &node,
            req.allocatable_mb.max(0),
            req.free_mb.max(0),
            &req.isolation,
            &req.sessions,
        )
        .await?;
    c.reported.notify_waiters();
    Ok(StatusCode::NO_CONTENT)
}

/// Long poll: answers when the desired state may have changed past `index`,
/// or after 25 s with the current state.
async fn watch(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    Query(q): Query<WatchQuery>,
) -> ApiResult<Json<WatchResponse>> {
    let node = node_auth(&c, &h).await?;
    let since = q.index.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    loop {
        let v = c.store.version().await?;
        if v != since || tokio::time::Instant::now() >= deadline {
            break;
        }
        // Other replicas change the version too: look again every 500 ms.
        let _ = tokio::time::timeout(Duration::from_millis(500), c.changed.notified()).await;
    }
    let (index, sessions) = c.store.desired(&node).await?;
    let sessions = sessions
        .iter()
        .map(|s| DesiredSession {
            id: s.id.clone(),
            image: s.image.clone(),
            memory_mb: s.memory_mb.max(0) as u64,
            cpus: s.millicpus as f64 / 1000.0,
            disk_mb: s.disk_mb.max(0) as u64,
        })
        .collect();
    Ok(Json(WatchResponse { index, sessions }))
}

// ---- internal: relays -------------------------------------------------------------

async fn route(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<RouteResponse>> {
    relay_auth(&c, &h)?;
    if !is_session_id(&id) {
        return Err(ApiError::not_found("no such session"));
    }
    let s = c.store.session(&id).await?;
    if !matches!(s.status.as_str(), "running" | "pending") {
        return Err(ApiError::not_found(format!("session {id} is {}", s.status)));
    }
    Ok(Json(RouteResponse {
        node: s.node,
        tenant: s.tenant,
    }))
}

async fn verify_node(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    body: Result<Json<VerifyNodeRequest>, JsonRejection>,
) -> ApiResult<StatusCode> {
    relay_auth(&c, &h)?;
    let Json(req) = body?;
    if c.store.verify_node(&req.node_id, &req.credential).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::forbidden("node credential rejected"))
    }
}

async fn ssh_authorize(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    body: Result<Json<SshAuthorizeRequest>, JsonRejection>,
) -> ApiResult<Json<RouteResponse>> {
    relay_auth(&c, &h)?;
    let Json(req) = body?;
    if !is_session_id(&req.session) {
        return Err(ApiError::not_found("no such session"));
    }
    let key = crate::sshkeys::parse(&req.public_key)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m))?;
    match c
        .store
        .ssh_key_opens(&req.session, &key.fingerprint)
        .await?
    {
        Some(s) => Ok(Json(RouteResponse {
            node: s.node,
            tenant: s.tenant,
        })),
        None => Err(ApiError::forbidden(
            "the key is not registered for this session's tenant",
        )),
    }
}

async fn ssh_audit(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    body: Result<Json<SshAuditEvent>, JsonRejection>,
) -> ApiResult<StatusCode> {
    relay_auth(&c, &h)?;
    let Json(e) = body?;
    let clip = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    // The tenant of a real session sees the attempts on it in its audit log.
    let tenant = if is_session_id(&e.session) {
        c.store
            .session(&e.session)
            .await
            .map(|s| s.tenant)
            .unwrap_or_default()
    } else {
        String::new()
    };
    let outcome = if e.action == SshAction::Login {
        "ok"
    } else {
        "refused"
    };
    let detail = format!(
        "method={} {}{}",
        clip(&e.method, 16),
        e.fingerprint
            .as_deref()
            .map(|f| format!("key={} ", clip(f, 60)))
            .unwrap_or_default(),
        clip(&e.reason, 300)
    );
    c.store
        .audit(
            &format!("ssh:{}", clip(&e.client_addr, 64)),
            &tenant,
            e.action.as_str(),
            &clip(&e.session, 64),
            outcome,
            detail.trim(),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn ssh_host_key(
    State(c): State<Arc<Control>>,
    h: HeaderMap,
    body: Result<Json<HostKeyRequest>, JsonRejection>,
) -> ApiResult<StatusCode> {
    relay_auth(&c, &h)?;
    let Json(req) = body?;
    let key = crate::sshkeys::parse(&req.public_key)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m))?;
    if key.fingerprint != req.fingerprint {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "the fingerprint does not match the key",
        ));
    }
    c.store.set_host_key(&key.key, &key.fingerprint).await?;
    Ok(StatusCode::NO_CONTENT)
}
