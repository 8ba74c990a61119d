//! SSH: the keys users register to open their sessions, and the relays'
//! host keys.
use sqlx::Row;

use super::{Result, Session, Store, StoreError, now_ms, random_id};

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SshKey {
    pub id: String,
    pub tenant: String,
    pub fingerprint: String,
    pub public_key: String,
    pub comment: String,
    pub created_at: i64,
}

impl Store {
    pub async fn add_ssh_key(
        &self,
        tenant: &str,
        api_key_id: &str,
        key: &crate::sshkeys::ParsedKey,
    ) -> Result<SshKey> {
        let id = format!("sk{}", random_id(14));
        let now = now_ms();
        let r = sqlx::query("INSERT INTO ssh_keys (id, tenant_id, api_key_id, fingerprint, public_key, comment, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&id)
            .bind(tenant)
            .bind(api_key_id)
            .bind(&key.fingerprint)
            .bind(&key.key)
            .bind(&key.comment)
            .bind(now)
            .execute(&self.pool)
            .await;
        match r {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "the key {} is already registered",
                    key.fingerprint
                )));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(SshKey {
            id,
            tenant: tenant.into(),
            fingerprint: key.fingerprint.clone(),
            public_key: key.key.clone(),
            comment: key.comment.clone(),
            created_at: now,
        })
    }

    pub async fn ssh_keys(&self, tenant: &str) -> Result<Vec<SshKey>> {
        let rows = sqlx::query("SELECT id, tenant_id, fingerprint, public_key, comment, created_at FROM ssh_keys WHERE tenant_id = $1 ORDER BY created_at LIMIT 1000")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SshKey {
                    id: r.try_get("id")?,
                    tenant: r.try_get("tenant_id")?,
                    fingerprint: r.try_get("fingerprint")?,
                    public_key: r.try_get("public_key")?,
                    comment: r.try_get("comment")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub async fn delete_ssh_key(&self, tenant: &str, id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM ssh_keys WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no SSH key {id}")));
        }
        Ok(())
    }

    /// The session (running or starting) if `fingerprint` is registered
    /// for its tenant.
    pub async fn ssh_key_opens(&self, session: &str, fingerprint: &str) -> Result<Option<Session>> {
        let s = match self.session(session).await {
            Ok(s) => s,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !s.status.is_live() {
            return Ok(None);
        }
        let found =
            sqlx::query("SELECT id FROM ssh_keys WHERE tenant_id = $1 AND fingerprint = $2")
                .bind(&s.tenant)
                .bind(fingerprint)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.map(|_| s))
    }

    pub async fn set_host_key(&self, public_key: &str, fingerprint: &str) -> Result<()> {
        let now = now_ms();
        let updated = sqlx::query(
            "UPDATE ssh_host_keys SET public_key = $1, updated_at = $2 WHERE fingerprint = $3",
        )
        .bind(public_key)
        .bind(now)
        .bind(fingerprint)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            let r = sqlx::query("INSERT INTO ssh_host_keys (fingerprint, public_key, updated_at) VALUES ($1, $2, $3)")
                .bind(fingerprint)
                .bind(public_key)
                .bind(now)
                .execute(&self.pool)
                .await;
            match r {
                // Another replica inserted it first: same key, fine.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    pub async fn host_keys(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT public_key, fingerprint FROM ssh_host_keys ORDER BY updated_at DESC LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("public_key")?, r.try_get("fingerprint")?)))
            .collect()
    }
}
