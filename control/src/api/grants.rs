//! `DELETE /v1/sessions/{id}/grants`: ends every refresh grant of a
//! session, so that a leaked link (or a page left open somewhere) stops
//! renewing its token. Open terminals keep running until their token
//! expires; pages must then sign in again with a fresh link.
use super::*;

#[utoipa::path(delete, path = "/v1/sessions/{id}/grants", tag = "sessions", params(("id" = String, Path, description = "session id")),
    responses((status = 204, description = "every refresh grant of the session ended"), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody), (status = 404, description = "no such session (or another tenant's)", body = ErrorBody)))]
pub(super) async fn revoke_grants(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let s = c.owned(&p, &id).await?;
    let n = c.store.revoke_grants(&s.id).await?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &s.tenant,
            action: "session.grants_revoke",
            target: &s.id,
            detail: &format!("{n} grants"),
            ..NewAudit::OK
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}
