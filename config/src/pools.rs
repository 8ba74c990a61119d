//! Warm pools (`[[pools]]` in control's config): containers started ahead
//! of demand on every worker, per image and size, claimed by a create that
//! asks for exactly that image and size.
use serde::Deserialize;

use crate::ConfigError;

/// The most warm containers one pool keeps on one worker.
pub const MAX_POOL_SIZE: u32 = 64;
/// The most pools one control plane lists.
pub const MAX_POOLS: usize = 16;

/// One pool: what its containers are, and how many each worker keeps
/// warm. Unset fields take `[sessions]`' defaults, so `[[pools]] size = 4`
/// warms the sessions a create with no options gets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub disk_mb: Option<u64>,
    /// Warm containers per worker (memory allowing: a worker keeps only as
    /// many as fit beside its sessions' reservations).
    pub size: u32,
}

impl PoolConfig {
    /// [`Self::validate`] for a pool given on its own (a CLI flag).
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate(0)
    }

    pub(crate) fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |f: &str| format!("pools[{i}].{f}");
        if !(1..=MAX_POOL_SIZE).contains(&self.size) {
            return Err(ConfigError::invalid(
                key("size"),
                format!("must be between 1 and {MAX_POOL_SIZE}"),
            ));
        }
        if let Some(image) = &self.image
            && (image.is_empty()
                || image.len() > 255
                || image.starts_with('-')
                || image.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError::invalid(
                key("image"),
                "must be an image reference (1 to 255 characters, no spaces)",
            ));
        }
        if let Some(m) = self.memory_mb
            && !(16..=1_048_576).contains(&m)
        {
            return Err(ConfigError::invalid(
                key("memory_mb"),
                "must be between 16 and 1048576",
            ));
        }
        if let Some(c) = self.cpus
            && !(0.01..=256.0).contains(&c)
        {
            return Err(ConfigError::invalid(
                key("cpus"),
                "must be between 0.01 and 256",
            ));
        }
        if let Some(d) = self.disk_mb
            && d != 0
            && d < 64
        {
            return Err(ConfigError::invalid(
                key("disk_mb"),
                "must be 0 (the worker's default disk) or at least 64",
            ));
        }
        Ok(())
    }
}
