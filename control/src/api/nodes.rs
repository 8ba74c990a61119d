//! `/v1/nodes`: the operator's view of workers, join tokens, cordon/drain/uncordon, removal.
use super::*;
use crate::store::Node;

/// `GET /v1/nodes`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct NodeList {
    nodes: Vec<Node>,
}

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes",
    responses((status = 200, description = "OK", body = NodeList), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody), (status = 403, description = "not the admin key", body = ErrorBody)))]
pub(super) async fn list_nodes(
    State(c): State<Arc<Control>>,
    _: Admin,
) -> ApiResult<Json<NodeList>> {
    Ok(Json(NodeList {
        nodes: c.store.nodes().await?,
    }))
}

/// `POST /v1/nodes/join-tokens` (the body is optional).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct JoinTokenReq {
    /// 60..=604800; absent: an hour.
    ttl_seconds: Option<i64>,
}

/// A one-time join token for a new worker.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct JoinToken {
    token: String,
    /// Unix seconds.
    expires_at: i64,
}

#[utoipa::path(post, path = "/v1/nodes/join-tokens", tag = "nodes",
    request_body(content = Option<JoinTokenReq>, description = "optional"),
    responses((status = 201, description = "created", body = JoinToken), (status = 400, description = "bad_request: the body or query does not parse", body = ErrorBody),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody), (status = 403, description = "forbidden: this needs the admin key", body = ErrorBody),
        (status = 422, description = "ttl_seconds out of range", body = ErrorBody)))]
pub(super) async fn join_token(
    State(c): State<Arc<Control>>,
    Admin(p): Admin,
    OptionalBody(body): OptionalBody<JoinTokenReq>,
) -> ApiResult<(StatusCode, Json<JoinToken>)> {
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
        Json(JoinToken {
            token,
            expires_at: now_ms() / 1000 + ttl,
        }),
    ))
}

#[utoipa::path(post, path = "/v1/nodes/{id}/{action}", tag = "nodes",
    params(("id" = String, Path, description = "node id"),
        ("action" = String, Path, description = "drain (cordon and stop its sessions), cordon or uncordon", pattern = "^(drain|cordon|uncordon)$")),
    responses((status = 204, description = "done"), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 403, description = "forbidden: this needs the admin key", body = ErrorBody), (status = 404, description = "no such node or action", body = ErrorBody)))]
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

#[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "nodes",
    params(("id" = String, Path, description = "node id")),
    responses((status = 204, description = "removed; its sessions are lost"), (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 403, description = "forbidden: this needs the admin key", body = ErrorBody), (status = 404, description = "not_found", body = ErrorBody)))]
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
