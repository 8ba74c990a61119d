//! `GET /openapi.json`: the public API as an OpenAPI 3.1 document. It is
//! made from the handlers' own `#[utoipa::path]` annotations as the router
//! registers them ([`super::public`]), so what is served and what is
//! documented come from one list.
use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::*;

/// The document's frame: what the paths do not say (title, the API key
/// scheme every operation needs unless it says `security(())`, tags).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Warren control plane",
        description = "Sessions, tokens, workers, tenants and the audit log. Errors are `{\"error\": {\"code\", \"message\"}}`; docs/api.md has the rules."
    ),
    security(("api_key" = [])),
    modifiers(&ApiKeyScheme),
    tags(
        (name = "sessions", description = "sessions and their tokens"),
        (name = "events", description = "session lifecycle as server-sent events"),
        (name = "nodes", description = "workers (admin)"),
        (name = "tenants", description = "tenants and API keys (admin)"),
        (name = "ssh", description = "SSH keys and the relays' host keys"),
        (name = "audit", description = "who did what"),
        (name = "health", description = "public keys, health, metrics, this document")
    )
)]
pub(super) struct ApiDoc;

/// `api_key`: `Authorization: Bearer <key>`.
struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "an API key (`wa_…` the operator's, `wk_…` a tenant's)",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", SecurityScheme::Http(scheme));
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "health", security(()),
    responses((status = 200, description = "this document (OpenAPI 3.1)", content_type = "application/json")))]
pub(super) async fn openapi_json() -> Response {
    // The same for every router this process builds: made once.
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| super::openapi().to_json().unwrap_or_default());
    ([(CONTENT_TYPE, "application/json")], doc.as_str()).into_response()
}
