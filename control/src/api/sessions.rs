//! `/v1/sessions`: create (placed and started before the answer), list, get, delete, and session tokens.
use super::*;
use warren_proto::egress::Egress;

impl Control {
    /// The session as the API shows it; `tokens` when this answer hands
    /// out links (each with a token of its own scope).
    /// `:port` when the edge's HTTPS port is not 443, else nothing.
    fn port_suffix(&self) -> String {
        self.cfg
            .https_port
            .filter(|p| *p != 443)
            .map(|p| format!(":{p}"))
            .unwrap_or_default()
    }

    /// The session's terminal page, without a token.
    pub(super) fn terminal_page(&self, id: &str) -> String {
        format!("https://{id}.{}{}/", self.cfg.domain, self.port_suffix())
    }

    fn view(&self, s: &Session, tokens: Option<&Minted>) -> ApiSession {
        let port = self.port_suffix();
        let base = self.terminal_page(&s.id);
        let preview_domain = self
            .cfg
            .preview_domain
            .as_deref()
            .unwrap_or(&self.cfg.domain);
        let preview = format!("https://{{port}}-{}.{preview_domain}{port}/", s.id);
        let with = |url: String, t: Option<&(String, i64)>| match t {
            Some((t, _)) => format!("{url}?token={t}"),
            None => url,
        };
        let links = Links {
            terminal: with(base.clone(), tokens.map(|m| &m.terminal)),
            preview: with(preview, tokens.map(|m| &m.preview)),
        };
        let url = links.terminal.clone();
        let token = tokens.map(|m| m.both.clone());
        let (host, sport) = match self
            .cfg
            .ssh_endpoint
            .as_deref()
            .and_then(|e| e.rsplit_once(':'))
        {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (self.cfg.domain.clone(), "2222".into()),
        };
        ApiSession {
            id: s.id.clone(),
            tenant: s.tenant.clone(),
            node: s.node.clone(),
            status: s.status,
            reason: s.reason.clone(),
            image: s.image.clone(),
            memory_mb: s.memory_mb,
            cpus: s.millicpus as f64 / 1000.0,
            disk_mb: (s.disk_mb > 0).then_some(s.disk_mb),
            egress: s.egress.clone(),
            url,
            links: Some(links),
            ssh: format!("ssh -p {sport} {}@{host}", s.id),
            token: token.as_ref().map(|t| t.0.clone()),
            token_expires_at: token.map(|t| t.1),
            expires_at: s.expires_at / 1000,
            created_at: s.created_at / 1000,
        }
    }

    pub(super) async fn owned(&self, p: &Principal, id: &str) -> ApiResult<Session> {
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

#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession,
    responses((status = 201, description = "the session runs; the answer carries its tokens and links", body = ApiSession),
        (status = 400, description = "bad_request: the body or query does not parse", body = ErrorBody), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 422, description = "invalid, registry_not_allowed, image_not_allowed", body = ErrorBody),
        (status = 429, description = "quota_exceeded, rate_limited", body = ErrorBody),
        (status = 503, description = "no_capacity, session_failed, start_timeout", body = ErrorBody)))]
