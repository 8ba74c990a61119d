//! Who is calling. Each kind of caller is an extractor, so a handler names
//! the caller it needs in its signature and cannot forget to check it:
//! [`Caller`] (any API key), [`Admin`] (the operator's key), [`NodeCaller`]
//! (an agent's `node_id:credential`), [`RelayCaller`] (the relay secret).
//! Extractors run before the body is read: a refused caller gets 401/403
//! whatever it sent.
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::*;

/// A request with a valid API key (tenant or admin).
pub(super) struct Caller(pub Principal);

/// A request with the operator's admin key.
pub(super) struct Admin(pub Principal);

/// An agent, by its node id.
pub(super) struct NodeCaller(pub String);

/// A relay (holds the relay secret).
pub(super) struct RelayCaller;

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

impl FromRequestParts<Arc<Control>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, c: &Arc<Control>) -> ApiResult<Self> {
        principal(c, &parts.headers).await.map(Caller)
    }
}

impl FromRequestParts<Arc<Control>> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, c: &Arc<Control>) -> ApiResult<Self> {
        let p = principal(c, &parts.headers).await?;
        if !p.admin {
            return Err(ApiError::forbidden("this needs the operator's admin key"));
        }
        Ok(Admin(p))
    }
}

/// A node authenticates with `Authorization: Bearer <node_id>:<credential>`.
impl FromRequestParts<Arc<Control>> for NodeCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, c: &Arc<Control>) -> ApiResult<Self> {
        let (node, cred) = bearer(&parts.headers)
            .and_then(|b| b.split_once(':'))
            .ok_or_else(ApiError::unauthorized)?;
        if c.store.verify_node(node, cred).await? {
            Ok(NodeCaller(node.to_string()))
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

impl FromRequestParts<Arc<Control>> for RelayCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, c: &Arc<Control>) -> ApiResult<Self> {
        let ok = bearer(&parts.headers).is_some_and(|b| {
            constant_time_eq(b.as_bytes(), c.cfg.relay_secret.expose().as_bytes())
        });
        if ok {
            Ok(RelayCaller)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}
