//! Tenants, API keys, SSH keys, the audit log, and the public keys and health endpoints.
use super::*;
use crate::store::{AuditEntry, SshKey, Tenant};

/// `POST /v1/tenants`; absent quotas are the operator's defaults.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantReq {
    name: String,
    max_sessions: Option<i64>,
    max_memory_mb: Option<i64>,
}

#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = TenantReq,
    responses((status = 201, description = "created", body = Tenant), (status = 400, description = "bad_request: the body or query does not parse", body = ErrorBody), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 403, description = "forbidden: this needs the admin key", body = ErrorBody), (status = 422, description = "bad name or quotas", body = ErrorBody)))]
pub(super) async fn create_tenant(
    State(c): State<Arc<Control>>,
    Admin(p): Admin,
    Body(req): Body<TenantReq>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    // Names are shown in lists, logs and terminals: no control or
    // direction-changing characters.
    warren_proto::validate::display_name("name", &req.name).map_err(ApiError::invalid)?;
    let ms = req
        .max_sessions
        .unwrap_or(c.cfg.sessions.tenant_max_sessions as i64);
    let mm = req
        .max_memory_mb
        .unwrap_or(c.cfg.sessions.tenant_max_memory_mb as i64);
    if !(0..=1_000_000).contains(&ms) || !(0..=1 << 40).contains(&mm) {
        return Err(ApiError::invalid("quotas out of range"));
    }
    let t = c.store.create_tenant(&req.name, ms, mm).await?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &t.id,
            action: "tenant.create",
            target: &t.id,
            detail: &req.name,
            ..NewAudit::OK
        })
        .await;
    Ok((StatusCode::CREATED, Json(t)))
}

/// A new API key: shown once, stored hashed.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ApiKeyCreated {
    id: String,
    tenant: String,
    key: String,
}

#[utoipa::path(post, path = "/v1/tenants/{id}/api-keys", tag = "tenants",
    params(("id" = String, Path, description = "tenant id")),
    responses((status = 201, description = "created", body = ApiKeyCreated), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody), (status = 403, description = "forbidden: this needs the admin key", body = ErrorBody),
        (status = 404, description = "no such tenant", body = ErrorBody)))]
pub(super) async fn create_key(
    State(c): State<Arc<Control>>,
    Admin(p): Admin,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ApiKeyCreated>)> {
    c.store.tenant(&id).await?;
    let key = crate::store::random_secret("wk");
    let key_id = c.store.add_api_key(&id, &key, false).await?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &id,
            action: "key.create",
            target: &key_id,
            ..NewAudit::OK
        })
        .await;
    // Shown once; only its hash is kept.
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyCreated {
            id: key_id,
            tenant: id,
            key,
        }),
    ))
}

/// `POST /v1/users/me/ssh-keys`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SshKeyReq {
    /// One OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    public_key: String,
}

/// Registers a public key for the caller's tenant: it then opens every
/// session of that tenant over SSH.
#[utoipa::path(post, path = "/v1/users/me/ssh-keys", tag = "ssh", request_body = SshKeyReq,
    responses((status = 201, description = "created", body = SshKey), (status = 400, description = "bad_request: the body or query does not parse", body = ErrorBody), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 409, description = "already registered", body = ErrorBody),
        (status = 422, description = "not one OpenSSH public key line", body = ErrorBody)))]
pub(super) async fn add_ssh_key(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Body(req): Body<SshKeyReq>,
) -> ApiResult<(StatusCode, Json<SshKey>)> {
    let key = crate::sshkeys::parse(&req.public_key).map_err(ApiError::invalid)?;
    let k = c.store.add_ssh_key(&p.tenant, &p.key_id, &key).await?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &p.tenant,
            action: "ssh_key.add",
            target: &k.id,
            detail: &k.fingerprint,
            ..NewAudit::OK
        })
        .await;
    Ok((StatusCode::CREATED, Json(k)))
}

/// The caller's tenant's SSH keys.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct SshKeyList {
    keys: Vec<SshKey>,
}

#[utoipa::path(get, path = "/v1/users/me/ssh-keys", tag = "ssh",
    responses((status = 200, description = "OK", body = SshKeyList), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody)))]
pub(super) async fn list_ssh_keys(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
) -> ApiResult<Json<SshKeyList>> {
    Ok(Json(SshKeyList {
        keys: c.store.ssh_keys(&p.tenant).await?,
    }))
}