pub(super) async fn create_session(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Body(req): Body<CreateSession>,
) -> ApiResult<Response> {
    let started = std::time::Instant::now();
    if !c.limits.creates.allow(&p.tenant) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many sessions created by this tenant in the last minute",
        ));
    }
    let d = &c.cfg.sessions;
    let image = req.image.unwrap_or_else(|| d.image.clone());
    // The engine's grammar: anything else (`--privileged`) never reaches
    // a worker.
    warren_proto::validate::image_reference(&image).map_err(ApiError::invalid)?;
    // A tenant's own snapshot: resolved in its tenant alone (another
    // tenant's is a 404, as a name that does not exist), started on the
    // worker that holds it; the image it was taken from passed the rules
    // below when that session was created.
    let (image, node) = match crate::images::snapshot_name(&image) {
        Some(name) => {
            let snap = c.store.snapshot(&p.tenant, name).await?;
            (
                warren_proto::sandbox::snapshot_image(&snap.id),
                Some(snap.node),
            )
        }
        None => (image, None),
    };
    if node.is_none()
        && let Some(registry) = image_registry(&image)
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
    if node.is_none() {
        crate::images::image_allowed(&image, &p.tenant, &d.allowed_images)
            .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "image_not_allowed", m))?;
    }
    let memory_mb = req.memory_mb.unwrap_or(d.memory_mb as i64);
    if !(16..=1_048_576).contains(&memory_mb) {
        return Err(ApiError::invalid(
            "memory_mb must be between 16 and 1048576",
        ));
    }
    let cpus = req.cpus.unwrap_or(d.cpus);
    // The engine's smallest CPU share is 0.01; below it the worker would
    // fail the session after control had placed it.
    if !(0.01..=256.0).contains(&cpus) {
        return Err(ApiError::invalid("cpus must be between 0.01 and 256"));
    }
    let max_disk = d.max_disk_mb as i64;
    // An asked disk is 64..=max (0 would be counted as nothing while the
    // worker gives its own default); the default may be 0 by the operator.
    let disk_mb = match req.disk_mb {
        Some(asked) if !(64..=max_disk).contains(&asked) => {
            return Err(ApiError::invalid(format!(
                "disk_mb must be between 64 and {max_disk} (the operator's sessions.max_disk_mb)"
            )));
        }
        Some(asked) => asked,
        None => d.disk_mb as i64,
    };
    let egress = checked_egress(req.egress.unwrap_or_default(), d.allow_internet_egress)?;
    let ttl = req.ttl_seconds.unwrap_or(d.ttl_secs as i64);
    let idle = req
        .idle_timeout_seconds
        .unwrap_or(d.idle_timeout_secs as i64);
    if !(10..=7 * 86_400).contains(&ttl) || !(10..=7 * 86_400).contains(&idle) {
        return Err(ApiError::invalid(
            "ttl_seconds and idle_timeout_seconds must be between 10 and 604800",
        ));
    }
    let spec = NewSession {
        id: crate::store::random_id(16),
        image,
        memory_mb,
        millicpus: (cpus * 1000.0) as i64,
        disk_mb,
        disk_asked: req.disk_mb.is_some(),
        egress,
        node,
        ttl_ms: ttl * 1000,
        idle_timeout_ms: idle * 1000,
    };
    let hb = c.cfg.scheduler.heartbeat_timeout_secs as i64 * 1000;
    // Registered before the session exists: its report, however soon it
    // comes, leaves a permit, and the wait below ends at once. (The wait
    // is bounded for reports another replica took.)
    let waiter = c.starting.register(&spec.id);
    let create_timeout = Duration::from_secs(c.cfg.sessions.create_timeout_secs);
    // One deadline for placement and start together.
    let deadline = tokio::time::Instant::now() + create_timeout;
    let placed = tokio::time::timeout(
        create_timeout,
        c.store.create_session(
            &p.tenant,
            &p.key_id,
            &spec,
            c.cfg.scheduler.strategy,
            hb,
            d.tenant_max_disk_mb as i64,
        ),
    )
    .await
    .unwrap_or_else(|_| {
        Err(crate::store::StoreError::NoCapacity(format!(
            "the session could not be placed within {} s (the control plane's database is slow or unreachable); try again",
            create_timeout.as_secs()
        )))
    });
    let s = match placed {
        Ok(s) => s,
        Err(e) => {
            audit_create(&c, &p, "-", "refused", &e.to_string()).await;
            return Err(e.into());
        }
    };
    // Answer once it runs, or fail clearly after the deadline.
    let s = loop {
        let _ = tokio::time::timeout(Duration::from_millis(100), waiter.reported()).await;
        let s = c.store.session(&s.id).await?;
        match s.status {
            SessionStatus::Running => break s,
            SessionStatus::Pending if tokio::time::Instant::now() < deadline => {}
            SessionStatus::Pending => {
                c.store.stop_session(&s.id, "did not start in time").await?;
                audit_create(&c, &p, &s.id, "timeout", "").await;
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
                audit_create(&c, &p, &s.id, "failed", &s.reason).await;
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session_failed",
                    format!("session {} is {other}: {}", s.id, s.reason),
                ));
            }
        }
    };
    c.placement.observe(started.elapsed().as_secs_f64());
    let minted = Minted {
        // `token`: both scopes, as before (for the API's caller, never put
        // in a link).
        both: c.issuer.mint(&s, &p.key_id, &Scope::claim(&Scope::ALL))?,
        terminal: c.issuer.mint(&s, &p.key_id, Scope::Terminal.as_str())?,
        preview: c.issuer.mint(&s, &p.key_id, Scope::Preview.as_str())?,
    };
    Ok((StatusCode::CREATED, Json(c.view(&s, Some(&minted)))).into_response())
}

