//! Sessions and scheduling: quotas, placement by memory headroom, stop,
//! expiry, and what each node should run.
use sqlx::Row;
use std::collections::HashMap;
use warren_config::Strategy;

use super::events::{self, Change};
use super::{
    ACTIVE, LIVE, NodeState, Result, SESSION_COLS, Session, SessionStatus, Store, StoreError,
    bump_version, now_ms, random_id, session_from, sql, sql_in, touch_node,
};

#[derive(Debug, Clone)]
pub struct NewSession {
    pub image: String,
    pub memory_mb: i64,
    pub millicpus: i64,
    pub disk_mb: i64,
    /// The caller asked for this disk (not the default): only nodes that
    /// limit session disks may take it.
    pub disk_asked: bool,
    /// Checked against the operator's settings already.
    pub egress: warren_proto::egress::Egress,
    /// Only this node may take it (a snapshot lives on one worker).
    pub node: Option<String>,
    pub ttl_ms: i64,
    pub idle_timeout_ms: i64,
}

/// A node that could take a session: its id, memory and disk figures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Candidate {
    pub id: String,
    pub allocatable_mb: i64,
    pub free_mb: i64,
    pub reserved_mb: i64,
    /// Disk offered to sessions in all (0: the node does not limit session
    /// disks, and they are not counted there).
    pub disk_capacity_mb: i64,
    /// The most disk one session may have there.
    pub disk_max_mb: i64,
    /// Disk its live sessions hold.
    pub disk_reserved_mb: i64,
}

impl Candidate {
    /// What is not reserved, bounded by what the node reports free.
    pub fn headroom_mb(&self) -> i64 {
        (self.allocatable_mb - self.reserved_mb).min(self.free_mb)
    }

    /// Whether a session disk of `disk_mb` fits: within the node's
    /// per-session maximum and what it has not promised yet. A node that
    /// does not limit disk (capacity 0) takes only disks nobody asked for,
    /// and runs them without a limit.
    pub fn disk_fits(&self, disk_mb: i64, asked: bool) -> bool {
        if self.disk_capacity_mb == 0 {
            return !asked;
        }
        disk_mb <= self.disk_max_mb && self.disk_reserved_mb + disk_mb <= self.disk_capacity_mb
    }
}

/// Picks the node for a session of `memory_mb`: among those with enough
/// headroom, the most (spread) or the least (binpack); ties go to the
/// first in `candidates` order. `None` when none has room.
pub fn pick_node(
    candidates: &[Candidate],
    memory_mb: i64,
    disk: (i64, bool),
    strategy: Strategy,
) -> Option<&Candidate> {
    let mut best: Option<&Candidate> = None;
    for c in candidates
        .iter()
        .filter(|c| c.headroom_mb() >= memory_mb && c.disk_fits(disk.0, disk.1))
    {
        let better = match (best, strategy) {
            (None, _) => true,
            (Some(b), Strategy::Spread) => c.headroom_mb() > b.headroom_mb(),
            (Some(b), Strategy::Binpack) => c.headroom_mb() < b.headroom_mb(),
        };
        if better {
            best = Some(c);
        }
    }
    best
}

