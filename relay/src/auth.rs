//! Session tokens at the edge: Ed25519 JWTs issued by the control plane,
//! verified here with public keys only (a JWKS). Verified tokens are cached
//! so a reconnect storm costs no signature checks.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use tracing::{info, warn};

pub use warren_proto::token::{AUDIENCE, Claims, Scope};
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// How long a verified token stays cached (never past its expiry).
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Unknown key ids trigger at most one JWKS refresh per this interval.
const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Why a token was refused; every kind answers 401.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: open the session link (with ?token=) or send Authorization: Bearer")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token has expired; ask for a fresh one")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token lacks the {} scope", .0.as_str())]
    MissingScope(Scope),
}

/// Where the public keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    File(PathBuf),
    Url(String),
    /// Keys given directly (tests).
    Static(String),
}

pub struct Verifier {
    audience: String,
    source: KeySource,
    keys: RwLock<HashMap<String, Arc<DecodingKey>>>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    cache: moka::future::Cache<String, Arc<Claims>>,
    http: reqwest::Client,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a JWKS document, keeping Ed25519 (OKP) keys that have a `kid`.
pub fn parse_jwks(text: &str) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("bad JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if !matches!(jwk.algorithm, AlgorithmParameters::OctetKeyPair(_)) {
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(k) => {
                keys.insert(kid, Arc::new(k));
            }
            Err(e) => warn!(%kid, "skipping JWKS key: {e}"),
        }
    }
    if keys.is_empty() {
        return Err("JWKS holds no Ed25519 key with a kid".into());
    }
    Ok(keys)
}

impl Verifier {
    pub async fn new(audience: &str, source: KeySource) -> Result<Arc<Self>, String> {
        Self::with_ca(audience, source, None).await
    }

    /// As [`Verifier::new`], trusting `ca_pem` besides the system's roots
    /// for a JWKS URL (control with a private CA).
    pub async fn with_ca(
        audience: &str,
        source: KeySource,
        ca_pem: Option<&str>,
    ) -> Result<Arc<Self>, String> {
        let http = crate::control::trusting(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                // Under control's 10 s idle close (see crate::control).
                .pool_idle_timeout(Duration::from_secs(5)),
            ca_pem,
        )
        .map_err(|e| format!("control's CA: {e}"))?;
        let v = Arc::new(Self {
            audience: audience.into(),
            source,
            keys: RwLock::new(HashMap::new()),
            last_refresh: tokio::sync::Mutex::new(None),
            cache: moka::future::Cache::builder()
                .max_capacity(200_000)
                .time_to_live(CACHE_TTL)
                .build(),
            http: http.build().map_err(|e| e.to_string())?,
            metrics: None,
        });
        let keys = v.load().await?;
        *v.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(v)
    }

    pub fn with_metrics(self: Arc<Self>, m: Arc<crate::metrics::Metrics>) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut v) => {
                v.metrics = Some(m);
                Arc::new(v)
            }
            Err(v) => v,
        }
    }

    async fn load(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let text = match &self.source {
            KeySource::File(p) => tokio::fs::read_to_string(p)
                .await
                .map_err(|e| format!("reading {}: {e}", p.display()))?,
            // One URL or several (control replicas), comma-separated: the
            // first that answers.
            KeySource::Url(urls) => {
                let mut last = String::from("no JWKS URL");
                let mut text = None;
                for u in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                    match self.http.get(u).send().await {
                        Ok(r) if r.status().is_success() => match r.text().await {
                            Ok(t) => {
                                text = Some(t);
                                break;
                            }
                            Err(e) => last = format!("reading {u}: {e}"),
                        },
                        Ok(r) => last = format!("fetching {u}: HTTP {}", r.status()),
                        Err(e) => last = format!("fetching {u}: {e}"),
                    }
                }
                text.ok_or(last)?
            }
            KeySource::Static(s) => s.clone(),
        };
        parse_jwks(&text)
    }

    /// Reloads the keys (e.g. after a rotation), at most every 10 s.
    async fn refresh(&self) {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_MIN_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        match self.load().await {
            Ok(keys) => {
                info!(keys = keys.len(), "JWKS refreshed");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
            }
            Err(e) => warn!("JWKS refresh failed: {e}"),
        }
    }

    fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    /// Verifies a token's signature, audience and time window.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        if let Some(c) = self.cache.get(token).await {
            if let Some(m) = &self.metrics {
                m.jwt_cache_hits.inc();
            }
            if c.exp <= now() {
                self.cache.invalidate(token).await;
                return Err(AuthError::Expired);
            }
            return Ok(c);
        }
        if let Some(m) = &self.metrics {
            m.jwt_verifications.inc();
        }
        // At the one place tokens are checked, whichever constructor made
        // this verifier (a cheap check once installed).
        warren_jwt::install();
        // `alg: none` and every algorithm but EdDSA fail here or below.
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::BadSignature);
        }
        let kid = header.kid.ok_or(AuthError::UnknownKey)?;
        let key = match self.key(&kid) {
            Some(k) => k,
            None => {
                self.refresh().await;
                self.key(&kid).ok_or(AuthError::UnknownKey)?
            }
        };
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[&self.audience]);
        v.validate_nbf = true;
        v.leeway = 5;
        v.set_required_spec_claims(&["exp", "aud"]);
        let data = decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidSignature => AuthError::BadSignature,
                K::InvalidAudience => AuthError::WrongAudience,
                _ => AuthError::Malformed,
            }
        })?;
        let claims = Arc::new(data.claims);
        if !warren_proto::is_session_id(&claims.sid) || claims.tenant.is_empty() {
            return Err(AuthError::Malformed);
        }
        self.cache.insert(token.to_string(), claims.clone()).await;
        Ok(claims)
    }
}

