//! The internal API (`/internal/v1/`, types in `warren_proto::internal`):
//! agents join, heartbeat and watch; relays look up routes, verify node
//! credentials and SSH keys, and record SSH logins.
use super::*;
use crate::store::NodeDisk;

/// The most memory (MB) a node may offer, at a join and in heartbeats.
const MAX_NODE_MB: i64 = 1 << 30;
/// The most disk (MB) a node may offer sessions in all (1 EiB).
const MAX_NODE_DISK_MB: i64 = 1 << 40;

pub(super) async fn join(
    State(c): State<Arc<Control>>,
    Body(req): Body<JoinRequest>,
) -> ApiResult<Json<JoinResponse>> {
    if !warren_config::is_dns_label(&req.node_id) {
        return Err(ApiError::invalid("node_id must be a DNS label"));
    }
    if !(16..=MAX_NODE_MB).contains(&req.allocatable_mb) || req.token.len() > 200 {
        return Err(ApiError::invalid("allocatable_mb out of range"));
    }
    let joined = c
        .store
        .join(&req.token, &req.node_id, req.allocatable_mb)
        .await;
    let detail = joined.as_ref().err().map(ToString::to_string);
    c.store
        .audit(NewAudit {
            actor: &format!("node:{}", req.node_id),
            tenant: "",
            action: "node.join",
            target: &req.node_id,
            outcome: if detail.is_some() { "refused" } else { "ok" },
            detail: detail.as_deref().unwrap_or(""),
        })
        .await;
    let credential = match joined {
        Ok(credential) => credential,
        Err(StoreError::Conflict(m)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "node_exists", m));
        }
        Err(e @ StoreError::Db(_)) => return Err(e.into()),
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "join_refused",
                e.to_string(),
            ));
        }
    };
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
        control_urls: c.cfg.control_urls.clone(),
    }))
}

pub(super) async fn heartbeat(
    State(c): State<Arc<Control>>,
    NodeCaller(node): NodeCaller,
    Body(req): Body<HeartbeatRequest>,
) -> ApiResult<StatusCode> {
    if req.sessions.len() > MAX_REPORTED_SESSIONS
        || req.sessions.iter().any(|s| !is_session_id(&s.id))
    {
        return Err(ApiError::invalid("bad session report"));
    }
    // Counted only where a pool of that name exists: a node cannot draw
    // sessions to itself with made-up pools.
    // (A worker that cannot limit disks runs a pool's containers without.)
    // A count is capped at the pool's size: a node that always reports its
    // pools full wins no more creates than an honest full one.
    let pools: Vec<(String, u32)> = warm_pools(&c.cfg)
        .iter()
        .flat_map(|p| {
            [
                (p.name(), p.size),
                (WarmPool::key(&p.image, p.memory_mb, p.cpus, 0), p.size),
            ]
        })
        .collect();
    if req.warm.len() > warren_proto::internal::MAX_REPORTED_POOLS {
        return Err(ApiError::invalid("bad warm pool report"));
    }
    let warm: Vec<WarmCount> = req
        .warm
        .iter()
        .filter_map(|w| {
            let (_, size) = pools.iter().find(|(name, _)| *name == w.pool)?;
            Some(WarmCount {
                pool: w.pool.clone(),
                ready: w.ready.min(*size),
            })
        })
        .collect();
    // Clamped like a join's: a node cannot claim without end and draw
    // every new session to itself.
    let allocatable_mb = req.allocatable_mb.clamp(0, MAX_NODE_MB);
    let hb = HeartbeatRequest {
        allocatable_mb,
        free_mb: req.free_mb.clamp(0, allocatable_mb),
        disk: req.disk.map(|d| NodeDisk {
            capacity_mb: d.capacity_mb.clamp(0, MAX_NODE_DISK_MB),
            max_session_mb: d.max_session_mb.clamp(0, 4_194_304),
        }),
        warm,
        ..req
    };
    let changed = c.store.heartbeat(&node, &hb).await?;
    // The creates waiting for these sessions look again (and no other).
    c.starting.wake(&changed);
    Ok(StatusCode::NO_CONTENT)
}

