//! Placing new sessions, in batches: concurrent creates queue their asks,
//! and one of them places every queued ask in one transaction (one turn of
//! the scheduling lock, one commit) instead of one transaction each. The
//! rules are a single create's: each ask sees the quotas and node headroom
//! left by the asks placed before it in the same batch, so nothing is
//! over-committed, and a refused ask refuses only itself.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::Row;
use tokio::sync::oneshot;
use warren_config::Strategy;

use super::events::{self, Change};
use super::sessions::{Candidate, NewSession, pick_node};
use super::{
    ACTIVE, NodeState, Result, Session, SessionStatus, Store, StoreError, bump_version, now_ms,
    random_id, sql, sql_in, touch_node,
};

/// The most asks placed in one transaction (the rest wait for the next).
const MAX_BATCH: usize = 64;

/// One create waiting to be placed.
struct Ask {
    tenant: String,
    /// The API key that asked: the `scheduled` audit row is written in the
    /// placement's transaction.
    actor: String,
    spec: NewSession,
    strategy: Strategy,
    heartbeat_timeout_ms: i64,
    tenant_disk_default_mb: i64,
    /// The node and the creation time.
    reply: oneshot::Sender<Result<(String, i64)>>,
}

#[derive(Default)]
pub(super) struct Placer {
    queue: Mutex<Vec<Ask>>,
    /// Held by the task placing a batch.
    placing: Arc<tokio::sync::Mutex<()>>,
}

/// A tenant's limits and what its live sessions hold, as the batch goes.
struct TenantUse {
    max_sessions: i64,
    max_memory_mb: i64,
    max_disk_mb: i64,
    sessions: i64,
    memory_mb: i64,
    disk_mb: i64,
}

