//! Session tokens: Ed25519 JWTs with the claims of `warren_proto::token`,
//! signed with the store's key (relays verify them with the JWKS).
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use warren_proto::token::{AUDIENCE, Claims};

use crate::store::{Session, now_ms};

/// Mints session tokens with the store's signing key.
pub struct Issuer {
    kid: String,
    key: EncodingKey,
    /// Checks tokens this issuer signed (a relay asking for a refresh grant
    /// shows one).
    public: DecodingKey,
    ttl_secs: u64,
}

/// A token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign tokens: {0}")]
pub struct SignError(String);

impl Issuer {
    /// An issuer for the Ed25519 key `pem` (public half `x`, base64url),
    /// named `kid` in the JWKS.
    pub fn new(kid: String, pem: &str, x: &str, ttl_secs: u64) -> Result<Self, SignError> {
        // Every sign and verify goes through an issuer made here.
        warren_jwt::install();
        Ok(Self {
            kid,
            key: EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| SignError(e.to_string()))?,
            public: DecodingKey::from_ed_components(x).map_err(|e| SignError(e.to_string()))?,
            ttl_secs,
        })
    }

    /// The claims of a token this issuer signed and that is valid now.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        if token.len() > 4096 {
            return None;
        }
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[AUDIENCE]);
        v.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.public, &v)
            .ok()
            .map(|d| d.claims)
    }

    /// `(token, expires_at)`; the token never outlives its session.
    /// `scope` is a `scope` claim ([`warren_proto::token::Scope::claim`]).
    pub fn mint(
        &self,
        s: &Session,
        subject: &str,
        scope: &str,
    ) -> Result<(String, i64), SignError> {
        let now = (now_ms() / 1000) as u64;
        self.sign(s, subject, scope, now + self.ttl_secs, None)
    }

    /// A share link's token: it lives as long as its link (never past the
    /// session) and names the link, so the session's worker can cut it.
    pub fn mint_share(
        &self,
        s: &Session,
        subject: &str,
        scope: &str,
        share: &str,
        expires_ms: i64,
    ) -> Result<(String, i64), SignError> {
        let exp = (expires_ms.max(0) / 1000) as u64;
        self.sign(s, subject, scope, exp, Some(share.to_string()))
    }

    fn sign(
        &self,
        s: &Session,
        subject: &str,
        scope: &str,
        exp: u64,
        share: Option<String>,
    ) -> Result<(String, i64), SignError> {
        let now = (now_ms() / 1000) as u64;
        let exp = exp.min((s.expires_at / 1000) as u64).max(now + 1);
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(self.kid.clone());
        let claims = Claims {
            sub: subject.into(),
            sid: s.id.clone(),
            tenant: s.tenant.clone(),
            scope: scope.into(),
            aud: AUDIENCE.into(),
            exp,
            nbf: Some(now.saturating_sub(5)),
            iat: Some(now),
            share,
        };
        let t =
            jsonwebtoken::encode(&h, &claims, &self.key).map_err(|e| SignError(e.to_string()))?;
        Ok((t, exp as i64))
    }
}
