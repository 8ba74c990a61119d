//! [`ControlPlane`]: everything the relay asks of the control plane
//! (routes, node credentials, SSH keys, audit, host keys), behind one
//! trait with two backings: [`crate::control::ControlClient`] (the
//! internal API) and [`StaticRoutes`] (a table and a shared node secret,
//! for a relay without control and for tests). A moka cache sits in front
//! of route lookups.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use warren_tunnel::proto::Hello;
use warren_tunnel::server::{AuthError, NodeAuthenticator, NodeIdentity, SharedSecretAuth};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRoute {
    pub node: String,
    pub tenant: String,
}

#[derive(Debug, thiserror::Error)]
#[error("route lookup failed: {0}")]
pub struct RouteError(pub String);

pub use warren_proto::internal::{SshAction, SshAuditEvent};

/// What a refresh came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// A new token and its expiry (Unix seconds).
    Token(String, i64),
    /// The grant is unknown or not for this session: sign in again.
    Invalid,
    /// The session has ended.
    Gone,
}

/// What the relay asks the control plane (or a static table). Node
/// credentials are checked through the [`NodeAuthenticator`] supertrait.
#[async_trait]
pub trait ControlPlane: NodeAuthenticator + Send + Sync + 'static {
    /// `Ok(None)`: no such session.
    async fn lookup(&self, session: &str) -> Result<Option<SessionRoute>, RouteError>;

    /// The session's route if `public_key` (OpenSSH format) is registered
    /// for the session's tenant; `Ok(None)` if it is not (or no session).
    async fn authorize_ssh_key(
        &self,
        _session: &str,
        _public_key: &str,
    ) -> Result<Option<SessionRoute>, RouteError> {
        Ok(None)
    }

    /// Records an SSH event in the audit log (best effort).
    async fn audit(&self, _event: SshAuditEvent) {}

    /// A refresh grant for a session token a browser brought, so its tab can
    /// renew the token for the session's lifetime: `(secret, expires_at)`.
    /// `Ok(None)` where there is no control plane to grant one.
    async fn grant(&self, _token: &str) -> Result<Option<(String, i64)>, RouteError> {
        Ok(None)
    }

    /// A fresh session token for a refresh grant.
    async fn refresh(&self, _session: &str, _grant: &str) -> Result<Refreshed, RouteError> {
        Ok(Refreshed::Invalid)
    }

    /// Publishes the relay's SSH host key so users can pin it.
    async fn publish_host_key(
        &self,
        _public_key: &str,
        _fingerprint: &str,
    ) -> Result<(), RouteError> {
        Ok(())
    }
}

/// A table set from configuration (or by tests), and the shared secret
/// nodes present.
pub struct StaticRoutes {
    table: RwLock<HashMap<String, SessionRoute>>,
    /// `(tenant, key)`: SSH public keys and the tenant whose sessions they open.
    ssh_keys: RwLock<Vec<(String, String)>>,
    nodes: SharedSecretAuth,
}

impl StaticRoutes {
    /// An empty table; nodes authenticate with `node_secret`.
    pub fn new(node_secret: &str) -> Self {
        Self {
            table: RwLock::default(),
            ssh_keys: RwLock::default(),
            nodes: SharedSecretAuth::new(node_secret),
        }
    }

    pub fn insert(&self, session: &str, node: &str, tenant: &str) {
        self.table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                session.into(),
                SessionRoute {
                    node: node.into(),
                    tenant: tenant.into(),
                },
            );
    }
    /// Lets `public_key` (OpenSSH `type base64`) open `tenant`'s sessions.
    pub fn add_ssh_key(&self, tenant: &str, public_key: &str) {
        self.ssh_keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((tenant.into(), key_body(public_key).into()));
    }
    pub fn remove(&self, session: &str) {
        self.table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
    }
}

#[async_trait]
impl NodeAuthenticator for StaticRoutes {
    async fn authenticate(&self, hello: &Hello) -> Result<NodeIdentity, AuthError> {
        self.nodes.authenticate(hello).await
    }
}

#[async_trait]
impl ControlPlane for StaticRoutes {
    async fn lookup(&self, session: &str) -> Result<Option<SessionRoute>, RouteError> {
        Ok(self
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(session)
            .cloned())
    }

    async fn authorize_ssh_key(
        &self,
        session: &str,
        public_key: &str,
    ) -> Result<Option<SessionRoute>, RouteError> {
        let Some(route) = self.lookup(session).await? else {
            return Ok(None);
        };
        let keys = self.ssh_keys.read().unwrap_or_else(|e| e.into_inner());
        let body = key_body(public_key);
        Ok(keys
            .iter()
            .any(|(t, k)| *t == route.tenant && k == body)
            .then_some(route))
    }
}

/// `type base64` of an OpenSSH public key line, without its comment.
pub fn key_body(line: &str) -> &str {
    let line = line.trim();
    match line.match_indices(' ').nth(1) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// Caches found routes (sessions do not move between nodes) for a while;
/// misses are not cached, so a session created a moment ago is found.
pub struct RouteCache {
    source: Arc<dyn ControlPlane>,
    cache: moka::future::Cache<String, SessionRoute>,
}

impl RouteCache {
    pub fn new(source: Arc<dyn ControlPlane>, ttl: Duration) -> Self {
        Self {
            source,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub async fn resolve(&self, session: &str) -> Result<Option<SessionRoute>, RouteError> {
        if let Some(r) = self.cache.get(session).await {
            return Ok(Some(r));
        }
        let r = self.source.lookup(session).await?;
        if let Some(r) = &r {
            self.cache.insert(session.to_string(), r.clone()).await;
        }
        Ok(r)
    }

    pub async fn invalidate(&self, session: &str) {
        self.cache.invalidate(session).await;
    }
}
