//! The store: one set of migrations and queries for SQLite (the embedded
//! default) and PostgreSQL (several control replicas), chosen by the URL.
//! Every scheduling transaction first updates the `sched_lock` row, which
//! serialises placements across replicas without over-commit.
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

use warren_config::Strategy;

pub const ACTIVE: &str = "('pending','running','stopping')";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lowercase letters and digits, unguessable (`n` × ~5.2 bits).
pub fn random_id(n: usize) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::rng();
    (0..n)
        .map(|_| A[r.random_range(0..A.len())] as char)
        .collect()
}

/// A high-entropy secret with a recognisable prefix.
pub fn random_secret(prefix: &str) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut r = rand::rng();
    let body: String = (0..40)
        .map(|_| A[r.random_range(0..A.len())] as char)
        .collect();
    format!("{prefix}_{body}")
}

/// Secrets are stored as SHA-256 (they have 238 bits of entropy, so a fast
/// hash is enough).
pub fn hash(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub max_sessions: i64,
    pub max_memory_mb: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SshKey {
    pub id: String,
    pub tenant: String,
    pub fingerprint: String,
    pub public_key: String,
    pub comment: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub tenant: String,
    pub admin: bool,
}

pub use warren_proto::api::SessionStatus;

/// A node's state (the `state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Joining,
    Ready,
    Draining,
    /// No heartbeat lately: no new sessions; its sessions keep running.
    Unreachable,
    Lost,
}

impl NodeState {
    pub const ALL: [NodeState; 5] = [
        Self::Ready,
        Self::Unreachable,
        Self::Lost,
        Self::Draining,
        Self::Joining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Unreachable => "unreachable",
            NodeState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
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
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Session {
    pub id: String,
    pub tenant: String,
    pub node: String,
    pub status: SessionStatus,
    pub reason: String,
    pub image: String,
    pub memory_mb: i64,
    pub millicpus: i64,
    /// Disk limit in MB; 0: the node's default.
    pub disk_mb: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub idle_timeout_ms: i64,
    pub last_activity: i64,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub image: String,
    pub memory_mb: i64,
    pub millicpus: i64,
    pub disk_mb: i64,
    pub ttl_ms: i64,
    pub idle_timeout_ms: i64,
}

pub use warren_proto::internal::{NodeIsolation, ReportedState, SessionReport};

#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub tenant: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
}

fn session_from(r: &AnyRow) -> std::result::Result<Session, sqlx::Error> {
    Ok(Session {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant_id")?,
        node: r.try_get("node_id")?,
        status: {
            let v: String = r.try_get("status")?;
            SessionStatus::parse(&v).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown session status {v:?}").into())
            })?
        },
        reason: r.try_get("reason")?,
        image: r.try_get("image")?,
        memory_mb: r.try_get("memory_mb")?,
        millicpus: r.try_get("millicpus")?,
        disk_mb: r.try_get("disk_mb")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        idle_timeout_ms: r.try_get("idle_timeout_ms")?,
        last_activity: r.try_get("last_activity")?,
    })
}

const SESSION_COLS: &str = "id, tenant_id, node_id, status, reason, image, memory_mb, millicpus, disk_mb, created_at, expires_at, idle_timeout_ms, last_activity";

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Woken whenever this replica changes the desired state (after the
    /// commit), so watches answer at once. Other replicas' changes are seen
    /// through the version row.
    changed: Arc<Notify>,
    /// What this replica knows of each node's desired version, followed by
    /// one task ([`Store::follow_changes`]) for every watch.
    follow: Arc<Follow>,
    /// Last activity written per session, so an idle session's heartbeat
    /// report (the same time again) costs no write.
    activity: Arc<std::sync::Mutex<HashMap<String, i64>>>,
}

#[derive(Default)]
struct Follow {
    /// Node id → the desired version at which its sessions last changed.
    nodes: std::sync::Mutex<HashMap<String, i64>>,
    /// The global version read last.
    seen: std::sync::atomic::AtomicI64,
    /// Bumped whenever a node's entry moves: watches look again.
    tick: tokio::sync::watch::Sender<u64>,
}

