//! The relay backed by the control plane: `session → node` routes and node
//! credentials come from control's internal API (relays alone may call it).
use std::time::Duration;

use async_trait::async_trait;
use warren_client::internal::{self, InternalClient};
use warren_proto::internal::{
    GrantRequest, GrantResponse, HostKeyRequest, RefreshRequest, RefreshResponse, RouteResponse,
    SshAuthorizeRequest, VerifyNodeRequest,
};
use warren_tunnel::proto::Hello;
use warren_tunnel::server::{AuthError, NodeAuthenticator, NodeIdentity};

use crate::routes::{ControlPlane, Refreshed, RouteError, SessionRoute, SshAuditEvent};

/// Control's internal API, on one replica or several.
pub struct ControlClient {
    /// Every replica, with the relay's secret; requests go to the one that
    /// last answered.
    control: InternalClient,
}

/// `b` trusting `ca_pem` (control's private CA) besides the system's roots.
pub(crate) use warren_client::internal::trusting;

impl ControlClient {
    /// `base` is one URL or several, comma-separated (control replicas on
    /// one database): a replica that cannot be reached is skipped.
    pub fn new(base: &str, secret: &str) -> anyhow::Result<Self> {
        Self::with_ca(base, secret, None)
    }

    /// As [`ControlClient::new`], trusting `ca_pem` besides the system's
    /// roots (control with a private CA).
    pub fn with_ca(base: &str, secret: &str, ca_pem: Option<&str>) -> anyhow::Result<Self> {
        let bases = internal::split_urls(base);
        anyhow::ensure!(!bases.is_empty(), "no control URL");
        let http = trusting(
            internal::builder(Duration::from_secs(2), Duration::from_secs(5)),
            ca_pem,
        )?
        .build()?;
        Ok(Self {
            control: InternalClient::new(bases, Some(secret.into()), http),
        })
    }
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
            .control
            .get(&format!("/internal/v1/routes/{session}"))
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
            .control
            .post(
                "/internal/v1/ssh/authorize",
                &SshAuthorizeRequest {
                    session: session.into(),
                    public_key: public_key.into(),
                },
            )
            .await
            .map_err(|e| RouteError(e.to_string()))?;
        route_answer(r, &[403, 404, 422]).await
    }

    async fn audit(&self, event: SshAuditEvent) {
        let r = self.control.post("/internal/v1/ssh/audit", &event).await;
        if let Err(e) = r {
            tracing::warn!("ssh audit event not recorded: {e}");
        }
    }

    async fn grant(&self, token: &str) -> Result<Option<(String, i64)>, RouteError> {
        let r = self
            .control
            .post(
                "/internal/v1/tokens/grant",
                &GrantRequest {
                    token: token.into(),
                },
            )
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
            .control
            .post(
                "/internal/v1/tokens/refresh",
                &RefreshRequest {
                    session: session.into(),
                    refresh_token: grant.into(),
                },
            )
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
            .control
            .post(
                "/internal/v1/ssh/host-key",
                &HostKeyRequest {
                    public_key: public_key.into(),
                    fingerprint: fingerprint.into(),
                },
            )
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
            .control
            .post(
                "/internal/v1/nodes/verify",
                &VerifyNodeRequest {
                    node_id: hello.node_id.clone(),
                    credential: hello.credential.clone(),
                },
            )
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
