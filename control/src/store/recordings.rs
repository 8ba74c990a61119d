//! Recordings: each terminal's asciicast v2 in pieces, appended by the
//! session's worker, bounded per session, kept past the session's end for
//! a configured time.
use sqlx::Row;

use super::{Result, Store, StoreError, now_ms};

/// One terminal's recording as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingRow {
    pub session: String,
    pub terminal: u32,
    pub started_at: i64,
    pub bytes: i64,
    pub truncated: bool,
}

/// What [`Store::append_recording`] did with a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// This piece was stored before (a retry): nothing changed.
    Duplicate,
    /// The session's recordings reached their bound: the piece was
    /// dropped and the recording marked truncated.
    Full,
}

/// One piece of a recording to append (see [`Store::append_recordings`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub session: String,
    pub tenant: String,
    pub terminal: u32,
    pub seq: i64,
    pub data: String,
    /// The session's bound on all its recordings, in bytes.
    pub max_bytes: i64,
    /// The tenant's bound on all its recordings, in bytes.
    pub tenant_max_bytes: i64,
}

impl Store {
    /// Appends piece `seq` of `terminal`'s recording in `session` (of
    /// `tenant`), when the session's recordings stay within `max_bytes`
    /// and the tenant's within `tenant_max_bytes`.
    #[allow(clippy::too_many_arguments)] // one piece and its two bounds
    pub async fn append_recording(
        &self,
        session: &str,
        tenant: &str,
        terminal: u32,
        seq: i64,
        data: &str,
        max_bytes: i64,
        tenant_max_bytes: i64,
    ) -> Result<Appended> {
        let piece = Piece {
            session: session.into(),
            tenant: tenant.into(),
            terminal,
            seq,
            data: data.into(),
            max_bytes,
            tenant_max_bytes,
        };
        let mut done = self.append_recordings(std::slice::from_ref(&piece)).await?;
        Ok(done.pop().unwrap_or(Appended::Full))
    }

    /// Appends pieces in one transaction (one commit, one sync of the log,
    /// for all of a moment's pieces from every worker), in order: each
    /// piece is bounded by what the pieces before it stored. One outcome
    /// per piece, in the same order; a database error fails them all
    /// (nothing of them is kept, so a retry stores them).
    pub async fn append_recordings(&self, pieces: &[Piece]) -> Result<Vec<Appended>> {
        if let Some(p) = pieces.iter().find(|p| p.seq < 0) {
            return Err(StoreError::Invalid(format!(
                "seq must be 0 or more, not {}",
                p.seq
            )));
        }
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            out.push(append_one(&mut tx, p).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// A session's recordings, by terminal.
    pub async fn recordings(&self, session: &str) -> Result<Vec<RecordingRow>> {
        let rows = sqlx::query(
            "SELECT session_id, terminal, started_at, bytes, truncated FROM recordings \
             WHERE session_id = $1 ORDER BY terminal",
        )
        .bind(session)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RecordingRow {
                    session: r.try_get("session_id")?,
                    terminal: u32::try_from(r.try_get::<i64, _>("terminal")?).unwrap_or(0),
                    started_at: r.try_get("started_at")?,
                    bytes: r.try_get("bytes")?,
                    truncated: r.try_get::<i32, _>("truncated")? != 0,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The pieces of one recording in order; `None` when there is none.
    /// Pieces after a missing one are left out: what is returned always
    /// parses as one asciicast.
    pub async fn recording(&self, session: &str, terminal: u32) -> Result<Option<Vec<String>>> {
        let rows = sqlx::query(
            "SELECT seq, data FROM recording_chunks WHERE session_id = $1 AND terminal = $2 ORDER BY seq",
        )
        .bind(session)
        .bind(i64::from(terminal))
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            if r.try_get::<i64, _>("seq")? != i as i64 {
                break;
            }
            out.push(r.try_get("data")?);
        }
        Ok(Some(out))
    }

    /// Forgets the recordings of sessions that ended before `before` (ms).
    pub async fn purge_recordings(&self, before: i64) -> Result<u64> {
        let ended = "SELECT id FROM sessions WHERE status IN ('stopped', 'failed', 'lost') AND updated_at < $1";
        let mut tx = self.pool.begin().await?;
        // The totals first: a write, so SQLite takes its write lock before
        // the reads.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE recording_totals SET bytes = bytes - COALESCE((SELECT CAST(SUM(r.bytes) AS BIGINT) \
             FROM recordings r WHERE r.tenant_id = recording_totals.tenant_id \
             AND r.session_id IN ({ended})), 0)"
        )))
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM recording_chunks WHERE session_id IN ({ended})"
        )))
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM recordings WHERE session_id IN ({ended})"
        )))
        .bind(before)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n)
    }
}

/// One piece's statements, inside the caller's transaction.
async fn append_one(tx: &mut sqlx::Transaction<'_, sqlx::Any>, p: &Piece) -> Result<Appended> {
    let (terminal, len) = (i64::from(p.terminal), p.data.len() as i64);
    // One write that checks the bounds as it inserts (a retried piece
    // conflicts and is left alone), then the totals: three statements a
    // piece, not six, none of which sums the tenant's recordings (a
    // recorded terminal sends a piece a second). A write first, also
    // because SQLite then takes its write lock before anything is read
    // (two recorders never deadlock upgrading a read lock).
    let stored = sqlx::query(
        "INSERT INTO recording_chunks (session_id, terminal, seq, data) \
         SELECT $1, $2, $3, $4 \
         WHERE (SELECT COALESCE(SUM(bytes), 0) FROM recordings WHERE session_id = $1) + $5 <= $6 \
           AND COALESCE((SELECT bytes FROM recording_totals WHERE tenant_id = $7), 0) + $5 <= $8 \
         ON CONFLICT (session_id, terminal, seq) DO NOTHING",
    )
    .bind(&p.session)
    .bind(terminal)
    .bind(p.seq)
    .bind(&p.data)
    .bind(len)
    .bind(p.max_bytes)
    .bind(&p.tenant)
    .bind(p.tenant_max_bytes)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    let outcome = if stored {
        sqlx::query(
            "INSERT INTO recording_totals (tenant_id, bytes) VALUES ($1, $2) \
             ON CONFLICT (tenant_id) DO UPDATE SET bytes = recording_totals.bytes + excluded.bytes",
        )
        .bind(&p.tenant)
        .bind(len)
        .execute(&mut **tx)
        .await?;
        Appended::Stored
    } else {
        let seen: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM recording_chunks WHERE session_id = $1 AND terminal = $2 AND seq = $3",
        )
        .bind(&p.session)
        .bind(terminal)
        .bind(p.seq)
        .fetch_optional(&mut **tx)
        .await?;
        if seen.is_some() {
            // Nothing was written for it.
            return Ok(Appended::Duplicate);
        }
        Appended::Full
    };
    // A recording's first piece always gets its row (so it is listed),
    // also when it is already full.
    sqlx::query(
        "INSERT INTO recordings (session_id, terminal, tenant_id, started_at, bytes, truncated) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (session_id, terminal) DO UPDATE \
         SET bytes = recordings.bytes + excluded.bytes, \
             truncated = CASE WHEN excluded.truncated = 1 THEN 1 ELSE recordings.truncated END",
    )
    .bind(&p.session)
    .bind(terminal)
    .bind(&p.tenant)
    .bind(now_ms())
    .bind(if stored { len } else { 0 })
    .bind(i32::from(!stored))
    .execute(&mut **tx)
    .await?;
    Ok(outcome)
}