#[utoipa::path(delete, path = "/v1/users/me/ssh-keys/{id}", tag = "ssh",
    params(("id" = String, Path, description = "SSH key id")),
    responses((status = 204, description = "deleted"), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody), (status = 404, description = "not_found", body = ErrorBody)))]
pub(super) async fn delete_ssh_key(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if id.len() > 64 {
        return Err(ApiError::not_found("no such SSH key"));
    }
    c.store.delete_ssh_key(&p.tenant, &id).await?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &p.tenant,
            action: "ssh_key.delete",
            target: &id,
            ..NewAudit::OK
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The relays' SSH host keys and where they listen.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct HostKeys {
    host_keys: Vec<HostKey>,
    /// `host:port` of the relays' SSH listener, when configured.
    endpoint: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct HostKey {
    public_key: String,
    fingerprint: String,
}

/// The relays' SSH host keys, for users to pin (public, no key needed).
#[utoipa::path(get, path = "/v1/ssh/host-keys", tag = "ssh", security(()),
    responses((status = 200, description = "OK", body = HostKeys), (status = 503, description = "unavailable: the database is not answering", body = ErrorBody)))]
pub(super) async fn host_keys(State(c): State<Arc<Control>>) -> ApiResult<Json<HostKeys>> {
    let host_keys = c
        .store
        .host_keys()
        .await?
        .into_iter()
        .map(|(public_key, fingerprint)| HostKey {
            public_key,
            fingerprint,
        })
        .collect();
    Ok(Json(HostKeys {
        host_keys,
        endpoint: c.cfg.ssh_endpoint.clone(),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// 1..=1000, default 100: the newest first.
    limit: Option<i64>,
}

/// `GET /v1/audit`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct AuditLog {
    entries: Vec<AuditEntry>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "the caller's tenant's entries (admin: all)", body = AuditLog),
        (status = 400, description = "bad_request: the body or query does not parse", body = ErrorBody), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody)))]
pub(super) async fn audit(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditLog>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = c
        .store
        .audit_log(if p.admin { None } else { Some(&p.tenant) }, limit)
        .await?;
    Ok(Json(AuditLog { entries }))
}

/// The session-token signing keys (RFC 7517).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Jwks {
    keys: Vec<Jwk>,
}

/// An Ed25519 public key.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Jwk {
    kty: &'static str,
    crv: &'static str,
    alg: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
    kid: String,
    x: String,
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "health", security(()),
    responses((status = 200, description = "OK", body = Jwks), (status = 503, description = "unavailable: the database is not answering", body = ErrorBody)))]
pub(super) async fn jwks(State(c): State<Arc<Control>>) -> ApiResult<Json<Jwks>> {
    let keys = c
        .store
        .public_keys()
        .await?
        .into_iter()
        .map(|(kid, x)| Jwk {
            kty: "OKP",
            crv: "Ed25519",
            alg: "EdDSA",
            use_: "sig",
            kid,
            x,
        })
        .collect();
    Ok(Json(Jwks { keys }))
}

#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "the process answers", content_type = "text/plain", body = String)))]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, description = "the database answers", content_type = "text/plain", body = String),
        (status = 503, description = "unavailable: the database is not answering", body = ErrorBody)))]
pub(super) async fn readyz(State(c): State<Arc<Control>>) -> ApiResult<&'static str> {
    c.store.version().await?;
    Ok("ready\n")
}

#[utoipa::path(get, path = "/metrics", tag = "health", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 503, description = "unavailable: the database is not answering", body = ErrorBody)))]
pub(super) async fn metrics(State(c): State<Arc<Control>>) -> ApiResult<String> {
    let nodes = c.store.nodes().await?;
    let mut out = String::from("# TYPE warren_control_nodes gauge\n");
    for state in NodeState::ALL {
        out.push_str(&format!(
            "warren_control_nodes{{state=\"{}\"}} {}\n",
            state.as_str(),
            nodes.iter().filter(|n| n.state == state).count()
        ));
    }
    out.push_str("# TYPE warren_control_sessions gauge\n");
    let counts = c.store.session_counts().await?;
    for state in SessionStatus::ALL {
        out.push_str(&format!(
            "warren_control_sessions{{state=\"{}\"}} {}\n",
            state.as_str(),
            counts.get(state.as_str()).copied().unwrap_or(0)
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
    use prometheus::Encoder;
    use prometheus::core::Collector;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&c.placement.collect(), &mut buf);
    out.push_str(&String::from_utf8_lossy(&buf));
    Ok(out)
}
