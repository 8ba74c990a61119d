//! Share links: rows a session's owner creates and revokes. Creating or
//! revoking one changes the session's worker's desired state (its watch
//! lists the live links), so the agent learns of it within a watch round.
use sqlx::Row;
use warren_proto::share::{ShareGrant, ShareMode};

use super::{Result, Store, StoreError, bump_version, now_ms, random_id, touch_node};

/// One share link as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareRow {
    pub id: String,
    pub session: String,
    pub tenant: String,
    pub mode: ShareMode,
    pub terminal: Option<u32>,
    pub name: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What a new share link is.
pub struct NewShare<'a> {
    pub session: &'a str,
    pub node: &'a str,
    pub tenant: &'a str,
    pub mode: ShareMode,
    pub terminal: Option<u32>,
    pub name: Option<&'a str>,
    pub created_by: &'a str,
    pub expires_at: i64,
    /// Live links the session may have at once.
    pub max: i64,
}

const COLS: &str =
    "id, session_id, tenant_id, mode, terminal, name, created_by, created_at, expires_at";

fn row(r: &sqlx::any::AnyRow) -> std::result::Result<ShareRow, sqlx::Error> {
    let mode: String = r.try_get("mode")?;
    Ok(ShareRow {
        id: r.try_get("id")?,
        session: r.try_get("session_id")?,
        tenant: r.try_get("tenant_id")?,
        mode: ShareMode::parse(&mode).unwrap_or(ShareMode::Read),
        terminal: r
            .try_get::<Option<i64>, _>("terminal")?
            .and_then(|t| u32::try_from(t).ok()),
        name: r.try_get("name")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

impl Store {
    /// Stores a share link of a live session, within the session's count.
    pub async fn create_share(&self, s: NewShare<'_>) -> Result<ShareRow> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // Serialises with other changes of desired state on the lock row.
        bump_version(&mut tx).await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM shares WHERE session_id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(s.session)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        if live >= s.max {
            return Err(StoreError::QuotaExceeded(format!(
                "session {} has {live} live share links, the most it may have: revoke one first",
                s.session
            )));
        }
        let r = ShareRow {
            id: random_id(12),
            session: s.session.into(),
            tenant: s.tenant.into(),
            mode: s.mode,
            terminal: s.terminal,
            name: s.name.map(str::to_string),
            created_by: s.created_by.into(),
            created_at: now,
            expires_at: s.expires_at,
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO shares ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        )))
        .bind(&r.id)
        .bind(&r.session)
        .bind(&r.tenant)
        .bind(r.mode.as_str())
        .bind(r.terminal.map(i64::from))
        .bind(r.name.clone())
        .bind(&r.created_by)
        .bind(r.created_at)
        .bind(r.expires_at)
        .execute(&mut *tx)
        .await?;
        touch_node(&mut tx, s.node).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// A session's live share links, oldest first.
    pub async fn live_shares(&self, session: &str) -> Result<Vec<ShareRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM shares WHERE session_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at, id"
        )))
        .bind(session)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(row)
            .collect::<std::result::Result<_, _>>()?)
    }

    /// The live share links of every session placed on `node`, as its
    /// watch carries them: session id → links.
    pub async fn node_shares(
        &self,
        node: &str,
    ) -> Result<std::collections::HashMap<String, Vec<ShareGrant>>> {
        let rows = sqlx::query(
            "SELECT sh.id, sh.session_id, sh.mode, sh.terminal, sh.expires_at FROM shares sh \
             JOIN sessions s ON s.id = sh.session_id \
             WHERE s.node_id = $1 AND sh.revoked_at IS NULL AND sh.expires_at > $2",
        )
        .bind(node)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        let mut out: std::collections::HashMap<String, Vec<ShareGrant>> = Default::default();
        for r in &rows {
            let mode: String = r.try_get("mode")?;
            out.entry(r.try_get("session_id")?)
                .or_default()
                .push(ShareGrant {
                    id: r.try_get("id")?,
                    mode: ShareMode::parse(&mode).unwrap_or(ShareMode::Read),
                    terminal: r
                        .try_get::<Option<i64>, _>("terminal")?
                        .and_then(|t| u32::try_from(t).ok()),
                    expires_at_ms: r.try_get("expires_at")?,
                });
        }
        Ok(out)
    }

    /// Revokes one live share link of `session` (placed on `node`); `false`
    /// when there is no such live link.
    pub async fn revoke_share(&self, session: &str, node: &str, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        bump_version(&mut tx).await?;
        let n = sqlx::query(
            "UPDATE shares SET revoked_at = $3 WHERE id = $1 AND session_id = $2 AND revoked_at IS NULL AND expires_at > $3",
        )
        .bind(id)
        .bind(session)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            touch_node(&mut tx, node).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Forgets share links that ended (expired or revoked) before `before`.
    pub async fn purge_shares(&self, before: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM shares WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
