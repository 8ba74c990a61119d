//! Tenants, API keys, SSH keys, the audit log, and the public keys and health endpoints.
use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantReq {
    name: String,
    max_sessions: Option<i64>,
    max_memory_mb: Option<i64>,
}

pub(super) async fn create_tenant(
    State(c): State<Arc<Control>>,
    Admin(p): Admin,
    Body(req): Body<TenantReq>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
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
    Ok((StatusCode::CREATED, Json(json!(t))))
}

pub(super) async fn create_key(
    State(c): State<Arc<Control>>,
    Admin(p): Admin,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
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
        Json(json!({"id": key_id, "tenant": id, "key": key})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SshKeyReq {
    public_key: String,
}

/// Registers a public key for the caller's tenant: it then opens every
/// session of that tenant over SSH.
pub(super) async fn add_ssh_key(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Body(req): Body<SshKeyReq>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
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
    Ok((StatusCode::CREATED, Json(json!(k))))
}

pub(super) async fn list_ssh_keys(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({"keys": c.store.ssh_keys(&p.tenant).await?})))
}

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

/// The relays' SSH host keys, for users to pin (public, no key needed).
pub(super) async fn host_keys(State(c): State<Arc<Control>>) -> ApiResult<Json<serde_json::Value>> {
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
pub(super) struct AuditQuery {
    limit: Option<i64>,
}

pub(super) async fn audit(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = c
        .store
        .audit_log(if p.admin { None } else { Some(&p.tenant) }, limit)
        .await?;
    Ok(Json(json!({"entries": entries})))
}

pub(super) async fn jwks(State(c): State<Arc<Control>>) -> ApiResult<Json<serde_json::Value>> {
    let keys: Vec<_> = c
        .store
        .public_keys()
        .await?
        .into_iter()
        .map(|(kid, x)| json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": x}))
        .collect();
    Ok(Json(json!({"keys": keys})))
}

pub(super) async fn readyz(State(c): State<Arc<Control>>) -> ApiResult<&'static str> {
    c.store.version().await?;
    Ok("ready\n")
}

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