impl Store {
    /// Checks the tenant's quota, picks a node by memory headroom and
    /// reserves the memory, in one transaction with the creates queued
    /// beside it; audits it as `session.create` `scheduled` by `actor`.
    /// Returns the session as stored.
    pub async fn create_session(
        &self,
        tenant: &str,
        actor: &str,
        spec: &NewSession,
        strategy: Strategy,
        heartbeat_timeout_ms: i64,
        tenant_disk_default_mb: i64,
    ) -> Result<Session> {
        let (reply, mut answer) = oneshot::channel();
        self.placer
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Ask {
                tenant: tenant.to_string(),
                actor: actor.to_string(),
                spec: spec.clone(),
                strategy,
                heartbeat_timeout_ms,
                tenant_disk_default_mb,
                reply,
            });
        let (node, created_at) = loop {
            tokio::select! {
                r = &mut answer => break r.map_err(|_| {
                    StoreError::Db(sqlx::Error::Protocol("the placement was abandoned".into()))
                })??,
                guard = self.placer.placing.clone().lock_owned() => {
                    let batch: Vec<Ask> = {
                        let mut q = self.placer.queue.lock().unwrap_or_else(|e| e.into_inner());
                        let n = q.len().min(MAX_BATCH);
                        q.drain(..n).collect()
                    };
                    // Placed by a task of its own: a create whose caller
                    // goes away does not take the others' batch with it.
                    let store = self.clone();
                    tokio::spawn(async move {
                        if !batch.is_empty() {
                            store.place(batch).await;
                        }
                        drop(guard);
                    });
                    // Ours was in this batch or an earlier one, or is still
                    // queued: the answer or the lock comes next.
                    tokio::task::yield_now().await;
                }
            }
        };
        Ok(Session {
            id: spec.id.clone(),
            tenant: tenant.to_string(),
            node,
            status: SessionStatus::Pending,
            reason: String::new(),
            image: spec.image.clone(),
            memory_mb: spec.memory_mb,
            millicpus: spec.millicpus,
            disk_mb: spec.disk_mb,
            egress: spec.egress.clone(),
            created_at,
            expires_at: created_at + spec.ttl_ms,
            idle_timeout_ms: spec.idle_timeout_ms,
            last_activity: created_at,
        })
    }

    /// Places `batch` in one transaction and answers each ask. If the
    /// database refused a statement of that transaction (not a time-out or
    /// a lost connection, which any retry would meet again), each ask is
    /// tried alone, so that one ask the database refuses fails only itself.
    async fn place(&self, batch: Vec<Ask>) {
        let all: Vec<&Ask> = batch.iter().collect();
        let outcomes = match self.place_all(&all).await {
            Ok(o) => o,
            Err(StoreError::Db(e @ sqlx::Error::Database(_))) if batch.len() > 1 => {
                tracing::warn!(
                    asks = batch.len(),
                    "a placement batch failed ({e}); placing each ask alone"
                );
                let mut each = Vec::with_capacity(batch.len());
                for ask in &batch {
                    each.push(match self.place_all(&[ask]).await {
                        Ok(mut o) => o.pop().unwrap_or_else(|| Err(not_placed("no outcome"))),
                        Err(e) => Err(not_placed(&e.to_string())),
                    });
                }
                each
            }
            Err(e) => {
                let why = e.to_string();
                batch.iter().map(|_| Err(not_placed(&why))).collect()
            }
        };
        for (ask, outcome) in batch.into_iter().zip(outcomes) {
            // Placed, but its create went away meanwhile (its time ran
            // out): nobody holds its token, so it does not stay.
            if let Err(Ok(_)) = ask.reply.send(outcome) {
                let _ = self
                    .stop_session(&ask.spec.id, "its create was abandoned")
                    .await;
            }
        }
    }

    /// The outcome of each ask, in order, once the transaction committed.
    async fn place_all(&self, batch: &[&Ask]) -> Result<Vec<Result<(String, i64)>>> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        bump_version(&mut tx).await?;
        let active = sql_in(&ACTIVE);
        let mut tenants: HashMap<String, Option<TenantUse>> = HashMap::new();
        // By heartbeat timeout (one value per configuration in practice).
        let mut nodes: HashMap<i64, Vec<Candidate>> = HashMap::new();
        let mut created: Vec<Change> = Vec::new();
        for &ask in batch {
            // Its create went away (the client left, or gave up waiting):
            // nothing is placed that nobody will be told of.
            if ask.reply.is_closed() {
                outcomes.push(Err(not_placed("the create was abandoned")));
                continue;
            }
            if !tenants.contains_key(&ask.tenant) {
                let u = tenant_use(&mut tx, &ask.tenant, ask.tenant_disk_default_mb).await?;
                tenants.insert(ask.tenant.clone(), u);
            }
            if let std::collections::hash_map::Entry::Vacant(e) =
                nodes.entry(ask.heartbeat_timeout_ms)
            {
                e.insert(candidates(&mut tx, now - ask.heartbeat_timeout_ms, &active).await?);
            }
            let (Some(Some(t)), Some(cands)) = (
                tenants.get_mut(&ask.tenant),
                nodes.get_mut(&ask.heartbeat_timeout_ms),
            ) else {
                outcomes.push(Err(StoreError::NotFound(format!(
                    "tenant {} does not exist",
                    ask.tenant
                ))));
                continue;
            };
            let node = match decide(&ask.tenant, &ask.spec, ask.strategy, t, cands) {
                Ok(n) => n,
                Err(e) => {
                    outcomes.push(Err(e));
                    continue;
                }
            };
            let spec = &ask.spec;
            let id = spec.id.clone();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO sessions (id, tenant_id, node_id, status, reason, image, memory_mb, millicpus, created_at, expires_at, idle_timeout_ms, last_activity, updated_at, disk_mb, egress) \
                 VALUES ($1, $2, $3, {}, '', $4, $5, $6, $7, $8, $9, $7, $7, $10, $11)",
                sql(SessionStatus::Pending)
            )))
            .bind(&id)
            .bind(&ask.tenant)
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
            sqlx::query("INSERT INTO audit (id, at, actor, tenant_id, action, target, outcome, detail) VALUES ($1, $2, $3, $4, 'session.create', $5, 'scheduled', $6)")
                .bind(random_id(20))
                .bind(now)
                .bind(&ask.actor)
                .bind(&ask.tenant)
                .bind(&id)
                .bind(format!("node {node} memory {} MB", spec.memory_mb))
                .execute(&mut *tx)
                .await?;
            outcomes.push(Ok((node.clone(), now)));
            created.push(Change {
                session: id,
                tenant: ask.tenant.clone(),
                node,
                status: SessionStatus::Pending,
                reason: String::new(),
            });
        }
        let mut touched: Vec<&str> = created.iter().map(|c| c.node.as_str()).collect();
        touched.sort_unstable();
        touched.dedup();
        for node in touched {
            touch_node(&mut tx, node).await?;
        }
        // Warm containers these sessions will claim are taken off their
        // nodes' counts now: the next batch does not count them again
        // before the node's next heartbeat says what is left.
        for list in nodes.values() {
            for c in list.iter().filter(|c| c.warm_claimed) {
                let warm: Vec<warren_proto::internal::WarmCount> = c
                    .warm
                    .iter()
                    .map(|(pool, ready)| warren_proto::internal::WarmCount {
                        pool: pool.clone(),
                        ready: *ready,
                    })
                    .collect();
                sqlx::query("UPDATE nodes SET warm = $1 WHERE id = $2")
                    .bind(serde_json::to_string(&warm).unwrap_or_default())
                    .bind(&c.id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        events::append(&mut tx, &created).await?;
        if created.is_empty() {
            // Nothing changed: no watch needs waking.
            tx.rollback().await?;
        } else {
            self.commit_change(tx).await?;
        }
        Ok(outcomes)
    }
}

/// A placement the database did not take (its words stay in the log).
fn not_placed(why: &str) -> StoreError {
    tracing::error!("placement failed: {why}");
    StoreError::Db(sqlx::Error::Protocol("the placement was not stored".into()))
}

/// The tenant's limits and use (`None`: no such tenant).
async fn tenant_use(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    disk_default_mb: i64,
) -> Result<Option<TenantUse>> {
    let Some(t) =
        sqlx::query("SELECT max_sessions, max_memory_mb, max_disk_mb FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?
    else {
        return Ok(None);
    };
    let active = sql_in(&ACTIVE);
    let u = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) AS n, CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT) AS m, CAST(COALESCE(SUM(disk_mb), 0) AS BIGINT) AS d FROM sessions WHERE tenant_id = $1 AND status IN {active}")))
        .bind(tenant)
        .fetch_one(&mut **tx)
        .await?;
    Ok(Some(TenantUse {
        max_sessions: t.try_get("max_sessions")?,
        max_memory_mb: t.try_get("max_memory_mb")?,
        max_disk_mb: match t.try_get::<i64, _>("max_disk_mb")? {
            0 => disk_default_mb,
            set => set,
        },
        sessions: u.try_get("n")?,
        memory_mb: u.try_get("m")?,
        disk_mb: u.try_get("d")?,
    }))
}

