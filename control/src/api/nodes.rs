//! `/v1/nodes`: the operator's view of workers, join tokens, cordon/drain/uncordon, removal.
use super::*;

pub(super) async fn list_nodes(
    State(c): State<Arc<Control>>,
    _: Admin,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({"nodes": c.store.nodes().await?})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct JoinTokenReq {
    ttl_seconds: Option<i64>,
}

pub(super) async fn join_token(
    State(c): State<Arc<Control>>,
    Admin(p): Admin,
    OptionalBody(body): OptionalBody<JoinTokenReq>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let ttl = body.and_then(|b| b.ttl_seconds).unwrap_or(3600);
    if !(60..=7 * 86_400).contains(&ttl) {
        return Err(ApiError::invalid(
            "ttl_seconds must be between 60 and 604800",
        ));
    }
    let token = c.store.create_join_token(ttl * 1000).await?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &p.tenant,
            action: "node.join_token",
            target: "-",
            detail: &format!("ttl {ttl} s"),
            ..NewAudit::OK
        })
        .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": now_ms() / 1000 + ttl})),
    ))
}

pub(super) async fn node_action(
    State(c): State<Arc<Control>>,
    Admin(p): Admin,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    if !matches!(action.as_str(), "drain" | "cordon" | "uncordon") {
        return Err(ApiError::not_found(format!(
            "no node action {action}; use drain, cordon or uncordon"
        )));
    }
    c.store.node_action(&id, &action).await?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &p.tenant,
            action: &format!("node.{action}"),
            target: &id,
            ..NewAudit::OK
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove_node(
    State(c): State<Arc<Control>>,
    Admin(p): Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    c.store.node_action(&id, "remove").await?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &p.tenant,
            action: "node.remove",
            target: &id,
            ..NewAudit::OK
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}
