//! The control plane as the harness uses it (the shared API client).
use std::time::Duration;

use anyhow::bail;

use crate::Target;

/// A client of the control plane with the run's API key.
pub struct Api {
    client: warren_client::Client,
}

impl Api {
    pub fn new(t: &Target) -> anyhow::Result<Api> {
        Ok(Api {
            client: warren_client::Client::trusting(
                &t.control_url,
                &t.api_key,
                Duration::from_secs(120),
                t.control_ca.as_deref(),
            )?,
        })
    }

    pub async fn create(&self, image: &str, memory_mb: u64) -> anyhow::Result<(String, String)> {
        let spec = warren_proto::api::CreateSession {
            image: Some(image.into()),
            memory_mb: Some(memory_mb as i64),
            ttl_seconds: Some(7200),
            ..Default::default()
        };
        let s = self
            .client
            .create_session(&spec)
            .await
            .map_err(|e| anyhow::anyhow!("create session: {e}"))?;
        Ok((s.id, s.token.unwrap_or_default()))
    }

    pub async fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.client
            .delete_session(id)
            .await
            .map_err(|e| anyhow::anyhow!("delete {id}: {e}"))
    }

    /// Ids of the tenant's sessions that are not stopped.
    pub async fn live(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .client
            .sessions()
            .await?
            .into_iter()
            .filter(|s| s.status.is_live())
            .map(|s| s.id)
            .collect())
    }

    /// Checks the key before anything is created.
    pub async fn check(&self) -> anyhow::Result<()> {
        match self.client.sessions().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.status(), Some(401 | 403)) => {
                bail!("the control plane refused the API key")
            }
            Err(warren_client::Error::Unreachable { base, source }) => {
                bail!("the control plane at {base} does not answer: {source}")
            }
            Err(e) => bail!("the control plane answered {e}"),
        }
    }
}