/// Ready nodes heard from since `since`, with what their live sessions
/// reserve.
async fn candidates(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    since: i64,
    active: &str,
) -> Result<Vec<Candidate>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT n.id, n.allocatable_mb, n.free_mb, n.disk_capacity_mb, n.disk_max_mb, n.warm, \
         (SELECT CAST(COALESCE(SUM(s.memory_mb), 0) AS BIGINT) FROM sessions s WHERE s.node_id = n.id AND s.status IN {active}) AS reserved, \
         (SELECT CAST(COALESCE(SUM(s.disk_mb), 0) AS BIGINT) FROM sessions s WHERE s.node_id = n.id AND s.status IN {active}) AS disk_reserved \
         FROM nodes n WHERE n.state = {} AND n.cordoned = 0 AND n.last_heartbeat > $1 ORDER BY n.id",
        sql(NodeState::Ready)
    )))
    .bind(since)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Candidate {
                id: r.try_get("id")?,
                allocatable_mb: r.try_get("allocatable_mb")?,
                free_mb: r.try_get("free_mb")?,
                reserved_mb: r.try_get("reserved")?,
                disk_capacity_mb: r.try_get("disk_capacity_mb")?,
                disk_max_mb: r.try_get("disk_max_mb")?,
                disk_reserved_mb: r.try_get("disk_reserved")?,
                warm: serde_json::from_str::<Vec<warren_proto::internal::WarmCount>>(
                    &r.try_get::<String, _>("warm")?,
                )
                .unwrap_or_default()
                .into_iter()
                .map(|w| (w.pool, w.ready))
                .collect(),
                warm_claimed: false,
            })
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// One ask against what the batch left: the node, with the tenant's use
/// and the node's reservation counted; or why not, in a create's words.
fn decide(
    tenant: &str,
    spec: &NewSession,
    strategy: Strategy,
    t: &mut TenantUse,
    all: &mut [Candidate],
) -> Result<String> {
    let (max_s, max_m, max_d) = (t.max_sessions, t.max_memory_mb, t.max_disk_mb);
    let (n, m, d) = (t.sessions, t.memory_mb, t.disk_mb);
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
    // A session from a snapshot starts where its image is, or not at all.
    let candidates: Vec<Candidate> = all
        .iter()
        .filter(|c| spec.node.as_ref().is_none_or(|n| &c.id == n))
        .cloned()
        .collect();
    // Where a warm container of its image and size waits, if one fits.
    let warm: Vec<Candidate> = candidates
        .iter()
        .filter(|c| warm_there(c, spec).is_some())
        .cloned()
        .collect();
    let fits = |among: &[Candidate]| {
        pick_node(
            among,
            spec.memory_mb,
            (spec.disk_mb, spec.disk_asked),
            strategy,
        )
        .map(|c| c.id.clone())
    };
    let Some(node) = fits(&warm).or_else(|| fits(&candidates)) else {
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
            all.len()
        )));
    };
    t.sessions += 1;
    t.memory_mb += spec.memory_mb;
    t.disk_mb += spec.disk_mb;
    if let Some(c) = all.iter_mut().find(|c| c.id == node) {
        c.reserved_mb += spec.memory_mb;
        c.disk_reserved_mb += spec.disk_mb;
        // Claimed by this session (the next ask looks elsewhere).
        if let Some(pool) = warm_there(c, spec)
            && let Some(n) = c.warm.get_mut(&pool)
        {
            *n -= 1;
            c.warm_claimed = true;
        }
    }
    Ok(node)
}

