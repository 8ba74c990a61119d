use crate::{ConfigError, Secret, Validate, check_label};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Configuration of `warren control`, the control plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `sqlite://…` (default: `warren.db` in `data_dir`) or `postgres://…`.
    #[serde(default)]
    pub database_url: Option<Secret>,
    /// Sessions are `https://<id>.<domain>[:port]`.
    pub domain: String,
    /// Where the relays serve sessions' ports, when not under `domain`
    /// (the relays' `preview_domain`): the API's preview links name it.
    #[serde(default)]
    pub preview_domain: Option<String>,
    /// Port of the relays' HTTPS listener, when it is not 443.
    #[serde(default)]
    pub https_port: Option<u16>,
    /// Where users point ssh (`host:port`).
    #[serde(default)]
    pub ssh_endpoint: Option<String>,
    /// Operators' key; made on first start (and written to `data_dir/admin.key`) when unset.
    #[serde(default)]
    pub admin_api_key: Option<Secret>,
    /// What relays present to the internal API.
    pub relay_secret: Secret,
    /// Relays' tunnel listeners, handed to joining workers.
    #[serde(default)]
    pub relays: Vec<crate::RelayTarget>,
    /// Every replica's URL as workers reach it, handed to joining workers
    /// so that they fail over between replicas.
    #[serde(default)]
    pub control_urls: Vec<String>,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub sessions: SessionDefaults,
    /// Serve the API over TLS (rustls): node credentials, the relay secret
    /// and API keys then never cross the network in clear.
    #[serde(default)]
    pub tls: Option<ControlTls>,
    #[serde(default)]
    pub auth: ControlAuth,
    /// Warm pools kept on every worker (`[[pools]]`).
    #[serde(default)]
    pub pools: Vec<crate::PoolConfig>,
}

/// How long what a link was exchanged for lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlAuth {
    /// A refresh grant (what a page keeps after it was opened with a link)
    /// ends after this long without a renewal, and always with its session.
    pub grant_idle_secs: u64,
}

impl Default for ControlAuth {
    fn default() -> Self {
        Self {
            grant_idle_secs: 8 * 3600,
        }
    }
}

/// PEM files of control's TLS certificate (with its chain) and key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The node with the most headroom (default).
    #[default]
    Spread,
    /// The node with the least headroom that fits.
    Binpack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub strategy: Strategy,
    /// A node without a heartbeat for this long is `unreachable`: it gets no
    /// new sessions, but its sessions stay `running` (a control-plane
    /// hiccup must never kill shells; the relays still reach them).
    pub heartbeat_timeout_secs: u64,
    /// An unreachable node silent this much longer is `lost`, with its
    /// sessions (its agent then removes them if it ever comes back).
    pub node_lost_grace_secs: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Spread,
            heartbeat_timeout_secs: 10,
            node_lost_grace_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionDefaults {
    pub image: String,
    pub memory_mb: u64,
    pub cpus: f64,
    pub ttl_secs: u64,
    pub idle_timeout_secs: u64,
    /// How long `POST /v1/sessions` waits for the session to run.
    pub create_timeout_secs: u64,
    /// Lifetime of session tokens.
    pub token_ttl_secs: u64,
    /// Per-tenant limits for tenants created without their own.
    pub tenant_max_sessions: u64,
    pub tenant_max_memory_mb: u64,
    /// Disk all of a tenant's live sessions may hold together, in MB.
    pub tenant_max_disk_mb: u64,
    /// Disk a session gets when it does not ask (MB); counted in placement
    /// and quotas like memory.
    pub disk_mb: u64,
    /// The most disk one session may ask for (MB); nodes may allow less.
    pub max_disk_mb: u64,
    /// Registries session images may name (`registry.example.com/x`):
    /// a worker's Docker engine pulls from them, so an unlisted one could be
    /// any address the worker reaches. Names without a registry (local
    /// images, Docker Hub) are always allowed.
    pub allowed_registries: Vec<String>,
    /// Name patterns session images must match (`warren/session:*`,
    /// `docker.io/library/*`; `*` is any characters); empty: any name the
    /// registries above allow.
    pub allowed_images: Vec<String>,
    /// Lets sessions ask for `"egress": "internet"` and list CIDRs outside
    /// the private ranges (`0.0.0.0/0` included).
    pub allow_internet_egress: bool,
    /// Largest file one upload (`PUT /v1/sessions/{id}/files`) may carry,
    /// in MB; the session's disk bounds it too.
    pub max_upload_mb: u64,
    /// Snapshots one tenant may keep (each is an image on a worker's disk,
    /// as large as its session's disk at most).
    pub tenant_max_snapshots: u64,
    /// Snapshot bytes one tenant may hold in all, in MB (a new snapshot is
    /// refused once they are reached).
    pub tenant_max_snapshot_mb: u64,
    /// Record every terminal of every session (asciicast v2, output and
    /// resizes), listed at `GET /v1/sessions/{id}/recordings`.
    pub record_terminals: bool,
    /// Recording bytes one session may hold in all, in MB; past it the
    /// recordings stop (marked truncated).
    pub max_recording_mb: u64,
    /// Hours recordings are kept after their session ends.
    pub recording_keep_hours: u64,
    /// Recording bytes all of one tenant's sessions may hold, in MB (past
    /// it, its recordings stop until old ones are purged).
    pub tenant_max_recording_mb: u64,
}

