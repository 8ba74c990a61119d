//! The audit log: who did what to which tenant's things, and how it went.
use sqlx::Row;

use super::{Result, Store, now_ms, random_id};

/// One audit record to write: name every field, or those that differ from
/// [`NewAudit::OK`] (an `ok` outcome, no detail) and end with `..NewAudit::OK`.
#[derive(Debug, Clone, Copy)]
pub struct NewAudit<'a> {
    /// Who: an API key id, `node:ID`, `ssh:ADDR`, a token's subject, or
    /// `control` itself.
    pub actor: &'a str,
    /// The tenant whose log shows it; empty for the operator's log only.
    pub tenant: &'a str,
    /// What, e.g. `session.create`.
    pub action: &'a str,
    /// What it was done to (an id), `-` when nothing yet.
    pub target: &'a str,
    /// `ok`, `refused`, `scheduled`, `timeout`, `failed`.
    pub outcome: &'a str,
    /// Free text, kept to its first 1,000 characters.
    pub detail: &'a str,
}

impl NewAudit<'static> {
    /// The defaults for a record that went well: outcome `ok`, no detail
    /// (the other fields are empty and meant to be named).
    pub const OK: NewAudit<'static> = NewAudit {
        actor: "",
        tenant: "",
        action: "",
        target: "",
        outcome: "ok",
        detail: "",
    };
}

/// One record as read back (`GET /v1/audit`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub tenant: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
}

impl Store {
    /// Writes one record; a failed write is logged, never returned.
    pub async fn audit(&self, e: NewAudit<'_>) {
        let r = sqlx::query("INSERT INTO audit (id, at, actor, tenant_id, action, target, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(random_id(20))
            .bind(now_ms())
            .bind(e.actor)
            .bind(e.tenant)
            .bind(e.action)
            .bind(e.target)
            .bind(e.outcome)
            .bind(e.detail.chars().take(1000).collect::<String>())
            .execute(&self.pool)
            .await;
        if let Err(e) = r {
            tracing::error!("audit write failed: {e}");
        }
    }

    pub async fn audit_log(&self, tenant: Option<&str>, limit: i64) -> Result<Vec<AuditEntry>> {
        let q = "SELECT at, actor, tenant_id, action, target, outcome, detail FROM audit";
        let rows = match tenant {
            Some(t) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{q} WHERE tenant_id = $1 ORDER BY at DESC LIMIT $2"
                )))
                .bind(t)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{q} ORDER BY at DESC LIMIT $1"
                )))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    tenant: r.try_get("tenant_id")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
