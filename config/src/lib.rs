//! Typed configuration for Warren's parts.
//!
//! Every part reads one TOML file and then `WARREN_<PART>_*` environment
//! variables (nested keys joined by `__`, e.g. `WARREN_AGENT_DOCKER__NETWORK`).
//! Unknown keys are rejected, values are validated after parsing, and errors
//! name the offending key. Secrets live in [`Secret`], which never prints.
#![forbid(unsafe_code)]

mod agent;
mod control;
mod pools;
mod relay;
mod secret;

pub use agent::{AgentAdmin, AgentConfig, DockerConfig, RelayTarget, SecurityMode, TerminalConfig};
pub use control::{ControlConfig, ControlTls, SchedulerConfig, SessionDefaults, Strategy};
pub use pools::{MAX_POOL_SIZE, MAX_POOLS, PoolConfig};
pub use relay::{
    AuthConfig, HttpsConfig, ListenConfig, RelayConfig, RelayControl, RelayTunnelConfig,
    StaticRoute,
};
pub use secret::{Secret, write_private};

pub use figment;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;
use std::path::Path;

/// A configuration error, worded for the operator who wrote the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed into the expected shape.
    #[error("{0}")]
    Parse(String),
    /// A value parsed but is not acceptable.
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A configuration section that can check itself after parsing.
pub trait Validate {
    /// Returns the first problem found, naming its key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads a part's configuration: defaults, then the TOML file (if any), then
/// `WARREN_<PART>_*` environment variables; then validates it.
pub fn load<T: DeserializeOwned + Validate>(
    part: &str,
    file: Option<&Path>,
) -> Result<T, ConfigError> {
    load_with(part, file, |f| f)
}

/// [`load`] with command-line flags on top: `flags` merges them (as
/// `figment::providers::Serialized::default("key.path", value)`) over the
/// file and the environment, before validation.
pub fn load_with<T: DeserializeOwned + Validate>(
    part: &str,
    file: Option<&Path>,
    flags: impl FnOnce(Figment) -> Figment,
) -> Result<T, ConfigError> {
    let mut fig = Figment::new();
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError::Parse(format!(
                "config file {} does not exist",
                file.display()
            )));
        }
        fig = fig.merge(Toml::file_exact(file));
    }
    fig = fig.merge(Env::prefixed(&format!("WARREN_{}_", part.to_ascii_uppercase())).split("__"));
    extract(flags(fig))
}

/// [`load`] and [`load_with`] for each part, instantiated here, where the
/// types live: figment's and serde's deserialisers for a whole
/// configuration are the largest generic code in the build, and compiled
/// here they build early, beside other crates, instead of in the `warren`
/// command's library at the end (docs/benchmarks.md, "A fresh clone to a
/// terminal").
pub fn load_control(file: Option<&Path>) -> Result<ControlConfig, ConfigError> {
    load("control", file)
}

/// See [`load_control`].
pub fn load_relay(file: Option<&Path>) -> Result<RelayConfig, ConfigError> {
    load("relay", file)
}

/// See [`load_control`]; `flags` as for [`load_with`].
pub fn load_agent(
    file: Option<&Path>,
    flags: Box<dyn FnOnce(Figment) -> Figment + '_>,
) -> Result<AgentConfig, ConfigError> {
    load_with("agent", file, flags)
}

/// Parses a configuration from a TOML string (no environment), then validates it.
pub fn from_toml_str<T: DeserializeOwned + Validate>(toml: &str) -> Result<T, ConfigError> {
    extract(Figment::from(Toml::string(toml)))
}

fn extract<T: DeserializeOwned + Validate>(fig: Figment) -> Result<T, ConfigError> {
    let value: T = fig.extract().map_err(|e| {
        // figment's errors already name the key path and the source.
        let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        ConfigError::Parse(msgs.join("; "))
    })?;
    value.validate()?;
    Ok(value)
}

/// Checks that `value` is a DNS-label-safe identifier (lowercase letters,
/// digits and inner hyphens, 1..=63 bytes).
pub fn check_label(key: &str, value: &str) -> Result<(), ConfigError> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{value:?} must be 1-63 lowercase letters, digits or inner hyphens"),
        ))
    }
}

/// True when `s` is a lowercase DNS label: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 bytes.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
