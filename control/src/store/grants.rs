//! Refresh grants: what a relay exchanges for a new session token while
//! the session lives.
use sqlx::Row;

use super::{Result, Session, Store, StoreError, hash, now_ms, random_secret};

impl Store {
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
}
