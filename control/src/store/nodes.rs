//! Nodes: join tokens, node credentials, heartbeats (with the agents'
//! reports of their sessions), the node list, cordon/drain/remove, and
//! marking silent nodes unreachable, then lost.
use sqlx::Row;

use super::events::{self, Change, RETURNING};
use super::{
    ACTIVE, HeartbeatRequest, LIVE, NodeDisk, NodeState, ReportedState, Result, SessionReport,
    SessionStatus, Store, StoreError, bump_version, constant_time_eq, hash, now_ms, random_secret,
    sql, sql_in, touch_node,
};

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Node {
    pub id: String,
    pub allocatable_mb: i64,
    pub free_mb: i64,
    pub reserved_mb: i64,
    pub state: NodeState,
    pub cordoned: bool,
    pub last_heartbeat_ms: i64,
    pub sessions: i64,
    /// The isolation profile the node's agent runs sessions with
    /// (docs/security.md); empty until its first heartbeat says.
    pub security_profile: String,
    /// Whether the node enforces per-session disk limits.
    pub disk_limits: bool,
    /// Where its agent serves Prometheus `/metrics` (`host:port`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub metrics_addr: String,
    /// Warm containers ready there, by pool (as its last heartbeat said,
    /// less those placements took since).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub warm: std::collections::BTreeMap<String, u32>,
}

