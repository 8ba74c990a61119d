//! Signing keys: the Ed25519 key session tokens are signed with, and the
//! public keys of the JWKS.
use sqlx::Row;

use super::{Result, Store, StoreError, now_ms, random_id};

impl Store {
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
