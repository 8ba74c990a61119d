//! Session lifecycle events (`GET /v1/events`): one row per status change,
//! appended by the transaction that made the change, read back by id.
//!
//! Readers ask for `id > last seen`, on any replica. That is only safe if
//! ids become visible in their order, so [`append`] numbers its rows from
//! the `event_seq` row, which it locks as the transaction's last write and
//! holds until the commit: the next writer waits, then numbers after it.
//! Taken last, that lock never waits behind another one (no deadlock).
use sqlx::Row;

use super::{Result, SessionStatus, Store, now_ms};

/// A status change made in a transaction, to record with it.
#[derive(Debug, Clone)]
pub struct Change {
    pub session: String,
    pub tenant: String,
    pub node: String,
    pub status: SessionStatus,
    pub reason: String,
}

impl Change {
    /// The changes to `status` that an `UPDATE sessions … RETURNING`
    /// ([`RETURNING`]) made: exactly the rows it changed, as changed (a
    /// `SELECT` before the update could see rows another writer then moves).
    pub(super) fn from_rows(
        rows: &[sqlx::any::AnyRow],
        status: SessionStatus,
    ) -> std::result::Result<Vec<Change>, sqlx::Error> {
        rows.iter()
            .map(|r| {
                Ok(Change {
                    session: r.try_get("id")?,
                    tenant: r.try_get("tenant_id")?,
                    node: r.try_get("node_id")?,
                    status,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }
}

/// The columns [`Change::from_rows`] reads.
pub(super) const RETURNING: &str = "RETURNING id, tenant_id, node_id, reason";

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub tenant: String,
    pub session: String,
    pub node: String,
    pub status: SessionStatus,
    pub reason: String,
}

/// Records `changes` in `tx`; call it after the transaction's other writes
/// (see the module's note on ordering).
pub(super) async fn append(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    changes: &[Change],
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let n = changes.len() as i64;
    sqlx::query("UPDATE event_seq SET last = last + $1 WHERE id = 1")
        .bind(n)
        .execute(&mut **tx)
        .await?;
    let last: i64 = sqlx::query("SELECT last FROM event_seq WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?
        .try_get("last")?;
    let at = now_ms();
    for (i, c) in changes.iter().enumerate() {
        sqlx::query(
            "INSERT INTO events (id, at, tenant_id, session_id, node_id, status, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(last - n + 1 + i as i64)
        .bind(at)
        .bind(&c.tenant)
        .bind(&c.session)
        .bind(&c.node)
        .bind(c.status.as_str())
        .bind(c.reason.chars().take(500).collect::<String>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Rows read per query when a stream catches up.
pub const PAGE: i64 = 500;

impl Store {
    /// Events after `after`, oldest first, at most [`PAGE`]; of `tenant`
    /// only, or of all tenants.
    pub async fn events_after(&self, tenant: Option<&str>, after: i64) -> Result<Vec<Event>> {
        let q = "SELECT id, at, tenant_id, session_id, node_id, status, reason FROM events";
        let rows = match tenant {
            Some(t) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{q} WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
                )))
                .bind(t)
                .bind(after)
                .bind(PAGE)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{q} WHERE id > $1 ORDER BY id LIMIT $2"
                )))
                .bind(after)
                .bind(PAGE)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok(Event {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    tenant: r.try_get("tenant_id")?,
                    session: r.try_get("session_id")?,
                    node: r.try_get("node_id")?,
                    status: SessionStatus::parse(&status).ok_or_else(|| {
                        sqlx::Error::Decode(format!("unknown session status {status:?}").into())
                    })?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    /// The id of the newest event (0: none yet): where a stream that asks
    /// for no replay starts.
    pub async fn last_event_id(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT last FROM event_seq WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("last")?)
    }

    /// Forgets events older than `max_age_ms` and all but the newest
    /// `keep` (ids are dense, so that is an id bound); how many went.
    pub async fn prune_events(&self, max_age_ms: i64, keep: i64) -> Result<u64> {
        let last = self.last_event_id().await?;
        let r = sqlx::query("DELETE FROM events WHERE at < $1 OR id <= $2")
            .bind(now_ms() - max_age_ms)
            .bind(last - keep)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Changes after this replica committed events (streams look at once
    /// instead of at their next poll).
    pub fn event_ticks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Wakes this replica's streams; after a commit that may have
    /// appended events (a spurious wake costs one query per stream).
    pub(super) fn events_committed(&self) {
        self.appended.send_modify(|t| *t = t.wrapping_add(1));
    }
}
