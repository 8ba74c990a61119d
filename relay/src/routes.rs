//! `session → node` resolution behind a trait, with a moka cache in front.
//! The foundation backs it with a static table; the control plane backs it
//! with its internal API.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRoute {
    pub node: String,
    pub tenant: String,
}

#[derive(Debug, thiserror::Error)]
#[error("route lookup failed: {0}")]
pub struct RouteError(pub String);

#[async_trait]
pub trait RouteSource: Send + Sync + 'static {
    /// `Ok(None)`: no such session.
    async fn lookup(&self, session: &str) -> Result<Option<SessionRoute>, RouteError>;
}

/// A table set from configuration (or by tests).
#[derive(Default)]
pub struct StaticRoutes {
    table: RwLock<HashMap<String, SessionRoute>>,
}

impl StaticRoutes {
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
    pub fn remove(&self, session: &str) {
        self.table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
    }
}

#[async_trait]
impl RouteSource for StaticRoutes {
    async fn lookup(&self, session: &str) -> Result<Option<SessionRoute>, RouteError> {
        Ok(self
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(session)
            .cloned())
    }
}

/// Caches found routes (sessions do not move between nodes) for a while;
/// misses are not cached, so a session created a moment ago is found.
pub struct RouteCache {
    source: Arc<dyn RouteSource>,
    cache: moka::future::Cache<String, SessionRoute>,
}

impl RouteCache {
    pub fn new(source: Arc<dyn RouteSource>, ttl: Duration) -> Self {
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
