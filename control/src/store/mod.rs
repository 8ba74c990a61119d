//! The store: one set of migrations and queries for SQLite (the embedded
//! default) and PostgreSQL (several control replicas), chosen by the URL.
//! Every scheduling transaction first updates the `sched_lock` row, which
//! serialises placements across replicas without over-commit.
//!
//! This file holds the [`Store`] itself (the pool, migrations, the change
//! notifier that wakes watches), the helpers every table uses, and the row
//! types several groups share; each table group has its own file.
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

mod audit;
mod events;
mod grants;
mod migrations;
mod nodes;
mod placement;
mod recordings;
mod sessions;
mod shares;
mod signing;
mod snapshots;
mod ssh;
mod tenants;

pub use audit::{AuditEntry, NewAudit};
pub use events::{Change, Event};
pub use nodes::Node;
pub use recordings::{Appended, Piece, RecordingRow};
pub use sessions::{Candidate, NewSession, pick_node};
pub use shares::{NewShare, ShareRow};
pub use snapshots::SnapshotRow;
pub use ssh::SshKey;
pub use tenants::{Principal, Tenant};

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
    /// A credential that was revoked.
    #[error("{0}")]
    Revoked(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The database could not be asked in time (said to callers as "try
    /// again"; the reason is for the log).
    #[error("database unavailable: {0}")]
    Unavailable(String),
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

/// Equal-length comparison that takes the same time wherever they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub use warren_proto::api::SessionStatus;

/// A node's state (the `state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
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

/// The statuses whose sessions hold their node's memory and count against
/// their tenant's quota.
pub const ACTIVE: [SessionStatus; 3] = [
    SessionStatus::Pending,
    SessionStatus::Running,
    SessionStatus::Stopping,
];

/// The statuses a node should run (and that can be stopped):
/// [`SessionStatus::is_live`].
pub const LIVE: [SessionStatus; 2] = [SessionStatus::Pending, SessionStatus::Running];

/// A status or state as its column holds it. Queries write these into the
/// SQL text (`'running'`, `('pending','running')`): they are the enums'
/// fixed words, never input, and the statements stay the same text.
trait Column: Copy {
    fn column(self) -> &'static str;
}

impl Column for SessionStatus {
    fn column(self) -> &'static str {
        self.as_str()
    }
}

impl Column for NodeState {
    fn column(self) -> &'static str {
        self.as_str()
    }
}

/// `'running'`: one value as an SQL literal.
fn sql<T: Column>(v: T) -> String {
    format!("'{}'", v.column())
}

/// `('pending','running')`: values as an SQL list for `IN`.
fn sql_in<T: Column>(vs: &[T]) -> String {
    let items: Vec<String> = vs.iter().map(|v| sql(*v)).collect();
    format!("({})", items.join(","))
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
    /// What the session may reach beyond Warren (checked when created).
    pub egress: warren_proto::egress::Egress,
    pub created_at: i64,
    pub expires_at: i64,
    pub idle_timeout_ms: i64,
    pub last_activity: i64,
}

pub use warren_proto::internal::{
    HeartbeatRequest, NodeDisk, NodeIsolation, ReportedState, SessionReport,
};

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
        egress: warren_proto::egress::Egress::from_text(r.try_get("egress")?),
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        idle_timeout_ms: r.try_get("idle_timeout_ms")?,
        last_activity: r.try_get("last_activity")?,
    })
}

const SESSION_COLS: &str = "id, tenant_id, node_id, status, reason, image, memory_mb, millicpus, disk_mb, egress, created_at, expires_at, idle_timeout_ms, last_activity";

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
    /// Moves after this replica commits session events (wakes its streams).
    appended: Arc<tokio::sync::watch::Sender<u64>>,
    /// Creates queued for the next placement batch.
    placer: Arc<placement::Placer>,
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
            // the lock row) instead of failing with SQLITE_BUSY. The
            // write-ahead log lets reads run beside a write, and a commit
            // costs one sync of the log (the default rollback journal cost
            // three). Still `synchronous = FULL`: a revocation, a used join
            // token or an audit row that was committed survives a power loss.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        for pragma in [
                            "PRAGMA busy_timeout = 30000",
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        migrations::migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Db(e.into()))?;
        Ok(Store {
            pool,
            changed: Arc::new(Notify::new()),
            follow: Arc::default(),
            activity: Arc::default(),
            appended: Arc::new(tokio::sync::watch::Sender::new(0)),
            placer: Arc::default(),
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
        self.events_committed();
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn version(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT version FROM sched_lock WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("version")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn status_lists_are_the_column_values() {
        assert_eq!(sql_in(&ACTIVE), "('pending','running','stopping')");
        assert_eq!(sql_in(&LIVE), "('pending','running')");
        assert_eq!(sql(NodeState::Draining), "'draining'");
        let live: Vec<_> = SessionStatus::ALL
            .into_iter()
            .filter(|s| s.is_live())
            .collect();
        assert_eq!(live, LIVE);
    }
}