/// The pool of `spec` with a ready container on `c`, if any: a session of
/// no egress, not from a snapshot, of a pool's exact image and size (its
/// disk as that node runs it: none where it cannot limit disks).
fn warm_there(c: &Candidate, spec: &NewSession) -> Option<String> {
    if !spec.egress.is_none() || spec.node.is_some() {
        return None;
    }
    let disk = if c.disk_capacity_mb > 0 {
        spec.disk_mb.max(0) as u64
    } else {
        0
    };
    let pool = warren_proto::internal::WarmPool::key(
        &spec.image,
        spec.memory_mb.max(0) as u64,
        spec.millicpus as f64 / 1000.0,
        disk,
    );
    (c.warm.get(&pool).copied().unwrap_or(0) > 0).then_some(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(memory_mb: i64) -> NewSession {
        NewSession {
            id: "s".into(),
            image: "img".into(),
            memory_mb,
            millicpus: 1000,
            disk_mb: 0,
            disk_asked: false,
            egress: Default::default(),
            node: None,
            ttl_ms: 1000,
            idle_timeout_ms: 1000,
        }
    }

    fn node(id: &str, warm: u32) -> Candidate {
        Candidate {
            id: id.into(),
            allocatable_mb: 4096,
            free_mb: 4096,
            warm: [("img 256m 1000mcpu 0d".to_string(), warm)].into(),
            ..Default::default()
        }
    }

    fn tenant() -> TenantUse {
        TenantUse {
            max_sessions: 100,
            max_memory_mb: 100_000,
            max_disk_mb: 100_000,
            sessions: 0,
            memory_mb: 0,
            disk_mb: 0,
        }
    }

    #[test]
    fn a_node_with_a_warm_container_of_the_size_comes_first() {
        // Spread alone would pick a (more headroom); b has the one warm.
        let mut nodes = vec![node("a", 0), node("b", 1)];
        nodes[1].reserved_mb = 1024;
        let mut t = tenant();
        let pick = |t: &mut TenantUse, n: &mut [Candidate], s: &NewSession| {
            decide("t", s, Strategy::Spread, t, n).unwrap()
        };
        assert_eq!(pick(&mut t, &mut nodes, &spec(256)), "b");
        // Claimed by that session: the next goes by headroom again.
        assert_eq!(nodes[1].warm["img 256m 1000mcpu 0d"], 0);
        assert!(nodes[1].warm_claimed && !nodes[0].warm_claimed);
        assert_eq!(pick(&mut t, &mut nodes, &spec(256)), "a");
        // Another size, or a session with egress, never looks at pools.
        nodes[1].warm.insert("img 256m 1000mcpu 0d".into(), 1);
        assert_eq!(pick(&mut t, &mut nodes, &spec(512)), "a");
        let mut egress = spec(256);
        egress.egress = warren_proto::egress::Egress::Internet;
        assert_eq!(pick(&mut t, &mut nodes, &egress), "a");
        // A warm node that has no room is passed over.
        nodes[1].reserved_mb = 4096;
        assert_eq!(pick(&mut t, &mut nodes, &spec(256)), "a");
    }
}
