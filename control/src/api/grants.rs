//! `DELETE /v1/sessions/{id}/grants`: ends every refresh grant of a
//! session, so that a leaked link (or a page left open somewhere) stops
//! renewing its token. Open terminals keep running until their token
//! expires; pages must then sign in again with a fresh link.
use super::*;

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
