use crate::{ConfigError, Secret, Validate};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The relay side of the tunnel: where agents dial in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelListenerConfig {
    /// UDP address for QUIC, e.g. `0.0.0.0:7443`.
    pub listen: SocketAddr,
    /// PEM certificate chain presented to agents.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
    /// Shared secret that agents present until control issues credentials.
    pub node_secret: Secret,
    /// Seconds without any packet before a connection is dropped.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
}

fn default_idle() -> u64 {
    30
}

impl Validate for TunnelListenerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.node_secret.expose().len() < 16 {
            return Err(ConfigError::invalid(
                "node_secret",
                "must be at least 16 characters",
            ));
        }
        if !(5..=600).contains(&self.idle_timeout_secs) {
            return Err(ConfigError::invalid(
                "idle_timeout_secs",
                "must be between 5 and 600",
            ));
        }
        Ok(())
    }
}
