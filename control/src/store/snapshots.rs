//! Snapshots: a tenant's saved session filesystems, each an image on the
//! worker that committed it. A row exists (not ready) before the agent
//! commits, so the worker never removes an image being made; deleting a
//! row changes the worker's desired state, and its agent removes the image.
use sqlx::Row;

use super::{Result, Store, StoreError, bump_version, now_ms, random_id, touch_node};

/// One snapshot as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub session: String,
    pub node: String,
    pub ready: bool,
    pub size_bytes: i64,
    pub created_at: i64,
}

const COLS: &str = "id, tenant_id, name, session_id, node_id, ready, size_bytes, created_at";

fn row(r: &sqlx::any::AnyRow) -> std::result::Result<SnapshotRow, sqlx::Error> {
    Ok(SnapshotRow {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        session: r.try_get("session_id")?,
        node: r.try_get("node_id")?,
        ready: r.try_get::<i32, _>("ready")? != 0,
        size_bytes: r.try_get("size_bytes")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Store {
    /// Reserves a snapshot of `session` (on `node`) named `name` for
    /// `tenant`: within the tenant's count (`max`), the name unused. With
    /// the desired-state version from which watches list it.
    pub async fn begin_snapshot(
        &self,
        tenant: &str,
        name: &str,
        session: &str,
        node: &str,
        max: i64,
        max_bytes: i64,
    ) -> Result<(SnapshotRow, i64)> {
        let mut tx = self.pool.begin().await?;
        // Serialises with other reservations (and placements) on the lock row.
        bump_version(&mut tx).await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM snapshots WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM snapshots WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
        if held >= max_bytes {
            return Err(StoreError::QuotaExceeded(format!(
                "tenant {tenant} holds {} MB of snapshots, its limit (sessions.tenant_max_snapshot_mb): delete one first",
                held >> 20
            )));
        }
        if n >= max {
            return Err(StoreError::QuotaExceeded(format!(
                "tenant {tenant} may keep {max} snapshots (sessions.tenant_max_snapshots) and has {n}: delete one first"
            )));
        }
        let taken: Option<String> =
            sqlx::query_scalar("SELECT id FROM snapshots WHERE tenant_id = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!(
                "a snapshot named {name} exists: delete it or pick another name"
            )));
        }
        let s = SnapshotRow {
            id: random_id(16),
            tenant: tenant.into(),
            name: name.into(),
            session: session.into(),
            node: node.into(),
            ready: false,
            size_bytes: 0,
            created_at: now_ms(),
        };
        sqlx::query("INSERT INTO snapshots (id, tenant_id, name, session_id, node_id, ready, size_bytes, created_at) VALUES ($1, $2, $3, $4, $5, 0, 0, $6)")
            .bind(&s.id)
            .bind(&s.tenant)
            .bind(&s.name)
            .bind(&s.session)
            .bind(&s.node)
            .bind(s.created_at)
            .execute(&mut *tx)
            .await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM sched_lock WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((s, version))
    }

    /// The agent committed it: ready, with its size.
    pub async fn finish_snapshot(&self, id: &str, size_bytes: i64) -> Result<()> {
        sqlx::query("UPDATE snapshots SET ready = 1, size_bytes = $2 WHERE id = $1")
            .bind(id)
            .bind(size_bytes)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The tenant's snapshots (every tenant's for `None`), ready ones only.
    pub async fn snapshots(&self, tenant: Option<&str>) -> Result<Vec<SnapshotRow>> {
        let q = match tenant {
            Some(t) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM snapshots WHERE ready = 1 AND tenant_id = $1 ORDER BY created_at"
            )))
            .bind(t.to_string()),
            None => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM snapshots WHERE ready = 1 ORDER BY created_at"
            ))),
        };
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(row)
            .collect::<std::result::Result<_, _>>()?)
    }

    /// `tenant`'s ready snapshot called `name`.
    pub async fn snapshot(&self, tenant: &str, name: &str) -> Result<SnapshotRow> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM snapshots WHERE tenant_id = $1 AND name = $2 AND ready = 1"
        )))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| row(&r))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("snapshot {name} does not exist")))
    }

    /// Forgets a snapshot (made or failed); its worker removes the image.
    pub async fn delete_snapshot(&self, id: &str, node: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        bump_version(&mut tx).await?;
        sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        touch_node(&mut tx, node).await?;
        self.commit_change(tx).await
    }

    /// Snapshot ids `node` keeps (ready or being made).
    pub async fn node_snapshots(&self, node: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM snapshots WHERE node_id = $1 ORDER BY id")
                .bind(node)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Forgets snapshots still not ready `older_than_ms` after they began
    /// (their commit was cut off); their workers then remove the images.
    pub async fn purge_unfinished_snapshots(&self, older_than_ms: i64) -> Result<u64> {
        let cutoff = now_ms() - older_than_ms;
        let rows =
            sqlx::query("SELECT id, node_id FROM snapshots WHERE ready = 0 AND created_at < $1")
                .bind(cutoff)
                .fetch_all(&self.pool)
                .await?;
        let mut n = 0;
        for r in rows {
            let (id, node): (String, String) = (r.try_get("id")?, r.try_get("node_id")?);
            self.delete_snapshot(&id, &node).await?;
            n += 1;
        }
        Ok(n)
    }
}