/// Signing for tests and benchmarks (feature `testing`); the control plane
/// owns the real issuer.
#[cfg(feature = "testing")]
pub mod testing {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header, encode};

    pub struct Signer {
        pub kid: String,
        key: EncodingKey,
        pub jwks: String,
    }

    impl Signer {
        pub fn generate(kid: &str) -> Signer {
            warren_jwt::install();
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
            let key = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).expect("ed25519 pem");
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw());
            let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": x}]});
            Signer {
                kid: kid.into(),
                key,
                jwks: jwks.to_string(),
            }
        }

        pub fn sign(&self, claims: &Claims) -> String {
            let mut h = Header::new(Algorithm::EdDSA);
            h.kid = Some(self.kid.clone());
            encode(&h, claims, &self.key).expect("sign")
        }

        pub fn token(&self, sid: &str, tenant: &str, ttl_secs: i64) -> String {
            self.token_scoped(sid, tenant, ttl_secs, &Scope::claim(&Scope::ALL))
        }

        pub fn token_scoped(&self, sid: &str, tenant: &str, ttl_secs: i64, scope: &str) -> String {
            let now = now() as i64;
            self.sign(&Claims {
                sub: "user".into(),
                sid: sid.into(),
                tenant: tenant.into(),
                scope: scope.into(),
                aud: "warren".into(),
                exp: (now + ttl_secs).max(0) as u64,
                nbf: Some((now - 1).max(0) as u64),
                iat: Some(now as u64),
                share: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Signer;
    use super::*;
    use base64::Engine;

    async fn verifier(s: &Signer) -> Arc<Verifier> {
        Verifier::new("warren", KeySource::Static(s.jwks.clone()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn good_token_and_cache() {
        let s = Signer::generate("k1");
        let v = verifier(&s).await;
        let t = s.token("abc", "acme", 60);
        let c = v.verify(&t).await.unwrap();
        assert_eq!((c.sid.as_str(), c.tenant.as_str()), ("abc", "acme"));
        assert!(c.has_scope(Scope::Terminal) && c.has_scope(Scope::Preview));
        assert_eq!(*v.verify(&t).await.unwrap(), *c);
    }

    #[tokio::test]
    async fn refusals() {
        let s = Signer::generate("k1");
        let v = verifier(&s).await;
        assert_eq!(
            v.verify(&s.token("abc", "acme", -60)).await,
            Err(AuthError::Expired)
        );
        let other = Signer::generate("k1");
        assert_eq!(
            v.verify(&other.token("abc", "acme", 60)).await,
            Err(AuthError::BadSignature)
        );
        let unknown = Signer::generate("k2");
        assert_eq!(
            v.verify(&unknown.token("abc", "acme", 60)).await,
            Err(AuthError::UnknownKey)
        );
        let mut c = v
            .verify(&s.token("abc", "acme", 60))
            .await
            .unwrap()
            .as_ref()
            .clone();
        c.aud = "elsewhere".into();
        assert_eq!(v.verify(&s.sign(&c)).await, Err(AuthError::WrongAudience));
        c.aud = "warren".into();
        c.nbf = Some(now() + 3600);
        assert_eq!(v.verify(&s.sign(&c)).await, Err(AuthError::NotYetValid));
        assert_eq!(v.verify("garbage").await, Err(AuthError::Malformed));
        assert_eq!(
            v.verify(&"a".repeat(MAX_TOKEN_LEN + 1)).await,
            Err(AuthError::Malformed)
        );
        // alg: none, unsigned.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(
                r#"{{"sid":"abc","tenant":"acme","aud":"warren","exp":{}}}"#,
                now() + 60
            ))
        );
        assert!(v.verify(&none).await.is_err());
        // HS256 signed with the public key as secret (algorithm confusion);
        // made by hand: Warren's JWT provider signs nothing but EdDSA.
        let msg = format!(
            "{}.{}",
            b64(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#),
            b64(&serde_json::to_string(&c).unwrap())
        );
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(s.jwks.as_bytes()).unwrap();
        hmac::Mac::update(&mut mac, msg.as_bytes());
        let mac = hmac::Mac::finalize(mac).into_bytes();
        let hs = format!(
            "{msg}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
        );
        assert_eq!(v.verify(&hs).await, Err(AuthError::BadSignature));
    }
}