impl Store {
    pub async fn create_join_token(&self, ttl_ms: i64) -> Result<String> {
        let token = random_secret("wj");
        sqlx::query(
            "INSERT INTO join_tokens (hash, expires_at, used, created_at) VALUES ($1, $2, 0, $3)",
        )
        .bind(hash(&token))
        .bind(now_ms() + ttl_ms)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Spends a join token (once) and registers the node; returns its credential.
    /// A new node joins with a one-time token. An id that exists is
    /// refused (409) before the token is spent: taking over a node's id would
    /// hand its credential, its tunnel and its sessions to whoever holds any
    /// join token. Re-joining a node is an operator's act: `warren node rm ID`
    /// first.
    pub async fn join(&self, token: &str, node_id: &str, allocatable_mb: i64) -> Result<String> {
        // The write comes first (SQLite upgrades a read lock to a write
        // lock badly under concurrency); a refusal below rolls it back, so a
        // conflicting id does not spend the token.
        let mut tx = self.pool.begin().await?;
        let spent = sqlx::query(
            "UPDATE join_tokens SET used = 1 WHERE hash = $1 AND used = 0 AND expires_at > $2",
        )
        .bind(hash(token))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() != 1 {
            return Err(StoreError::Invalid(
                "the join token is unknown, already used or expired".into(),
            ));
        }
        let existing = sqlx::query("SELECT id FROM nodes WHERE id = $1")
            .bind(node_id)
            .fetch_optional(&mut *tx)
            .await?;
        if existing.is_some() {
            return Err(StoreError::Conflict(format!(
                "node {node_id} already exists; pick another --node-id, or remove it first (warren node rm {node_id}) to re-join it"
            )));
        }
        let credential = random_secret("wn");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO nodes (id, credential_hash, allocatable_mb, free_mb, state, cordoned, last_heartbeat, created_at) \
             VALUES ($1, $2, $3, $3, {}, 0, 0, $4)",
            sql(NodeState::Joining)
        )))
        .bind(node_id)
        .bind(hash(&credential))
        .bind(allocatable_mb)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(credential)
    }

    pub async fn verify_node(&self, node_id: &str, credential: &str) -> Result<bool> {
        let r = sqlx::query("SELECT credential_hash FROM nodes WHERE id = $1")
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match r {
            Some(r) => {
                let h: String = r.try_get("credential_hash")?;
                constant_time_eq(h.as_bytes(), hash(credential).as_bytes())
            }
            None => false,
        })
    }

    /// Records a heartbeat and the agent's view of its sessions; whether a
    /// session's status changed (creates waiting on it look again then).
    /// A few statements whatever the number of sessions: one for the
    /// sessions that started, one for activity that moved.
    /// The report's figures are taken as they are: the API clamps them.
    pub async fn heartbeat(&self, node_id: &str, hb: &HeartbeatRequest) -> Result<Vec<String>> {
        let (allocatable_mb, free_mb, isolation, reports) =
            (hb.allocatable_mb, hb.free_mb, &hb.isolation, &hb.sessions);
        let metrics_addr = hb.metrics_addr.as_deref().unwrap_or("");
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let disk = hb.disk.unwrap_or(NodeDisk {
            capacity_mb: 0,
            max_session_mb: 0,
        });
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE nodes SET allocatable_mb = $1, free_mb = $2, last_heartbeat = $3, \
             state = CASE WHEN state IN {} THEN {} ELSE state END, \
             security_profile = $5, disk_limits = $6, metrics_addr = $7, \
             disk_capacity_mb = $8, disk_max_mb = $9, warm = $10 WHERE id = $4",
            sql_in(&[NodeState::Joining, NodeState::Lost, NodeState::Unreachable]),
            sql(NodeState::Ready)
        )))
        .bind(allocatable_mb)
        .bind(free_mb)
        .bind(now)
        .bind(node_id)
        .bind(&isolation.security_profile)
        .bind(isolation.disk_limits as i64)
        .bind(metrics_addr.chars().take(100).collect::<String>())
        .bind(disk.capacity_mb)
        .bind(disk.max_session_mb)
        .bind(serde_json::to_string(&hb.warm).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
        let mut changes = Vec::new();
        let present: Vec<&str> = reports.iter().map(|r| r.id.as_str()).collect();
        let running: Vec<&SessionReport> = reports
            .iter()
            .filter(|r| matches!(r.state, ReportedState::Running))
            .collect();
        if !running.is_empty() {
            let list = (0..running.len())
                .map(|i| format!("${}", i + 3))
                .collect::<Vec<_>>()
                .join(",");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE sessions SET status = {}, updated_at = $1 WHERE node_id = $2 AND status = {} AND id IN ({list}) {RETURNING}",
                sql(SessionStatus::Running),
                sql(SessionStatus::Pending)
            )))
            .bind(now)
            .bind(node_id);
            for r in &running {
                q = q.bind(&r.id);
            }
            let rows = q.fetch_all(&mut *tx).await?;
            changes.extend(Change::from_rows(&rows, SessionStatus::Running)?);
        }
        // Activity: only what moved by a second or more since this replica
        // last wrote it (an idle session reports the same time again).
        let moved: Vec<(&str, i64)> = {
            let known = self.activity.lock().unwrap_or_else(|e| e.into_inner());
            running
                .iter()
                .filter_map(|r| Some((r.id.as_str(), now - r.idle_ms?.max(0))))
                .filter(|(id, t)| known.get(*id).is_none_or(|k| *t > k + 1000))
                .collect()
        };
        if !moved.is_empty() {
            let mut case = String::from("CASE id");
            let mut list = Vec::new();
            for i in 0..moved.len() {
                let (a, b) = (2 * i + 2, 2 * i + 3);
                case.push_str(&format!(" WHEN ${a} THEN ${b}"));
                list.push(format!("${a}"));
            }
            case.push_str(" ELSE last_activity END");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE sessions SET last_activity = {case} WHERE node_id = $1 AND id IN ({})",
                list.join(",")
            )))
            .bind(node_id);
            for (id, t) in &moved {
                q = q.bind(*id).bind(*t);
            }
            q.execute(&mut *tx).await?;
        }
        let fail = format!(
            "UPDATE sessions SET status = {}, reason = $1, updated_at = $2 WHERE id = $3 AND node_id = $4 AND status = {} {RETURNING}",
            sql(SessionStatus::Failed),
            sql(SessionStatus::Pending)
        );
        for r in reports {
            if let ReportedState::Failed = r.state {
                let rows = sqlx::query(sqlx::AssertSqlSafe(fail.as_str()))
                    .bind(r.reason.chars().take(500).collect::<String>())
                    .bind(now)
                    .bind(&r.id)
                    .bind(node_id)
                    .fetch_all(&mut *tx)
                    .await?;
                changes.extend(Change::from_rows(&rows, SessionStatus::Failed)?);
            }
        }
        // Sessions being stopped that the agent no longer runs are stopped.
        let stopping = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM sessions WHERE node_id = $1 AND status = {}",
            sql(SessionStatus::Stopping)
        )))
        .bind(node_id)
        .fetch_all(&mut *tx)
        .await?;
        for row in stopping {
            let id: String = row.try_get("id")?;
            if !present.contains(&id.as_str()) {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE sessions SET status = {}, updated_at = $1 WHERE id = $2 {RETURNING}",
                    sql(SessionStatus::Stopped)
                )))
                .bind(now)
                .bind(&id)
                .fetch_all(&mut *tx)
                .await?;
                changes.extend(Change::from_rows(&rows, SessionStatus::Stopped)?);
            }
        }
        let changed: Vec<String> = changes.iter().map(|c| c.session.clone()).collect();
        events::append(&mut tx, &changes).await?;
        tx.commit().await?;
        if !changed.is_empty() {
            self.events_committed();
        }
        if !moved.is_empty() {
            let mut known = self.activity.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: forgotten entries only cost one write each.
            if known.len() > 1_000_000 {
                known.clear();
            }
            for (id, t) in moved {
                known.insert(id.to_string(), t);
            }
        }
        Ok(changed)
    }

    pub async fn nodes(&self) -> Result<Vec<Node>> {
        let active = sql_in(&ACTIVE);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT n.id, n.allocatable_mb, n.free_mb, n.state, n.cordoned, n.last_heartbeat, n.security_profile, n.disk_limits, n.metrics_addr, n.warm, \
             (SELECT CAST(COALESCE(SUM(s.memory_mb), 0) AS BIGINT) FROM sessions s WHERE s.node_id = n.id AND s.status IN {active}) AS reserved, \
             (SELECT COUNT(*) FROM sessions s WHERE s.node_id = n.id AND s.status IN {active}) AS n_sessions \
             FROM nodes n ORDER BY n.id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Node {
                    id: r.try_get("id")?,
                    allocatable_mb: r.try_get("allocatable_mb")?,
                    free_mb: r.try_get("free_mb")?,
                    reserved_mb: r.try_get("reserved")?,
                    state: {
                        let v: String = r.try_get("state")?;
                        NodeState::parse(&v).ok_or_else(|| {
                            sqlx::Error::Decode(format!("unknown node state {v:?}").into())
                        })?
                    },
                    cordoned: r.try_get::<i64, _>("cordoned")? != 0,
                    last_heartbeat_ms: r.try_get("last_heartbeat")?,
                    sessions: r.try_get("n_sessions")?,
                    security_profile: r.try_get("security_profile")?,
                    disk_limits: r.try_get::<i64, _>("disk_limits")? != 0,
                    metrics_addr: r.try_get("metrics_addr")?,
                    warm: serde_json::from_str::<Vec<warren_proto::internal::WarmCount>>(
                        &r.try_get::<String, _>("warm")?,
                    )
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|w| w.ready > 0)
                    .map(|w| (w.pool, w.ready))
                    .collect(),
                })
            })
            .collect()
    }

    /// `cordon` (no new sessions), `uncordon`, or `drain` (cordon and stop its sessions).
    pub async fn node_action(&self, node_id: &str, action: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        bump_version(&mut tx).await?;
        touch_node(&mut tx, node_id).await?;
        let mut changes = Vec::new();
        let n = match action {
            "cordon" => sqlx::query("UPDATE nodes SET cordoned = 1 WHERE id = $1").bind(node_id).execute(&mut *tx).await?,
            "uncordon" => sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE nodes SET cordoned = 0, state = CASE WHEN state = {} THEN {} ELSE state END WHERE id = $1", sql(NodeState::Draining), sql(NodeState::Ready)))).bind(node_id).execute(&mut *tx).await?,
            "drain" => {
                let n = sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE nodes SET cordoned = 1, state = {} WHERE id = $1", sql(NodeState::Draining)))).bind(node_id).execute(&mut *tx).await?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE sessions SET status = {}, reason = 'node drained', updated_at = $1 WHERE node_id = $2 AND status IN {} {RETURNING}", sql(SessionStatus::Stopping), sql_in(&LIVE))))
                    .bind(now_ms())
                    .bind(node_id)
                    .fetch_all(&mut *tx)
                    .await?;
                changes = Change::from_rows(&rows, SessionStatus::Stopping)?;
                n
            }
            "remove" => {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE sessions SET status = {}, reason = 'node removed', updated_at = $1 WHERE node_id = $2 AND status IN {} {RETURNING}", sql(SessionStatus::Lost), sql_in(&ACTIVE))))
                    .bind(now_ms())
                    .bind(node_id)
                    .fetch_all(&mut *tx)
                    .await?;
                changes = Change::from_rows(&rows, SessionStatus::Lost)?;
                sqlx::query("DELETE FROM nodes WHERE id = $1").bind(node_id).execute(&mut *tx).await?
            }
            other => return Err(StoreError::Invalid(format!("unknown node action {other}"))),
        };
        if n.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "node {node_id} does not exist"
            )));
        }
        events::append(&mut tx, &changes).await?;
        self.commit_change(tx).await?;
        Ok(())
    }

    /// Marks nodes without a recent heartbeat lost, with their sessions.
    /// Nodes silent for `timeout_ms` become unreachable (no new sessions;
    /// theirs keep running); unreachable ones silent `grace_ms` longer become
    /// lost with their sessions. Returns `(unreachable, lost)` node ids.
    pub async fn mark_lost(
        &self,
        timeout_ms: i64,
        grace_ms: i64,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let now = now_ms();
        // Most ticks find nothing: look before taking the lock row (and
        // moving the version, which would wake every watch).
        let up = sql_in(&[NodeState::Ready, NodeState::Draining]);
        let state_unreachable = sql(NodeState::Unreachable);
        let due: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM nodes WHERE (state IN {up} AND last_heartbeat < $1) \
             OR (state = {state_unreachable} AND last_heartbeat < $2)",
        )))
        .bind(now - timeout_ms)
        .bind(now - timeout_ms - grace_ms)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        if due == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut tx = self.pool.begin().await?;
        bump_version(&mut tx).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM nodes WHERE state IN {up} AND last_heartbeat < $1",
        )))
        .bind(now - timeout_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut unreachable = Vec::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE nodes SET state = {state_unreachable} WHERE id = $1"
            )))
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            unreachable.push(id);
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM nodes WHERE state = {state_unreachable} AND last_heartbeat < $1"
        )))
        .bind(now - timeout_ms - grace_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut lost = Vec::new();
        let mut changes = Vec::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE nodes SET state = {} WHERE id = $1",
                sql(NodeState::Lost)
            )))
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE sessions SET status = {}, reason = 'its node stopped answering', updated_at = $1 WHERE node_id = $2 AND status IN {} {RETURNING}", sql(SessionStatus::Lost), sql_in(&ACTIVE))))
                .bind(now_ms())
                .bind(&id)
                .fetch_all(&mut *tx)
                .await?;
            changes.extend(Change::from_rows(&rows, SessionStatus::Lost)?);
            touch_node(&mut tx, &id).await?;
            lost.push(id);
        }
        events::append(&mut tx, &changes).await?;
        self.commit_change(tx).await?;
        Ok((unreachable, lost))
    }
}
