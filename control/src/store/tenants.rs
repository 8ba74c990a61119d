//! Tenants and API keys (stored hashed).
use sqlx::Row;

use super::{Result, Store, StoreError, hash, now_ms, random_id};

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub max_sessions: i64,
    pub max_memory_mb: i64,
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub tenant: String,
    pub admin: bool,
}

impl Store {
    pub async fn ensure_tenant(
        &self,
        id: &str,
        name: &str,
        max_sessions: i64,
        max_memory_mb: i64,
    ) -> Result<()> {
        let exists = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            let r = sqlx::query("INSERT INTO tenants (id, name, max_sessions, max_memory_mb, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(id)
                .bind(name)
                .bind(max_sessions)
                .bind(max_memory_mb)
                .bind(now_ms())
                .execute(&self.pool)
                .await;
            // Another replica made it at the same moment.
            if r.is_err()
                && sqlx::query("SELECT id FROM tenants WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .is_none()
            {
                r?;
            }
        }
        Ok(())
    }

    pub async fn create_tenant(
        &self,
        name: &str,
        max_sessions: i64,
        max_memory_mb: i64,
    ) -> Result<Tenant> {
        let id = format!("t{}", random_id(11));
        self.ensure_tenant(&id, name, max_sessions, max_memory_mb)
            .await?;
        Ok(Tenant {
            id,
            name: name.into(),
            max_sessions,
            max_memory_mb,
        })
    }

    pub async fn tenant(&self, id: &str) -> Result<Tenant> {
        let r =
            sqlx::query("SELECT id, name, max_sessions, max_memory_mb FROM tenants WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("tenant {id} does not exist")))?;
        Ok(Tenant {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            max_sessions: r.try_get("max_sessions")?,
            max_memory_mb: r.try_get("max_memory_mb")?,
        })
    }

    /// Stores a key (hashed); returns its id.
    pub async fn add_api_key(&self, tenant: &str, key: &str, admin: bool) -> Result<String> {
        let id = format!("k{}", random_id(11));
        sqlx::query("INSERT INTO api_keys (id, tenant_id, hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&id)
            .bind(tenant)
            .bind(hash(key))
            .bind(admin as i64)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    /// Stores the configured admin key of `tenant` unless it is stored
    /// already. Replicas starting together on one database may both try:
    /// the second insert is a no-op, not a unique-key error.
    pub async fn ensure_admin_key(&self, tenant: &str, key: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, hash, is_admin, created_at) VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(format!("k{}", random_id(11)))
        .bind(tenant)
        .bind(hash(key))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn authenticate(&self, key: &str) -> Result<Option<Principal>> {
        let r = sqlx::query("SELECT id, tenant_id, is_admin FROM api_keys WHERE hash = $1")
            .bind(hash(key))
            .fetch_optional(&self.pool)
            .await?;
        Ok(match r {
            Some(r) => Some(Principal {
                key_id: r.try_get("id")?,
                tenant: r.try_get("tenant_id")?,
                admin: r.try_get::<i64, _>("is_admin")? != 0,
            }),
            None => None,
        })
    }
}