/// Marks `node`'s sessions as changed at the version this transaction
/// bumped to (its watch answers; other nodes' watches sleep on).
async fn touch_node(tx: &mut sqlx::Transaction<'_, sqlx::Any>, node: &str) -> Result<()> {
    sqlx::query(
        "UPDATE nodes SET desired_version = (SELECT version FROM sched_lock WHERE id = 1) WHERE id = $1",
    )
    .bind(node)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Bumps the desired-state version: every scheduling transaction does this
/// first, which also serialises placements on the lock row.
async fn bump_version(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
    sqlx::query("UPDATE sched_lock SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A node that could take a session: its id and memory figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub allocatable_mb: i64,
    pub free_mb: i64,
    pub reserved_mb: i64,
}

impl Candidate {
    /// What is not reserved, bounded by what the node reports free.
    pub fn headroom_mb(&self) -> i64 {
        (self.allocatable_mb - self.reserved_mb).min(self.free_mb)
    }
}

/// Picks the node for a session of `memory_mb`: among those with enough
/// headroom, the most (spread) or the least (binpack); ties go to the
/// first in `candidates` order. `None` when none has room.
pub fn pick_node(
    candidates: &[Candidate],
    memory_mb: i64,
    strategy: Strategy,
) -> Option<&Candidate> {
    let mut best: Option<&Candidate> = None;
    for c in candidates.iter().filter(|c| c.headroom_mb() >= memory_mb) {
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
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if url.starts_with("sqlite:") { 4 } else { 16 })
            .acquire_timeout(std::time::Duration::from_secs(30))
            // SQLite writers wait for each other (placements serialise on
            // the lock row) instead of failing with SQLITE_BUSY.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        sqlx::query("PRAGMA busy_timeout = 30000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Db(e.into()))?;
        Ok(Store {
            pool,
            changed: Arc::new(Notify::new()),
            follow: Arc::default(),
            activity: Arc::default(),
        })
    }

    /// Reads the global version and, when it moved, which nodes' sessions
    /// changed since (one query each): what watches wait on. Run by one
    /// task per replica, at once after a local change and every 500 ms for
    /// other replicas' changes.
    pub async fn follow_changes(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let v = self.version().await?;
        let seen = self.follow.seen.load(Ordering::Acquire);
        if v == seen {
            return Ok(());
        }
        let rows = sqlx::query("SELECT id, desired_version FROM nodes WHERE desired_version > $1")
            .bind(seen)
            .fetch_all(&self.pool)
            .await?;
        {
            let mut nodes = self.follow.nodes.lock().unwrap_or_else(|e| e.into_inner());
            for r in rows {
                nodes.insert(r.try_get("id")?, r.try_get("desired_version")?);
            }
        }
        self.follow.seen.store(v, Ordering::Release);
        self.follow.tick.send_modify(|t| *t += 1);
        Ok(())
    }

    /// The desired version at which `node`'s sessions last changed, as
    /// last followed (0 when not known yet).
    pub fn node_version(&self, node: &str) -> i64 {
        self.follow
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .copied()
            .unwrap_or(0)
    }

    /// Changes whenever [`Store::follow_changes`] saw a node change.
    pub fn follow_ticks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.follow.tick.subscribe()
    }

    /// Resolves when this replica next changes the desired state.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Commits a transaction that changed the desired state, then wakes
    /// the watches waiting on this replica.
    async fn commit_change(&self, tx: sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
        tx.commit().await?;
        self.changed.notify_waiters();
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    // ---- tenants and keys -------------------------------------------------

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

    // ---- workers ------------------------------------------------------------

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
        sqlx::query(
            "INSERT INTO nodes (id, credential_hash, allocatable_mb, free_mb, state, cordoned, last_heartbeat, created_at) \
             VALUES ($1, $2, $3, $3, 'joining', 0, 0, $4)",
        )
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
                crate::api::auth::constant_time_eq(h.as_bytes(), hash(credential).as_bytes())
            }
            None => false,
        })
    }

    /// Records a heartbeat and the agent's view of its sessions; whether a
    /// session's status changed (creates waiting on it look again then).
    /// A few statements whatever the number of sessions: one for the
    /// sessions that started, one for activity that moved.
    pub async fn heartbeat(
        &self,
        node_id: &str,
        allocatable_mb: i64,
        free_mb: i64,
        isolation: &NodeIsolation,
        metrics_addr: &str,
        reports: &[SessionReport],
    ) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE nodes SET allocatable_mb = $1, free_mb = $2, last_heartbeat = $3, \
             state = CASE WHEN state IN ('joining','lost','unreachable') THEN 'ready' ELSE state END, \
             security_profile = $5, disk_limits = $6, metrics_addr = $7 WHERE id = $4",
        )
        .bind(allocatable_mb)
        .bind(free_mb)
        .bind(now)
        .bind(node_id)
        .bind(&isolation.security_profile)
        .bind(isolation.disk_limits as i64)
        .bind(metrics_addr.chars().take(100).collect::<String>())
        .execute(&mut *tx)
        .await?;
        let mut changed = false;
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
                "UPDATE sessions SET status = 'running', updated_at = $1 WHERE node_id = $2 AND status = 'pending' AND id IN ({list})"
            )))
            .bind(now)
            .bind(node_id);
            for r in &running {
                q = q.bind(&r.id);
            }
            changed |= q.execute(&mut *tx).await?.rows_affected() > 0;
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
        for r in reports {
            if let ReportedState::Failed = r.state {
                changed |= sqlx::query("UPDATE sessions SET status = 'failed', reason = $1, updated_at = $2 WHERE id = $3 AND node_id = $4 AND status = 'pending'")
                    .bind(r.reason.chars().take(500).collect::<String>())
                    .bind(now)
                    .bind(&r.id)
                    .bind(node_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
            }
        }
        // Sessions being stopped that the agent no longer runs are stopped.
        let stopping =
            sqlx::query("SELECT id FROM sessions WHERE node_id = $1 AND status = 'stopping'")
                .bind(node_id)
                .fetch_all(&mut *tx)
                .await?;
        for row in stopping {
            let id: String = row.try_get("id")?;
            if !present.contains(&id.as_str()) {
                sqlx::query(
                    "UPDATE sessions SET status = 'stopped', updated_at = $1 WHERE id = $2",
                )
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
                changed = true;
            }
        }
        tx.commit().await?;
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
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT n.id, n.allocatable_mb, n.free_mb, n.state, n.cordoned, n.last_heartbeat, n.security_profile, n.disk_limits, n.metrics_addr, \
             (SELECT CAST(COALESCE(SUM(s.memory_mb), 0) AS BIGINT) FROM sessions s WHERE s.node_id = n.id AND s.status IN {ACTIVE}) AS reserved, \
             (SELECT COUNT(*) FROM sessions s WHERE s.node_id = n.id AND s.status IN {ACTIVE}) AS n_sessions \
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
                })
            })
            .collect()
    }

    /// `cordon` (no new sessions), `uncordon`, or `drain` (cordon and stop its sessions).
    pub async fn node_action(&self, node_id: &str, action: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        bump_version(&mut tx).await?;
        touch_node(&mut tx, node_id).await?;
        let n = match action {
            "cordon" => sqlx::query("UPDATE nodes SET cordoned = 1 WHERE id = $1").bind(node_id).execute(&mut *tx).await?,
            "uncordon" => sqlx::query("UPDATE nodes SET cordoned = 0, state = CASE WHEN state = 'draining' THEN 'ready' ELSE state END WHERE id = $1").bind(node_id).execute(&mut *tx).await?,
            "drain" => {
                let n = sqlx::query("UPDATE nodes SET cordoned = 1, state = 'draining' WHERE id = $1").bind(node_id).execute(&mut *tx).await?;
                sqlx::query("UPDATE sessions SET status = 'stopping', reason = 'node drained', updated_at = $1 WHERE node_id = $2 AND status IN ('pending','running')")
                    .bind(now_ms())
                    .bind(node_id)
                    .execute(&mut *tx)
                    .await?;
                n
            }
            "remove" => {
                sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE sessions SET status = 'lost', reason = 'node removed', updated_at = $1 WHERE node_id = $2 AND status IN {ACTIVE}")))
                    .bind(now_ms())
                    .bind(node_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM nodes WHERE id = $1").bind(node_id).execute(&mut *tx).await?
            }
            other => return Err(StoreError::Invalid(format!("unknown node action {other}"))),
        };
        if n.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "node {node_id} does not exist"
            )));
        }
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
        let due: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM nodes WHERE (state IN ('ready','draining') AND last_heartbeat < $1) \
             OR (state = 'unreachable' AND last_heartbeat < $2)",
        )
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
        let rows = sqlx::query(
            "SELECT id FROM nodes WHERE state IN ('ready','draining') AND last_heartbeat < $1",
        )
        .bind(now - timeout_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut unreachable = Vec::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            sqlx::query("UPDATE nodes SET state = 'unreachable' WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            unreachable.push(id);
        }
        let rows =
            sqlx::query("SELECT id FROM nodes WHERE state = 'unreachable' AND last_heartbeat < $1")
                .bind(now - timeout_ms - grace_ms)
                .fetch_all(&mut *tx)
                .await?;
        let mut lost = Vec::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            sqlx::query("UPDATE nodes SET state = 'lost' WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE sessions SET status = 'lost', reason = 'its node stopped answering', updated_at = $1 WHERE node_id = $2 AND status IN {ACTIVE}")))
                .bind(now_ms())
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            touch_node(&mut tx, &id).await?;
            lost.push(id);
        }
        self.commit_change(tx).await?;
        Ok((unreachable, lost))
    }

    // ---- sessions -------------------------------------------------------------

    /// Checks the tenant's quota, picks a node by memory headroom and
    /// reserves the memory, all in one transaction.
    pub async fn create_session(
        &self,
        tenant: &str,
        spec: &NewSession,
        strategy: Strategy,
        heartbeat_timeout_ms: i64,
    ) -> Result<Session> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        bump_version(&mut tx).await?;
        let t = sqlx::query("SELECT max_sessions, max_memory_mb FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("tenant {tenant} does not exist")))?;
        let (max_s, max_m): (i64, i64) = (t.try_get("max_sessions")?, t.try_get("max_memory_mb")?);
        let u = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) AS n, CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT) AS m FROM sessions WHERE tenant_id = $1 AND status IN {ACTIVE}")))
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await?;
        let (n, m): (i64, i64) = (u.try_get("n")?, u.try_get("m")?);
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
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT n.id, n.allocatable_mb, n.free_mb, \
             (SELECT CAST(COALESCE(SUM(s.memory_mb), 0) AS BIGINT) FROM sessions s WHERE s.node_id = n.id AND s.status IN {ACTIVE}) AS reserved \
             FROM nodes n WHERE n.state = 'ready' AND n.cordoned = 0 AND n.last_heartbeat > $1 ORDER BY n.id"
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
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        let Some(node) = pick_node(&candidates, spec.memory_mb, strategy).map(|c| c.id.clone())
        else {
            return Err(StoreError::NoCapacity(format!(
                "no ready node has {} MB of memory headroom ({} ready nodes)",
                spec.memory_mb,
                rows.len()
            )));
        };
        let id = random_id(16);
        sqlx::query(
            "INSERT INTO sessions (id, tenant_id, node_id, status, reason, image, memory_mb, millicpus, created_at, expires_at, idle_timeout_ms, last_activity, updated_at, disk_mb) \
             VALUES ($1, $2, $3, 'pending', '', $4, $5, $6, $7, $8, $9, $7, $7, $10)",
        )
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
        .execute(&mut *tx)
        .await?;
        touch_node(&mut tx, &node).await?;
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
        sqlx::query("UPDATE sessions SET status = 'stopping', reason = $1, updated_at = $2 WHERE id = $3 AND status IN ('pending','running')")
            .bind(reason)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE nodes SET desired_version = (SELECT version FROM sched_lock WHERE id = 1) \
             WHERE id = (SELECT node_id FROM sessions WHERE id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        self.commit_change(tx).await?;
        Ok(())
    }

    /// Sessions past their TTL or idle timeout; they are set stopping.
    pub async fn expire(&self) -> Result<Vec<(String, String, String)>> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT id, tenant_id, expires_at, last_activity, idle_timeout_ms FROM sessions WHERE status = 'running' AND (expires_at < $1 OR last_activity + idle_timeout_ms < $1)",
        )
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
        let v: i64 = sqlx::query("SELECT version FROM sched_lock WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("version")?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {SESSION_COLS} FROM sessions WHERE node_id = $1 AND status IN ('pending','running')")))
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

    pub async fn version(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT version FROM sched_lock WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("version")?)
    }

    // ---- ssh ------------------------------------------------------------------

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

    // ---- audit ----------------------------------------------------------------

    pub async fn audit(
        &self,
        actor: &str,
        tenant: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) {
        let r = sqlx::query("INSERT INTO audit (id, at, actor, tenant_id, action, target, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(random_id(20))
            .bind(now_ms())
            .bind(actor)
            .bind(tenant)
            .bind(action)
            .bind(target)
            .bind(outcome)
            .bind(detail.chars().take(1000).collect::<String>())
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

    // ---- refresh grants ---------------------------------------------------

    /// Stores a refresh grant for `session` (a live one) and returns the
    /// secret and when it ends (the session's end, in ms).
    pub async fn create_grant(
        &self,
        session: &str,
        subject: &str,
        scope: &str,
    ) -> Result<(String, i64)> {
        let s = self.session(session).await?;
        if !s.status.is_live() {
            return Err(StoreError::NotFound(format!(
                "session {session} is {}",
                s.status
            )));
        }
        let secret = random_secret("wr");
        sqlx::query("INSERT INTO refresh_grants (hash, session_id, subject, scope, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(hash(&secret))
            .bind(session)
            .bind(subject)
            .bind(scope)
            .bind(now_ms())
            .bind(s.expires_at)
            .execute(&self.pool)
            .await?;
        Ok((secret, s.expires_at))
    }

    /// The live session and `(subject, scope)` a grant stands for; `None`
    /// when the grant is unknown, expired, for another session, or its
    /// session has ended (then the grant is forgotten).
    pub async fn use_grant(
        &self,
        session: &str,
        secret: &str,
    ) -> Result<Option<(Session, String, String)>> {
        let r = sqlx::query(
            "SELECT session_id, subject, scope, expires_at FROM refresh_grants WHERE hash = $1",
        )
        .bind(hash(secret))
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = r else { return Ok(None) };
        let (sid, subject, scope, exp): (String, String, String, i64) = (
            r.try_get("session_id")?,
            r.try_get("subject")?,
            r.try_get("scope")?,
            r.try_get("expires_at")?,
        );
        if sid != session {
            return Ok(None);
        }
        let s = match self.session(&sid).await {
            Ok(s) if s.status.is_live() && exp > now_ms() => s,
            Ok(_) | Err(StoreError::NotFound(_)) => {
                sqlx::query("DELETE FROM refresh_grants WHERE session_id = $1")
                    .bind(&sid)
                    .execute(&self.pool)
                    .await?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(Some((s, subject, scope)))
    }

    // ---- signing keys -----------------------------------------------------------

    /// The active signing key `(kid, private PEM)`; made once, shared by replicas
    /// (the oldest key wins if two start at once).
    pub async fn signing_key(&self) -> Result<(String, String)> {
        let q =
            "SELECT kid, private_pem FROM signing_keys ORDER BY created_at ASC, kid ASC LIMIT 1";
        if let Some(r) = sqlx::query(q).fetch_optional(&self.pool).await? {
            return Ok((r.try_get("kid")?, r.try_get("private_pem")?));
        }
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        use base64::Engine;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw());
        sqlx::query("INSERT INTO signing_keys (kid, private_pem, public_x, created_at) VALUES ($1, $2, $3, $4)")
            .bind(format!("k{}", random_id(11)))
            .bind(kp.serialize_pem())
            .bind(x)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        let r = sqlx::query(q).fetch_one(&self.pool).await?;
        Ok((r.try_get("kid")?, r.try_get("private_pem")?))
    }

    pub async fn public_keys(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT kid, public_x FROM signing_keys ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kid")?, r.try_get("public_x")?)))
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
        }
    }

    #[test]
    fn placement_spreads_or_packs_by_headroom() {
        let nodes = [
            node("a", 4096, 4096, 1024), // headroom 3072
            node("b", 8192, 2048, 0),    // free bounds it: 2048
            node("c", 8192, 8192, 7680), // 512
        ];
        let pick = |mb, s| pick_node(&nodes, mb, s).map(|c| c.id.as_str());
        assert_eq!(pick(256, Strategy::Spread), Some("a"));
        assert_eq!(pick(256, Strategy::Binpack), Some("c"));
        // c has too little room for 1 GiB; b is the tightest that fits.
        assert_eq!(pick(1024, Strategy::Binpack), Some("b"));
        assert_eq!(pick(3072, Strategy::Binpack), Some("a"));
        assert_eq!(pick(3073, Strategy::Spread), None);
        assert_eq!(pick_node(&[], 1, Strategy::Spread), None);
        // Ties go to the first (ids come ordered from the database).
        let tied = [node("x", 1000, 1000, 0), node("y", 1000, 1000, 0)];
        assert_eq!(
            pick_node(&tied, 10, Strategy::Spread).map(|c| c.id.as_str()),
            Some("x")
        );
        assert_eq!(
            pick_node(&tied, 10, Strategy::Binpack).map(|c| c.id.as_str()),
            Some("x")
        );
    }

    #[test]
    fn statuses_round_trip_their_column_values() {
        for s in [
            "pending", "running", "stopping", "stopped", "failed", "lost",
        ] {
            assert_eq!(SessionStatus::parse(s).map(|x| x.as_str()), Some(s));
        }
        assert_eq!(SessionStatus::parse("zombie"), None);
        for s in NodeState::ALL {
            assert_eq!(NodeState::parse(s.as_str()), Some(s));
        }
        assert!(SessionStatus::Pending.is_live() && !SessionStatus::Lost.is_live());
    }
}
