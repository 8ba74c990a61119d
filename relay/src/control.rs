//! The relay backed by the control plane: `session → node` routes and node
//! credentials come from control's internal API (relays alone may call it).
use std::time::Duration;

use async_trait::async_trait;
use warren_proto::internal::{
    GrantRequest, GrantResponse, HostKeyRequest, RefreshRequest, RefreshResponse, RouteResponse,
    SshAuthorizeRequest, VerifyNodeRequest,
};
use warren_tunnel::proto::Hello;
use warren_tunnel::server::{AuthError, NodeAuthenticator, NodeIdentity};

use crate::routes::{ControlPlane, Refreshed, RouteError, SessionRoute, SshAuditEvent};

/// Control's internal API, on one replica or several.
pub struct ControlClient {
    /// Every replica's URL; requests go to the one that last answered.
    bases: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    secret: String,
    http: reqwest::Client,
}

impl ControlClient {
    /// `base` is one URL or several, comma-separated (control replicas on
    /// one database): a replica that cannot be reached is skipped.
    pub fn new(base: &str, secret: &str) -> anyhow::Result<Self> {
        Self::with_ca(base, secret, None)
    }

    /// As [`ControlClient::new`], trusting `ca_pem` besides the system's
    /// roots (control with a private CA).
    pub fn with_ca(base: &str, secret: &str, ca_pem: Option<&str>) -> anyhow::Result<Self> {
        let bases: Vec<String> = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect();
        anyhow::ensure!(!bases.is_empty(), "no control URL");
        Ok(Self {
            bases,
            current: Default::default(),
            secret: secret.into(),
            http: trusting(
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(5))
                    // Control closes connections idle for 10 s: pooled ones
                    // go first, so none is reused as control closes it.
                    .pool_idle_timeout(Duration::from_secs(5)),
                ca_pem,
            )?
            .build()?,
        })
    }

    /// Sends `req(base)` with the relay's secret to the current replica,
    /// then to the others in turn while they cannot be reached (or answer
    /// 502/503: a replica without its database). The last error otherwise.
    async fn send(
        &self,
        req: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        use std::sync::atomic::Ordering;
        let start = self.current.load(Ordering::Relaxed);
        let n = self.bases.len();
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            match req(&self.http, &self.bases[at])
                .bearer_auth(&self.secret)
                .send()
                .await
            {
                Ok(r) if i + 1 < n && matches!(r.status().as_u16(), 502 | 503) => {}
                Ok(r) => {
                    if at != start {
                        tracing::info!(control = %self.bases[at], "control replica changed");
                        self.current.store(at, Ordering::Relaxed);
                    }
                    return Ok(r);
                }
                Err(e) if e.is_connect() || e.is_timeout() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one replica was tried"))
    }
}

/// `b` trusting `ca_pem` (control's private CA) besides the system's roots.
pub(crate) fn trusting(
    mut b: reqwest::ClientBuilder,
    ca_pem: Option<&str>,
) -> Result<reqwest::ClientBuilder, reqwest::Error> {
    if let Some(pem) = ca_pem {
        for c in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b)
}

/// The route on 200; `None` for the statuses that mean "no".
async fn route_answer(
    r: reqwest::Response,
    no: &[u16],
) -> Result<Option<SessionRoute>, RouteError> {
    match r.status().as_u16() {
        200 => {
            let v: RouteResponse = r.json().await.map_err(|e| RouteError(e.to_string()))?;
            Ok(Some(SessionRoute {
                node: v.node,
                tenant: v.tenant,
            }))
        }
        s if no.contains(&s) => Ok(None),
        s => Err(RouteError(format!("control answered {s}"))),
    }
}

#[async_trait]
impl ControlPlane for ControlClient {
    async fn lookup(&self, session: &str) -> Result<Option<SessionRoute>, RouteError> {
        let r = self
            .send(|c, b| c.get(format!("{b}/internal/v1/routes/{session}")))
            .await
            .map_err(|e| RouteError(e.to_string()))?;
        route_answer(r, &[404]).await
    }

    async fn authorize_ssh_key(
        &self,
        session: &str,
        public_key: &str,
    ) -> Result<Option<SessionRoute>, RouteError> {
        let r = self
            .send(|c, b| {
                c.post(format!("{b}/internal/v1/ssh/authorize"))
                    .json(&SshAuthorizeRequest {
                        session: session.into(),
                        public_key: public_key.into(),
                    })
            })
            .await
            .map_err(|e| RouteError(e.to_string()))?;
        route_answer(r, &[403, 404, 422]).await
    }

    async fn audit(&self, event: SshAuditEvent) {
        let r = self
            .send(|c, b| c.post(format!("{b}/internal/v1/ssh/audit")).json(&event))
            .await;
        if let Err(e) = r {
            tracing::warn!("ssh audit event not recorded: {e}");
        }
    }

    async fn grant(&self, token: &str) -> Result<Option<(String, i64)>, RouteError> {
        let r = self
            .send(|c, b| {
                c.post(format!("{b}/internal/v1/tokens/grant"))
                    .json(&GrantRequest {
                        token: token.into(),
                    })
            })
            .await
            .map_err(|e| RouteError(e.to_string()))?;
        match r.status().as_u16() {
            200 => {
                let g: GrantResponse = r.json().await.map_err(|e| RouteError(e.to_string()))?;
                Ok(Some((g.refresh_token, g.expires_at)))
            }
            401 | 404 => Ok(None),
            s => Err(RouteError(format!("control answered {s}"))),
        }
    }

    async fn refresh(&self, session: &str, grant: &str) -> Result<Refreshed, RouteError> {
        let r = self
            .send(|c, b| {
                c.post(format!("{b}/internal/v1/tokens/refresh"))
                    .json(&RefreshRequest {
                        session: session.into(),
                        refresh_token: grant.into(),
                    })
            })
            .await
            .map_err(|e| RouteError(e.to_string()))?;
        match r.status().as_u16() {
            200 => {
                let t: RefreshResponse = r.json().await.map_err(|e| RouteError(e.to_string()))?;
                Ok(Refreshed::Token(t.token, t.expires_at))
            }
            401 | 422 => Ok(Refreshed::Invalid),
            404 => Ok(Refreshed::Gone),
            s => Err(RouteError(format!("control answered {s}"))),
        }
    }

    async fn publish_host_key(
        &self,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<(), RouteError> {
        let r = self
            .send(|c, b| {
                c.post(format!("{b}/internal/v1/ssh/host-key"))
                    .json(&HostKeyRequest {
                        public_key: public_key.into(),
                        fingerprint: fingerprint.into(),
                    })
            })
            .await
            .map_err(|e| RouteError(e.to_string()))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(RouteError(format!("control answered {}", r.status())))
        }
    }
}

#[async_trait]
impl NodeAuthenticator for ControlClient {
    async fn authenticate(&self, hello: &Hello) -> Result<NodeIdentity, AuthError> {
        let r = self
            .send(|c, b| {
                c.post(format!("{b}/internal/v1/nodes/verify"))
                    .json(&VerifyNodeRequest {
                        node_id: hello.node_id.clone(),
                        credential: hello.credential.clone(),
                    })
            })
            .await
            .map_err(|e| AuthError(format!("control plane unreachable: {e}")))?;
        if r.status().is_success() {
            Ok(NodeIdentity {
                node_id: hello.node_id.clone(),
            })
        } else {
            Err(AuthError(
                "node credential rejected by the control plane".into(),
            ))
        }
    }
}