impl Store {
    /// Checks the tenant's quota, picks a node by memory headroom and
    /// reserves the memory, all in one transaction.
    pub async fn create_session(
        &self,
        tenant: &str,
        spec: &NewSession,
        strategy: Strategy,
        heartbeat_timeout_ms: i64,
        tenant_disk_default_mb: i64,
    ) -> Result<Session> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        bump_version(&mut tx).await?;
        let t = sqlx::query(
            "SELECT max_sessions, max_memory_mb, max_disk_mb FROM tenants WHERE id = $1",
        )
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("tenant {tenant} does not exist")))?;
        let (max_s, max_m): (i64, i64) = (t.try_get("max_sessions")?, t.try_get("max_memory_mb")?);
        let max_d = match t.try_get::<i64, _>("max_disk_mb")? {
            0 => tenant_disk_default_mb,
            set => set,
        };
        let active = sql_in(&ACTIVE);
        let u = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) AS n, CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT) AS m, CAST(COALESCE(SUM(disk_mb), 0) AS BIGINT) AS d FROM sessions WHERE tenant_id = $1 AND status IN {active}")))
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await?;
        let (n, m, d): (i64, i64, i64) = (u.try_get("n")?, u.try_get("m")?, u.try_get("d")?);
        if n + 1 > max_s {
            return Err(StoreError::QuotaExceeded(format!(
                "tenant {tenant} may run {max_s} sessions at once and runs {n}"
            )));
        }
        if m + spec.memory_mb > max_m {
            return Err(StoreError::QuotaExceeded(format!(
                "tenant {tenant} may use {max_m} MB in all; {m} MB are in use and {} MB were asked for",
                spec.memory_mb
            )));
        }
        if d + spec.disk_mb > max_d {
            return Err(StoreError::QuotaExceeded(format!(
                "tenant {tenant} may hold {max_d} MB of disk in all; {d} MB are held and {} MB were asked for",
                spec.disk_mb
            )));
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT n.id, n.allocatable_mb, n.free_mb, n.disk_capacity_mb, n.disk_max_mb, \
             (SELECT CAST(COALESCE(SUM(s.memory_mb), 0) AS BIGINT) FROM sessions s WHERE s.node_id = n.id AND s.status IN {active}) AS reserved, \
             (SELECT CAST(COALESCE(SUM(s.disk_mb), 0) AS BIGINT) FROM sessions s WHERE s.node_id = n.id AND s.status IN {active}) AS disk_reserved \
             FROM nodes n WHERE n.state = {} AND n.cordoned = 0 AND n.last_heartbeat > $1 ORDER BY n.id",
            sql(NodeState::Ready)
        )))
        .bind(now - heartbeat_timeout_ms)
        .fetch_all(&mut *tx)
        .await?;
        let candidates = rows
            .iter()
            .map(|r| {
                Ok(Candidate {
                    id: r.try_get("id")?,
                    allocatable_mb: r.try_get("allocatable_mb")?,
                    free_mb: r.try_get("free_mb")?,
                    reserved_mb: r.try_get("reserved")?,
                    disk_capacity_mb: r.try_get("disk_capacity_mb")?,
                    disk_max_mb: r.try_get("disk_max_mb")?,
                    disk_reserved_mb: r.try_get("disk_reserved")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        // A session from a snapshot starts where its image is, or not at all.
        let candidates: Vec<Candidate> = candidates
            .into_iter()
            .filter(|c| spec.node.as_ref().is_none_or(|n| &c.id == n))
            .collect();
        let Some(node) = pick_node(
            &candidates,
            spec.memory_mb,
            (spec.disk_mb, spec.disk_asked),
            strategy,
        )
        .map(|c| c.id.clone()) else {
            // The ask, not the cluster's load, is wrong: a disk no node can
            // limit, or more than every node allows one session.
            if spec.disk_asked
                && !candidates.is_empty()
                && candidates.iter().all(|c| c.disk_capacity_mb == 0)
            {
                return Err(StoreError::Invalid(
                    "no ready node can limit a session's disk; create it without disk_mb".into(),
                ));
            }
            if !candidates.is_empty()
                && candidates
                    .iter()
                    .all(|c| c.disk_capacity_mb > 0 && spec.disk_mb > c.disk_max_mb)
            {
                let most = candidates.iter().map(|c| c.disk_max_mb).max().unwrap_or(0);
                return Err(StoreError::Invalid(format!(
                    "disk_mb {} is more than any node allows a session ({most} MB)",
                    spec.disk_mb
                )));
            }
            if let Some(n) = &spec.node {
                return Err(StoreError::NoCapacity(format!(
                    "node {n}, which holds the snapshot, is not ready or has no room for {} MB of memory and {} MB of disk",
                    spec.memory_mb, spec.disk_mb
                )));
            }
            return Err(StoreError::NoCapacity(format!(
                "no ready node has {} MB of memory and {} MB of disk headroom ({} ready nodes)",
                spec.memory_mb,
                spec.disk_mb,
                rows.len()
            )));
        };
        let id = random_id(16);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO sessions (id, tenant_id, node_id, status, reason, image, memory_mb, millicpus, created_at, expires_at, idle_timeout_ms, last_activity, updated_at, disk_mb, egress) \
             VALUES ($1, $2, $3, {}, '', $4, $5, $6, $7, $8, $9, $7, $7, $10, $11)",
            sql(SessionStatus::Pending)
        )))
        .bind(&id)
        .bind(tenant)
        .bind(&node)
        .bind(&spec.image)
        .bind(spec.memory_mb)
        .bind(spec.millicpus)
        .bind(now)
        .bind(now + spec.ttl_ms)
        .bind(spec.idle_timeout_ms)
        .bind(spec.disk_mb)
        .bind(spec.egress.to_text())
        .execute(&mut *tx)
        .await?;
        touch_node(&mut tx, &node).await?;
        let created = Change {
            session: id.clone(),
            tenant: tenant.to_string(),
            node: node.clone(),
            status: SessionStatus::Pending,
            reason: String::new(),
        };
        events::append(&mut tx, &[created]).await?;
        self.commit_change(tx).await?;
        self.session(&id).await
    }

    pub async fn session(&self, id: &str) -> Result<Session> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("session {id} does not exist")))?;
        Ok(session_from(&r)?)
    }

    pub async fn sessions(&self, tenant: Option<&str>) -> Result<Vec<Session>> {
        let rows = match tenant {
            Some(t) => sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {SESSION_COLS} FROM sessions WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT 1000"))).bind(t).fetch_all(&self.pool).await?,
            None => sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {SESSION_COLS} FROM sessions ORDER BY created_at DESC LIMIT 1000"))).fetch_all(&self.pool).await?,
        };
        rows.iter()
            .map(|r| session_from(r).map_err(StoreError::from))
            .collect()
    }

    pub async fn stop_session(&self, id: &str, reason: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        bump_version(&mut tx).await?;
        let stopped = sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE sessions SET status = {}, reason = $1, updated_at = $2 WHERE id = $3 AND status IN {} {}", sql(SessionStatus::Stopping), sql_in(&LIVE), events::RETURNING)))
            .bind(reason)
            .bind(now_ms())
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE nodes SET desired_version = (SELECT version FROM sched_lock WHERE id = 1) \
             WHERE id = (SELECT node_id FROM sessions WHERE id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let changes = Change::from_rows(&stopped, SessionStatus::Stopping)?;
        events::append(&mut tx, &changes).await?;
        self.commit_change(tx).await?;
        Ok(())
    }

    /// Sessions past their TTL or idle timeout; they are set stopping.
    pub async fn expire(&self) -> Result<Vec<(String, String, String)>> {
        let now = now_ms();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, tenant_id, expires_at, last_activity, idle_timeout_ms FROM sessions WHERE status = {} AND (expires_at < $1 OR last_activity + idle_timeout_ms < $1)",
            sql(SessionStatus::Running)
        )))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let (id, tenant, exp): (String, String, i64) = (
                r.try_get("id")?,
                r.try_get("tenant_id")?,
                r.try_get("expires_at")?,
            );
            let reason = if exp < now {
                "ttl expired"
            } else {
                "idle timeout"
            };
            self.stop_session(&id, reason).await?;
            out.push((id, tenant, reason.to_string()));
        }
        Ok(out)
    }

    /// Sessions a node should run, and the version to watch from.
    pub async fn desired(&self, node_id: &str) -> Result<(i64, Vec<Session>)> {
        let v = self.version().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE node_id = $1 AND status IN {}",
            sql_in(&LIVE)
        )))
        .bind(node_id)
        .fetch_all(&self.pool)
        .await?;
        let s = rows
            .iter()
            .map(session_from)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((v, s))
    }

    /// Sessions by status, for metrics.
    pub async fn session_counts(&self) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM sessions GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, alloc: i64, free: i64, reserved: i64) -> Candidate {
        Candidate {
            id: id.into(),
            allocatable_mb: alloc,
            free_mb: free,
            reserved_mb: reserved,
            ..Default::default()
        }
    }

    #[test]
    fn placement_spreads_or_packs_by_headroom() {
        let nodes = [
            node("a", 4096, 4096, 1024), // headroom 3072
            node("b", 8192, 2048, 0),    // free bounds it: 2048
            node("c", 8192, 8192, 7680), // 512
        ];
        let pick = |mb, s| pick_node(&nodes, mb, (0, false), s).map(|c| c.id.as_str());
        assert_eq!(pick(256, Strategy::Spread), Some("a"));
        assert_eq!(pick(256, Strategy::Binpack), Some("c"));
        // c has too little room for 1 GiB; b is the tightest that fits.
        assert_eq!(pick(1024, Strategy::Binpack), Some("b"));
        assert_eq!(pick(3072, Strategy::Binpack), Some("a"));
        assert_eq!(pick(3073, Strategy::Spread), None);
        assert_eq!(pick_node(&[], 1, (0, false), Strategy::Spread), None);
        // Ties go to the first (ids come ordered from the database).
        let tied = [node("x", 1000, 1000, 0), node("y", 1000, 1000, 0)];
        assert_eq!(
            pick_node(&tied, 10, (0, false), Strategy::Spread).map(|c| c.id.as_str()),
            Some("x")
        );
        assert_eq!(
            pick_node(&tied, 10, (0, false), Strategy::Binpack).map(|c| c.id.as_str()),
            Some("x")
        );
    }

    #[test]
    fn disk_is_placed_like_memory_and_never_over_promised() {
        let disk = |id: &str, cap, max, held| Candidate {
            disk_capacity_mb: cap,
            disk_max_mb: max,
            disk_reserved_mb: held,
            ..node(id, 4096, 4096, 0)
        };
        let nodes = [disk("a", 10_000, 4096, 8_000), disk("b", 10_000, 2048, 0)];
        let pick = |mb| pick_node(&nodes, 256, (mb, true), Strategy::Spread).map(|c| c.id.as_str());
        // a has 2,000 MB left, b allows 2,048 per session.
        assert_eq!(pick(2048), Some("b"), "a has 2,000 MB left");
        assert_eq!(pick(2049), None, "over b's maximum and a's room");
        assert_eq!(pick(1000), Some("a"));
        // Sparse files or not, a node never promises more than it offers.
        let full = [disk("c", 10_000, 10_000, 9_999)];
        assert_eq!(pick_node(&full, 256, (2, false), Strategy::Spread), None);
        // A node that does not limit disk does not count it, and takes only
        // disks nobody asked for.
        let unlimited = [node("d", 4096, 4096, 0)];
        assert!(pick_node(&unlimited, 256, (1_000_000, false), Strategy::Spread).is_some());
        assert!(pick_node(&unlimited, 256, (64, true), Strategy::Spread).is_none());
    }
}
