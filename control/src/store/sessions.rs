//! Sessions and scheduling: quotas, placement by memory headroom, stop,
//! expiry, and what each node should run.
use sqlx::Row;
use std::collections::HashMap;
use warren_config::Strategy;

use super::events::{self, Change};
use super::{
    LIVE, Result, SESSION_COLS, Session, SessionStatus, Store, StoreError, bump_version, now_ms,
    session_from, sql, sql_in,
};

#[derive(Debug, Clone)]
pub struct NewSession {
    /// Chosen by the caller ([`super::random_id`]`(16)`), so that it can
    /// wait for the session's report before the session exists.
    pub id: String,
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
    /// Warm containers ready there, by pool name.
    pub warm: HashMap<String, u32>,
    /// A placement took one of them (the count is written back).
    pub warm_claimed: bool,
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