/// Long poll: answers when the desired state may have changed past `index`,
/// or after 25 s with the current state.
pub(super) async fn watch(
    State(c): State<Arc<Control>>,
    NodeCaller(node): NodeCaller,
    Query(q): Query<WatchQuery>,
) -> ApiResult<Json<WatchResponse>> {
    let since = q.index.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    // Answer when this node's sessions changed past `since` (one task per
    // replica follows the database for every watch; no query per waiter).
    let mut ticks = c.store.follow_ticks();
    while since != 0 && c.store.node_version(&node) <= since {
        match tokio::time::timeout_at(deadline, ticks.changed()).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    let (index, sessions) = c.store.desired(&node).await?;
    let mut shares = c.store.node_shares(&node).await?;
    let record = c.cfg.sessions.record_terminals;
    let sessions = sessions
        .iter()
        .map(|s| DesiredSession {
            shares: shares.remove(&s.id).unwrap_or_default(),
            record,
            id: s.id.clone(),
            image: s.image.clone(),
            memory_mb: s.memory_mb.max(0) as u64,
            cpus: s.millicpus as f64 / 1000.0,
            disk_mb: s.disk_mb.max(0) as u64,
            egress: s.egress.clone(),
        })
        .collect();
    let snapshots = c
        .store
        .node_snapshots(&node)
        .await?
        .iter()
        .map(|id| warren_proto::sandbox::snapshot_image(id))
        .collect();
    Ok(Json(WatchResponse {
        index,
        sessions,
        snapshots: Some(snapshots),
        pools: warm_pools(&c.cfg),
    }))
}

/// `[[pools]]` with `[sessions]`' defaults filled in, as a session created
/// without options would be asked for (so such a create finds its pool).
pub(crate) fn warm_pools(cfg: &warren_config::ControlConfig) -> Vec<WarmPool> {
    let d = &cfg.sessions;
    cfg.pools
        .iter()
        .map(|p| WarmPool {
            image: p.image.clone().unwrap_or_else(|| d.image.clone()),
            memory_mb: p.memory_mb.unwrap_or(d.memory_mb),
            // As a create stores it (whole millicpus).
            cpus: (p.cpus.unwrap_or(d.cpus) * 1000.0) as i64 as f64 / 1000.0,
            disk_mb: p.disk_mb.unwrap_or(d.disk_mb),
            size: p.size,
        })
        .collect()
}

pub(super) async fn route(
    State(c): State<Arc<Control>>,
    _: RelayCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<RouteResponse>> {
    if !is_session_id(&id) {
        return Err(ApiError::not_found("no such session"));
    }
    let s = c.store.session(&id).await?;
    if !s.status.is_live() {
        return Err(ApiError::not_found(format!("session {id} is {}", s.status)));
    }
    Ok(Json(RouteResponse {
        node: s.node,
        tenant: s.tenant,
    }))
}

pub(super) async fn verify_node(
    State(c): State<Arc<Control>>,
    _: RelayCaller,
    Body(req): Body<VerifyNodeRequest>,
) -> ApiResult<StatusCode> {
    if c.store.verify_node(&req.node_id, &req.credential).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::forbidden("node credential rejected"))
    }
}

pub(super) async fn ssh_authorize(
    State(c): State<Arc<Control>>,
    _: RelayCaller,
    Body(req): Body<SshAuthorizeRequest>,
) -> ApiResult<Json<RouteResponse>> {
    if !is_session_id(&req.session) {
        return Err(ApiError::not_found("no such session"));
    }
    let key = crate::sshkeys::parse(&req.public_key).map_err(ApiError::invalid)?;
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

pub(super) async fn ssh_audit(
    State(c): State<Arc<Control>>,
    _: RelayCaller,
    Body(e): Body<SshAuditEvent>,
) -> ApiResult<StatusCode> {
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
        .audit(NewAudit {
            actor: &format!("ssh:{}", clip(&e.client_addr, 64)),
            tenant: &tenant,
            action: e.action.as_str(),
            target: &clip(&e.session, 64),
            outcome,
            detail: detail.trim(),
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn ssh_host_key(
    State(c): State<Arc<Control>>,
    _: RelayCaller,
    Body(req): Body<HostKeyRequest>,
) -> ApiResult<StatusCode> {
    let key = crate::sshkeys::parse(&req.public_key).map_err(ApiError::invalid)?;
    if key.fingerprint != req.fingerprint {
        return Err(ApiError::invalid("the fingerprint does not match the key"));
    }
    c.store.set_host_key(&key.key, &key.fingerprint).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A refresh grant for a token the relay was shown. The token is checked
/// here too (the relay is trusted with routes, not with minting).
pub(super) async fn grant(
    State(c): State<Arc<Control>>,
    _: RelayCaller,
    Body(req): Body<GrantRequest>,
) -> ApiResult<Json<GrantResponse>> {
    let claims = c.issuer.verify(&req.token).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is not valid",
        )
    })?;
    if !is_session_id(&claims.sid) {
        return Err(ApiError::not_found("no such session"));
    }
    // A share link's token ends with its link: a grant would outlive it
    // (and mint tokens no longer tied to the link).
    if claims.share.is_some() {
        return Err(ApiError::forbidden("share links get no refresh grant"));
    }
    let (secret, exp) = c
        .store
        .create_grant(
            &claims.sid,
            &claims.sub,
            &claims.scope,
            claims.iat.unwrap_or(0).min(i64::MAX as u64 / 1000) as i64 * 1000,
        )
        .await?;
    c.store
        .audit(NewAudit {
            actor: &claims.sub,
            tenant: &claims.tenant,
            action: "session.grant",
            target: &claims.sid,
            detail: &claims.scope,
            ..NewAudit::OK
        })
        .await;
    Ok(Json(GrantResponse {
        refresh_token: secret,
        expires_at: exp / 1000,
    }))
}

/// A fresh session token for a refresh grant: 401 for an unknown grant, 404
/// once the session has ended.
pub(super) async fn refresh(
    State(c): State<Arc<Control>>,
    _: RelayCaller,
    Body(req): Body<RefreshRequest>,
) -> ApiResult<Json<RefreshResponse>> {
    if !is_session_id(&req.session) || req.refresh_token.len() > 200 {
        return Err(ApiError::not_found("no such session"));
    }
    let Some((s, subject, scope)) = c
        .store
        .use_grant(
            &req.session,
            &req.refresh_token,
            c.cfg.auth.grant_idle_secs as i64 * 1000,
        )
        .await?
    else {
        return Err(match c.store.session(&req.session).await {
            Ok(s) if s.status.is_live() => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the refresh grant is not valid for this session",
            ),
            _ => ApiError::not_found(format!("session {} has ended", req.session)),
        });
    };
    let (token, exp) = c.issuer.mint(&s, &subject, &scope)?;
    Ok(Json(RefreshResponse {
        token,
        expires_at: exp,
    }))
}
