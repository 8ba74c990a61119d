//! The sessions network, and the host rule that keeps sessions off it.
use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;
use tracing::info;

use super::DockerRuntime;

impl DockerRuntime {
    /// The sessions network: a bridge with no route out (`internal`) and
    /// inter-container traffic off, so sessions reach neither each other nor
    /// the outside; the host (the agent) still reaches them.
    pub(super) async fn ensure_network(&self) -> anyhow::Result<()> {
        self.create_network().await?;
        let net = self
            .docker
            .inspect_network(&self.cfg.network, None)
            .await
            .map_err(|e| anyhow::anyhow!("inspecting network {}: {e}", self.cfg.network))?;
        let id = net.id.unwrap_or_default();
        let bridge = crate::sandbox::firewall::bridge_name(&id, net.options.as_ref());
        crate::sandbox::firewall::install(&bridge)?;
        info!(network = %self.cfg.network, %bridge, "sessions cannot reach this host");
        Ok(())
    }

    async fn create_network(&self) -> anyhow::Result<()> {
        if self
            .docker
            .inspect_network(&self.cfg.network, None)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let mut options = HashMap::new();
        options.insert(
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        );
        let req = NetworkCreateRequest {
            name: self.cfg.network.clone(),
            driver: Some("bridge".into()),
            internal: Some(true),
            options: Some(options),
            labels: Some(self.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        match self.docker.create_network(req).await {
            Ok(_) => {
                info!(network = %self.cfg.network, "created sessions network");
                Ok(())
            }
            // Another agent on this host created it meanwhile.
            Err(_)
                if self
                    .docker
                    .inspect_network(&self.cfg.network, None)
                    .await
                    .is_ok() =>
            {
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!(
                "creating network {}: {e}",
                self.cfg.network
            )),
        }
    }
}
