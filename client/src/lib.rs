//! `warren-client`: Warren's public API as a Rust client. The CLI and the
//! load-test harness share it; bodies are `warren_proto::api` types.
//! [`internal`]: control's internal API, for relays and agents (replica
//! failover, bearer auth, control's private CA). [`sandbox`]: exec and
//! files in a session.
#![forbid(unsafe_code)]

pub mod internal;
pub mod sandbox;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use warren_proto::api::{CreateSession, Session, SessionList, TokenRequest, TokenResponse, UpFile};

/// Why a call failed, worded for the person who made it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing to call: no URL or key given or found.
    #[error("{0}")]
    Setup(String),
    #[error("reaching the control plane at {base}: {source}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// The control plane answered with an error.
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the control plane's answer is not what this client expects: {0}")]
    Decode(String),
}

impl Error {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A control plane and the API key to call it with.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    key: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    pub fn new(base: &str, key: &str, timeout: Duration) -> Result<Client> {
        Client::trusting(base, key, timeout, None)
    }

    /// [`Client::new`] that also trusts `ca_pem` (control's private CA, a
    /// PEM bundle).
    pub fn trusting(
        base: &str,
        key: &str,
        timeout: Duration,
        ca_pem: Option<&str>,
    ) -> Result<Client> {
        let b = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(internal::POOL_IDLE_TIMEOUT);
        let b = internal::trusting(b, ca_pem)
            .map_err(|e| Error::Setup(format!("the CA is not PEM: {e}")))?;
        Ok(Client {
            base: base.trim_end_matches('/').into(),
            key: key.into(),
            http: b
                .build()
                .map_err(|e| Error::Setup(format!("cannot make an HTTP client: {e}")))?,
        })
    }

    /// From flags (or their environment variables), else the `up.json` in
    /// `data_dir` that `warren up` wrote.
    pub fn resolve(url: Option<String>, key: Option<String>, data_dir: &Path) -> Result<Client> {
        let up = UpFile::read(&data_dir.join("up.json")).map_err(Error::Setup)?;
        let base = url.or_else(|| up.as_ref().map(|u| u.control_url.clone())).ok_or_else(|| {
            Error::Setup(
                "no control URL: pass --control-url, set WARREN_CONTROL_URL, or run `warren up` here"
                    .into(),
            )
        })?;
        let key = key
            .or_else(|| up.as_ref().map(|u| u.admin_api_key.clone()))
            .ok_or_else(|| {
                Error::Setup(
                    "no API key: pass --api-key, set WARREN_API_KEY, or run `warren up` here"
                        .into(),
                )
            })?;
        Client::new(&base, &key, Duration::from_secs(180))
    }

    /// Any call; the answer as JSON (`null` for an empty body).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.request(method, path, body.as_ref()).await
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| Error::Setup(format!("method {method}: {e}")))?;
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            r = r.json(b);
        }
        let unreachable = |source| Error::Unreachable {
            base: self.base.clone(),
            source,
        };
        let resp = r.send().await.map_err(unreachable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(unreachable)?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            return Err(Error::Api {
                status: status.as_u16(),
                code: v["error"]["code"].as_str().unwrap_or("error").into(),
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or("no message")
                    .into(),
            });
        }
        serde_json::from_value(v).map_err(|e| Error::Decode(e.to_string()))
    }

    pub async fn create_session(&self, spec: &CreateSession) -> Result<Session> {
        self.request("POST", "/v1/sessions", Some(spec)).await
    }

    pub async fn session(&self, id: &str) -> Result<Session> {
        self.request::<(), _>("GET", &format!("/v1/sessions/{id}"), None)
            .await
    }

    pub async fn sessions(&self) -> Result<Vec<Session>> {
        let l: SessionList = self.request::<(), _>("GET", "/v1/sessions", None).await?;
        Ok(l.sessions)
    }

    /// Deletes a session; one that is already gone is not an error.
    pub async fn delete_session(&self, id: &str) -> Result<()> {
        match self
            .request::<(), Value>("DELETE", &format!("/v1/sessions/{id}"), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn token(&self, id: &str, scope: Option<&str>) -> Result<TokenResponse> {
        let body = TokenRequest {
            scope: scope.map(str::to_string),
        };
        self.request("POST", &format!("/v1/sessions/{id}/token"), Some(&body))
            .await
    }
}