impl Default for SessionDefaults {
    fn default() -> Self {
        Self {
            image: "warren/session:dind".into(),
            memory_mb: 512,
            cpus: 1.0,
            ttl_secs: 1800,
            idle_timeout_secs: 1800,
            create_timeout_secs: 120,
            token_ttl_secs: 600,
            tenant_max_sessions: 20,
            tenant_max_memory_mb: 16384,
            tenant_max_disk_mb: 1_048_576,
            disk_mb: 4096,
            max_disk_mb: 65_536,
            allowed_registries: vec!["docker.io".into()],
            allowed_images: Vec::new(),
            allow_internet_egress: false,
            max_upload_mb: 1024,
            tenant_max_snapshots: 10,
            tenant_max_snapshot_mb: 20_480,
            record_terminals: true,
            max_recording_mb: 16,
            recording_keep_hours: 168,
            tenant_max_recording_mb: 2048,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/warren/control")
}

impl Validate for ControlConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for label in self.domain.split('.') {
            check_label("domain", label)?;
        }
        if !self.data_dir.is_absolute() {
            return Err(ConfigError::invalid("data_dir", "must be an absolute path"));
        }
        if let Some(u) = &self.database_url {
            let u = u.expose();
            if !(u.starts_with("sqlite:")
                || u.starts_with("postgres://")
                || u.starts_with("postgresql://"))
            {
                return Err(ConfigError::invalid(
                    "database_url",
                    "must start with sqlite: or postgres://",
                ));
            }
        }
        if self.relay_secret.expose().len() < 16 {
            return Err(ConfigError::invalid(
                "relay_secret",
                "must be at least 16 characters",
            ));
        }
        if let Some(k) = &self.admin_api_key
            && k.expose().len() < 24
        {
            return Err(ConfigError::invalid(
                "admin_api_key",
                "must be at least 24 characters",
            ));
        }
        let s = &self.sessions;
        if !(16..=1_048_576).contains(&s.memory_mb) {
            return Err(ConfigError::invalid(
                "sessions.memory_mb",
                "must be between 16 and 1048576",
            ));
        }
        if !(s.cpus > 0.0 && s.cpus <= 256.0) {
            return Err(ConfigError::invalid("sessions.cpus", "must be in (0, 256]"));
        }
        if !(60..=7 * 86_400).contains(&s.ttl_secs) {
            return Err(ConfigError::invalid(
                "sessions.ttl_secs",
                "must be between 60 and 604800",
            ));
        }
        if !(60..=7 * 86_400).contains(&s.idle_timeout_secs) {
            return Err(ConfigError::invalid(
                "sessions.idle_timeout_secs",
                "must be between 60 and 604800",
            ));
        }
        // Short lifetimes are fine: pages renew their tokens.
        if !(10..=86_400).contains(&s.token_ttl_secs) {
            return Err(ConfigError::invalid(
                "sessions.token_ttl_secs",
                "must be between 10 and 86400",
            ));
        }
        if !(64..=4_194_304).contains(&s.max_disk_mb) {
            return Err(ConfigError::invalid(
                "sessions.max_disk_mb",
                "must be between 64 and 4194304",
            ));
        }
        if s.disk_mb != 0 && !(64..=s.max_disk_mb).contains(&s.disk_mb) {
            return Err(ConfigError::invalid(
                "sessions.disk_mb",
                "must be 0 (the worker's default) or between 64 and sessions.max_disk_mb",
            ));
        }
        for (i, p) in s.allowed_images.iter().enumerate() {
            if p.is_empty()
                || p.len() > 255
                || p.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::invalid(
                    format!("sessions.allowed_images[{i}]"),
                    "must be an image name pattern (1 to 255 characters, no spaces; `*` is any characters)",
                ));
            }
        }
        if self.pools.len() > crate::MAX_POOLS {
            return Err(ConfigError::invalid(
                "pools",
                format!("at most {} pools", crate::MAX_POOLS),
            ));
        }
        for (i, p) in self.pools.iter().enumerate() {
            p.validate(i)?;
            if p.disk_mb.is_some_and(|d| d > s.max_disk_mb) {
                return Err(ConfigError::invalid(
                    format!("pools[{i}].disk_mb"),
                    "must be at most sessions.max_disk_mb",
                ));
            }
        }
        if !(60..=30 * 86_400).contains(&self.auth.grant_idle_secs) {
            return Err(ConfigError::invalid(
                "auth.grant_idle_secs",
                "must be between 60 and 2592000 (30 days)",
            ));
        }
        for (i, u) in self.control_urls.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 2048 {
                return Err(ConfigError::invalid(
                    format!("control_urls[{i}]"),
                    format!("{u:?} must be an http:// or https:// URL"),
                ));
            }
        }
        if !(2..=3600).contains(&self.scheduler.heartbeat_timeout_secs) {
            return Err(ConfigError::invalid(
                "scheduler.heartbeat_timeout_secs",
                "must be between 2 and 3600",
            ));
        }
        if self.scheduler.node_lost_grace_secs > 7 * 86_400 {
            return Err(ConfigError::invalid(
                "scheduler.node_lost_grace_secs",
                "must be at most 604800 (a week)",
            ));
        }
        Ok(())
    }
}