/// A session's egress policy in its one spelling: a malformed one is
/// `422 invalid`, one the operator does not allow (the internet, public
/// addresses without `sessions.allow_internet_egress`) `422
/// egress_not_allowed`, each naming what is wrong.
fn checked_egress(egress: Egress, allow_internet: bool) -> ApiResult<Egress> {
    egress.checked(true).map_err(ApiError::invalid)?;
    egress
        .checked(allow_internet)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "egress_not_allowed", m))
}

/// Tokens minted for one answer: `(token, expires_at)`.
struct Minted {
    both: (String, i64),
    terminal: (String, i64),
    preview: (String, i64),
}

#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    responses((status = 200, description = "the caller's tenant's sessions (admin: all)", body = SessionList),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody)))]
pub(super) async fn list_sessions(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
) -> ApiResult<Json<SessionList>> {
    let list = c
        .store
        .sessions(if p.admin { None } else { Some(&p.tenant) })
        .await?;
    Ok(Json(SessionList {
        sessions: list.iter().map(|s| c.view(s, None)).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "OK", body = ApiSession), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody), (status = 404, description = "no such session (or another tenant's)", body = ErrorBody)))]
pub(super) async fn get_session(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiSession>> {
    let s = c.owned(&p, &id).await?;
    Ok(Json(c.view(&s, None)))
}

#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", params(("id" = String, Path, description = "session id")),
    responses((status = 204, description = "stopping; stopped once its container is gone"), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody), (status = 404, description = "no such session (or another tenant's)", body = ErrorBody)))]
pub(super) async fn delete_session(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let s = c.owned(&p, &id).await?;
    c.store.stop_session(&s.id, "deleted").await?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &s.tenant,
            action: "session.delete",
            target: &s.id,
            ..NewAudit::OK
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sessions/{id}/token", tag = "sessions", params(("id" = String, Path, description = "session id")),
    request_body(content = Option<TokenRequest>, description = "optional: no body is both scopes"),
    responses((status = 200, description = "OK", body = TokenResponse), (status = 400, description = "bad_request: the body or query does not parse", body = ErrorBody), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody), (status = 404, description = "no such session (or another tenant's)", body = ErrorBody),
        (status = 409, description = "session_ended", body = ErrorBody),
        (status = 422, description = "an unknown scope", body = ErrorBody)))]
pub(super) async fn session_token(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    OptionalBody(req): OptionalBody<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    // The body is optional: none (or `{}`) keeps both scopes, as before.
    let req = req.unwrap_or_default();
    let scopes: &[Scope] = match req.scope.as_deref() {
        None => &Scope::ALL,
        Some(name) => match Scope::parse(name) {
            Some(Scope::Terminal) => &[Scope::Terminal],
            Some(Scope::Preview) => &[Scope::Preview],
            // The sandbox API on the session host (Bearer only), and the
            // terminal with its exec mode: exec runs anything a shell can.
            Some(Scope::Exec) => &[Scope::Exec, Scope::Terminal],
            // Control's own, for committing snapshots: never handed out.
            // Watching is what a read share link is for (it can be revoked).
            Some(Scope::Snapshot | Scope::View) | None => {
                return Err(ApiError::invalid(format!(
                    "scope {name:?} is not one of \"terminal\", \"preview\", \"exec\""
                )));
            }
        },
    };
    let scope = Scope::claim(scopes);
    let scope = scope.as_str();
    let s = c.owned(&p, &id).await?;
    if !s.status.is_live() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_ended",
            format!("session {id} is {}", s.status),
        ));
    }
    let (token, exp) = c.issuer.mint(&s, &p.key_id, scope)?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &s.tenant,
            action: "session.token",
            target: &s.id,
            detail: scope,
            ..NewAudit::OK
        })
        .await;
    Ok(Json(TokenResponse {
        token,
        expires_at: exp,
        scope: scope.to_string(),
    }))
}

/// Audits one step of a create (refused, scheduled, timeout, failed).
async fn audit_create(c: &Control, p: &Principal, target: &str, outcome: &str, detail: &str) {
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &p.tenant,
            action: "session.create",
            target,
            outcome,
            detail,
        })
        .await;
}
