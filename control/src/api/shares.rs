//! Share links (`POST /v1/sessions/{id}/share`, `GET …/shares`, `DELETE
//! …/shares/{share}`) and the worker's word that someone joined through one.
//!
//! A link's token has the `view` scope (read) or `terminal` (write) and
//! names its share; the relay lets it attach to the session's terminals
//! only, and the session's agent, told the live links by its watch, drops a
//! reader's input and cuts a link's connections when it is revoked or
//! expires. Such a token never gets a refresh grant (it would outlive the
//! link).
use warren_proto::share::{
    CreateShare, DEFAULT_SHARE_TTL, MAX_SHARE_TTL, MAX_SHARES_PER_SESSION, Share, ShareList,
    ShareMode, check_share_name,
};

use super::*;
use crate::store::{NewShare, ShareRow};

fn view(r: &ShareRow, link: Option<(String, String)>) -> Share {
    let (url, token) = link.unzip();
    Share {
        id: r.id.clone(),
        session: r.session.clone(),
        mode: r.mode,
        terminal: r.terminal,
        name: r.name.clone(),
        created_at: r.created_at / 1000,
        expires_at: r.expires_at / 1000,
        url,
        token,
    }
}

#[utoipa::path(post, path = "/v1/sessions/{id}/share", tag = "sharing",
    params(("id" = String, Path, description = "session id")),
    request_body = CreateShare,
    responses((status = 201, description = "the link; `url` opens the terminal page as a viewer", body = Share),
        (status = 400, description = "bad_request: the body does not parse", body = ErrorBody),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 404, description = "no such session (or another tenant's)", body = ErrorBody),
        (status = 409, description = "session_ended", body = ErrorBody),
        (status = 422, description = "invalid: ttl_seconds or name", body = ErrorBody),
        (status = 429, description = "quota_exceeded: 32 live links per session", body = ErrorBody)))]
pub(super) async fn create_share(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Body(req): Body<CreateShare>,
) -> ApiResult<(StatusCode, Json<Share>)> {
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_SHARE_TTL);
    if !(1..=MAX_SHARE_TTL).contains(&ttl) {
        return Err(ApiError::invalid(format!(
            "ttl_seconds must be 1 to {MAX_SHARE_TTL} (7 days)"
        )));
    }
    if let Some(n) = &req.name {
        check_share_name(n).map_err(ApiError::invalid)?;
    }
    let s = c.owned(&p, &id).await?;
    if !s.status.is_live() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_ended",
            format!("session {id} is {}", s.status),
        ));
    }
    let expires_at = (now_ms() + ttl * 1000).min(s.expires_at);
    let row = c
        .store
        .create_share(NewShare {
            session: &s.id,
            node: &s.node,
            tenant: &s.tenant,
            mode: req.mode,
            terminal: req.terminal,
            name: req.name.as_deref(),
            created_by: &p.key_id,
            expires_at,
            max: MAX_SHARES_PER_SESSION,
        })
        .await?;
    let scope = match req.mode {
        ShareMode::Read => Scope::View,
        ShareMode::Write => Scope::Terminal,
    };
    // The subject is what others watching are shown.
    let subject = row.name.clone().unwrap_or_default();
    let (token, _) = c
        .issuer
        .mint_share(&s, &subject, scope.as_str(), &row.id, row.expires_at)?;
    let url = format!("{}?token={token}", c.terminal_page(&s.id));
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &s.tenant,
            action: "share.create",
            target: &s.id,
            detail: &format!(
                "{} {} until {}",
                row.id,
                row.mode.as_str(),
                row.expires_at / 1000
            ),
            ..NewAudit::OK
        })
        .await;
    Ok((StatusCode::CREATED, Json(view(&row, Some((url, token))))))
}

#[utoipa::path(get, path = "/v1/sessions/{id}/shares", tag = "sharing",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "the session's live links (no tokens)", body = ShareList),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 404, description = "no such session (or another tenant's)", body = ErrorBody)))]
pub(super) async fn list_shares(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ShareList>> {
    let s = c.owned(&p, &id).await?;
    let rows = c.store.live_shares(&s.id).await?;
    Ok(Json(ShareList {
        shares: rows.iter().map(|r| view(r, None)).collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/sessions/{id}/shares/{share}", tag = "sharing",
    params(("id" = String, Path, description = "session id"), ("share" = String, Path, description = "share link id")),
    responses((status = 204, description = "revoked: its connections are cut within a second or two"),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 404, description = "no such session, or no such live link", body = ErrorBody)))]
pub(super) async fn revoke_share(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path((id, share)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let s = c.owned(&p, &id).await?;
    if share.len() > 64 || !c.store.revoke_share(&s.id, &s.node, &share).await? {
        return Err(ApiError::not_found(format!(
            "session {id} has no live share link {share}"
        )));
    }
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &s.tenant,
            action: "share.revoke",
            target: &s.id,
            detail: &share,
            ..NewAudit::OK
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The worker's word that a share link's holder attached (audited as
/// `share.join`): only for a session on the calling node.
pub(super) async fn share_joined(
    State(c): State<Arc<Control>>,
    NodeCaller(node): NodeCaller,
    Path((id, share)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    if !is_session_id(&id) || share.len() > 64 {
        return Err(ApiError::not_found("no such session"));
    }
    let s = c.store.session(&id).await?;
    if s.node != node {
        return Err(ApiError::forbidden("the session is not on this node"));
    }
    let Some(row) = c
        .store
        .live_shares(&s.id)
        .await?
        .into_iter()
        .find(|r| r.id == share)
    else {
        return Err(ApiError::not_found("no such live share link"));
    };
    c.store
        .audit(NewAudit {
            actor: &format!("share:{}", row.id),
            tenant: &s.tenant,
            action: "share.join",
            target: &s.id,
            detail: &format!(
                "{} {}",
                row.mode.as_str(),
                row.name.as_deref().unwrap_or("(no name)")
            ),
            ..NewAudit::OK
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}
