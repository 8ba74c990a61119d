//! Refresh grants: what a relay exchanges for a new session token while
//! the session lives, and no longer than an idle time without a renewal.
//! They can be revoked (all of a session's at once) and end with their
//! session.
use sqlx::Row;

use super::{LIVE, Result, Session, Store, StoreError, hash, now_ms, random_secret, sql_in};

impl Store {
    /// Stores a refresh grant for `session` (a live one) and returns the
    /// secret and when it ends (the session's end, in ms). `issued_ms`:
    /// when the token it is exchanged for was minted (tokens say it in whole
    /// seconds): one minted in the second of the revocation or before gets
    /// none.
    pub async fn create_grant(
        &self,
        session: &str,
        subject: &str,
        scope: &str,
        issued_ms: i64,
    ) -> Result<(String, i64)> {
        let s = self.session(session).await?;
        if !s.status.is_live() {
            return Err(StoreError::NotFound(format!(
                "session {session} is {}",
                s.status
            )));
        }
        let revoked: i64 =
            sqlx::query_scalar("SELECT grants_revoked_at FROM sessions WHERE id = $1")
                .bind(session)
                .fetch_one(&self.pool)
                .await?;
        if revoked > 0 && issued_ms <= revoked {
            return Err(StoreError::Revoked(
                "this link was revoked: ask for a new one".into(),
            ));
        }
        let secret = random_secret("wr");
        let now = now_ms();
        sqlx::query("INSERT INTO refresh_grants (hash, session_id, subject, scope, created_at, expires_at, last_used) VALUES ($1, $2, $3, $4, $5, $6, $5)")
            .bind(hash(&secret))
            .bind(session)
            .bind(subject)
            .bind(scope)
            .bind(now)
            .bind(s.expires_at)
            .execute(&self.pool)
            .await?;
        Ok((secret, s.expires_at))
    }

    /// The live session and `(subject, scope)` a grant stands for; `None`
    /// when the grant is unknown, expired, idle for `idle_ms` or longer,
    /// for another session, or its session has ended (then the grant is
    /// forgotten). A grant used is good for `idle_ms` more.
    pub async fn use_grant(
        &self,
        session: &str,
        secret: &str,
        idle_ms: i64,
    ) -> Result<Option<(Session, String, String)>> {
        let r = sqlx::query(
            "SELECT session_id, subject, scope, expires_at, created_at, last_used FROM refresh_grants WHERE hash = $1",
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
        let now = now_ms();
        // Grants made before last_used existed count from their creation.
        let last: i64 = r
            .try_get::<i64, _>("last_used")?
            .max(r.try_get("created_at")?);
        if now - last >= idle_ms {
            sqlx::query("DELETE FROM refresh_grants WHERE hash = $1")
                .bind(hash(secret))
                .execute(&self.pool)
                .await?;
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
        // Revoked meanwhile (the row is gone): nothing is renewed.
        let touched = sqlx::query("UPDATE refresh_grants SET last_used = $1 WHERE hash = $2")
            .bind(now)
            .bind(hash(secret))
            .execute(&self.pool)
            .await?
            .rows_affected();
        if touched != 1 {
            return Ok(None);
        }
        Ok(Some((s, subject, scope)))
    }

    /// Forgets grants whose session is no longer live, or idle for
    /// `idle_ms`, or past their end.
    pub async fn purge_grants(&self, idle_ms: i64) -> Result<u64> {
        let now = now_ms();
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM refresh_grants WHERE expires_at < $1              OR (CASE WHEN last_used > created_at THEN last_used ELSE created_at END) < $2              OR session_id NOT IN (SELECT id FROM sessions WHERE status IN {})",
            sql_in(&LIVE)
        )))
        .bind(now)
        .bind(now - idle_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Ends every refresh grant of `session` (pages opened with its links
    /// must sign in again); how many there were.
    pub async fn revoke_grants(&self, session: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        // Tokens minted until now mint no new grant either.
        sqlx::query("UPDATE sessions SET grants_revoked_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(session)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM refresh_grants WHERE session_id = $1")
            .bind(session)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant not renewed for the idle time renews nothing, and is gone.
    #[tokio::test]
    async fn idle_grants_end() {
        let dir = std::env::temp_dir().join(format!("warren-grants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let store = Store::open(&format!("sqlite://{}", dir.join("t.db").display()))
            .await
            .expect("store");
        let old = now_ms() - 10_000;
        sqlx::query("INSERT INTO refresh_grants (hash, session_id, subject, scope, created_at, expires_at, last_used) VALUES ($1, 's1', 'k', 'terminal', $2, $3, $2)")
            .bind(hash("wr_secret"))
            .bind(old)
            .bind(now_ms() + 3_600_000)
            .execute(&store.pool)
            .await
            .expect("insert");
        // Idle 10 s, allowed 5 s: refused and forgotten.
        assert!(
            store
                .use_grant("s1", "wr_secret", 5_000)
                .await
                .expect("query")
                .is_none()
        );
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refresh_grants")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        assert_eq!(left, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
