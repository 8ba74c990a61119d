use crate::{ConfigError, Secret, Validate, check_label};
use serde::Deserialize;
use std::path::PathBuf;

/// Configuration of `warren agent`, the per-worker node agent.
///
/// Two ways to enrol: through the control plane (`control_url`; the agent
/// joins once with a token and keeps the credential and relay list it is
/// given in `data_dir`), or static (`node_id`, `credential` and `relays`
/// written here, for relays that check a shared node secret).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The control plane to join and report to: one URL, or every replica's,
    /// comma-separated (the agent fails over between them). Without it, the
    /// agent runs static: `node_id`, `credential` and `relays` are then
    /// required.
    #[serde(default)]
    pub control_url: Option<String>,
    /// PEM CA that signed control's certificate (an `https://` control_url
    /// with a private CA); remembered from the join.
    #[serde(default)]
    pub control_ca_file: Option<PathBuf>,
    /// This node's id (DNS-label safe); labels every container it creates.
    /// With `control_url`: the id to join as (default: the host name).
    #[serde(default)]
    pub node_id: String,
    /// Where the agent keeps per-session directories and its credential.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Credential presented to relays when registering (static only).
    #[serde(default)]
    pub credential: Secret,
    /// Relays to keep a connection to, all of them, for HA (static only;
    /// with `control_url` the control plane names them).
    #[serde(default)]
    pub relays: Vec<RelayTarget>,
    /// Memory offered to sessions in MB (default: host memory less a reserve).
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub docker: DockerConfig,
    #[serde(default)]
    pub terminal: TerminalConfig,
    #[serde(default)]
    pub admin: AgentAdmin,
}

/// The agent's admin listener: Prometheus `/metrics` and `/healthz`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAdmin {
    /// e.g. `127.0.0.1:9101` (none: no metrics served). The node record
    /// names it as `metrics_addr`.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// One relay the agent dials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayTarget {
    /// `host:port` of the relay's QUIC listener.
    pub addr: String,
    /// Name the relay's certificate is checked against.
    pub server_name: String,
    /// PEM CA that signed the relay's certificate (else the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The security profile session containers run with (docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    /// `dind` where the engine remaps user namespaces; else, with
    /// `allow_host_root_sessions`, `privileged` if the host's capability
    /// bounding set is full, else `capabilities`; else `default`.
    #[default]
    Auto,
    /// Host root: `--privileged` (needs `allow_host_root_sessions`).
    Privileged,
    /// Host root: every capability in the host's bounding set, unconfined
    /// seccomp/AppArmor/system paths, host cgroups writable (needs
    /// `allow_host_root_sessions`).
    Capabilities,
    /// Isolated: Docker's default capabilities less NET_RAW, a private cgroup
    /// namespace, no new privileges. No Docker engine inside.
    Default,
    /// Isolated Docker-in-Docker: the session's root is an unprivileged host
    /// uid (the engine must run with `userns-remap`); it holds SYS_ADMIN only
    /// inside its own user namespace, and `docker` inside is podman.
    Dind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// Bridge network for sessions (internal, inter-container traffic off).
    pub network: String,
    pub security: SecurityMode,
    /// Lets `privileged`/`capabilities` (and `auto`) make a session's root
    /// root on this worker: any tenant can then take the host and every
    /// other session on it. Only for a single trusted user (`warren up`).
    pub allow_host_root_sessions: bool,
    /// OCI runtime, e.g. `sysbox-runc`; Docker's default when unset.
    pub runtime: Option<String>,
    /// Static `warren-init` binary bind-mounted into every session.
    pub init_binary: Option<PathBuf>,
    pub default_image: String,
    pub default_memory_mb: u64,
    pub default_cpus: f64,
    /// Pins each session to `ceil(cpus)` of the worker's cores, the least
    /// loaded at creation (a CPU quota alone lets a 1-CPU session run on
    /// every core at once, delaying every neighbour).
    pub pin_cpus: bool,
    pub pids_limit: i64,
    /// Writable disk per session in MB (0: no limit), where the engine can
    /// enforce it (overlay2 on XFS mounted with project quotas).
    pub default_disk_mb: u64,
    /// The most disk one session may have here (MB): a larger ask is refused.
    pub max_disk_mb: u64,
    /// Disk this worker offers sessions in all (MB; 0: the free space of
    /// the data directory's filesystem at start, less a reserve). Session
    /// disks are sparse, so without this bound the worker would promise
    /// more than it has.
    pub disk_capacity_mb: u64,
    /// Disk the engine's images may use before the agent removes images it
    /// pulled that no session uses (MB; 0: never prune).
    pub image_budget_mb: u64,
    /// MiB/s each session may write to its loop disk (0: no limit). A
    /// session writing at the disk's full speed delays every neighbour.
    pub disk_write_mbps: u64,
    /// MiB/s each session may read from its loop disk (0: no limit).
    pub disk_read_mbps: u64,
    /// Write requests per second to a session's loop disk (0: no limit):
    /// small synced writes cost the worker's disk a flush each.
    pub disk_write_iops: u64,
    /// Read requests per second from a session's loop disk (0: no limit).
    pub disk_read_iops: u64,
    /// IPv4 range (`a.b.c.d/n`, n at most 28) the agent carves sessions'
    /// own networks from (a /28 each) when they have an egress policy.
    /// Addresses in it are this worker's: no session reaches them.
    pub egress_pool: String,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            network: "warren-sessions".into(),
            security: SecurityMode::Auto,
            allow_host_root_sessions: false,
            runtime: None,
            init_binary: None,
            default_image: "warren/session:dind".into(),
            default_memory_mb: 1024,
            default_cpus: 1.0,
            pin_cpus: true,
            pids_limit: 1024,
            default_disk_mb: 10_240,
            max_disk_mb: 65_536,
            disk_capacity_mb: 0,
            image_budget_mb: 20_480,
            disk_write_mbps: 32,
            disk_read_mbps: 0,
            disk_write_iops: 1000,
            disk_read_iops: 0,
            egress_pool: "10.254.0.0/16".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerminalConfig {
    /// Seconds a shell with no attached client keeps running before it is hung up.
    pub detached_timeout_secs: u64,
    /// Output kept per terminal for exact resume after a reconnect, in
    /// bytes. It lives in the session's `warren-init`, so it counts against
    /// the session's own memory limit (and so is bounded per session).
    pub replay_bytes: u64,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        Self {
            detached_timeout_secs: 900,
            replay_bytes: 2 * 1024 * 1024,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/warren/agent")
}

/// `a.b.c.d/n`, 8 <= n <= 28, host bits clear: room for /28 networks.
fn is_pool(s: &str) -> bool {
    let Some((a, p)) = s.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(prefix)) = (a.parse::<std::net::Ipv4Addr>(), p.parse::<u32>()) else {
        return false;
    };
    let host_bits = u32::MAX.checked_shr(prefix).unwrap_or(0);
    (8..=28).contains(&prefix) && u32::from(addr) & host_bits == 0
}

impl Validate for AgentConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match &self.control_url {
            None => {
                check_label("node_id", &self.node_id)?;
                if self.credential.is_empty() {
                    return Err(ConfigError::invalid(
                        "credential",
                        "must not be empty (or set control_url to join through the control plane)",
                    ));
                }
                if self.relays.is_empty() {
                    return Err(ConfigError::invalid(
                        "relays",
                        "at least one relay is needed (or set control_url to join through the control plane)",
                    ));
                }
            }
            Some(list) => {
                let urls: Vec<&str> = list.split(',').map(str::trim).collect();
                for url in &urls {
                    if !(url.starts_with("http://") || url.starts_with("https://"))
                        || url.len() > 2048
                    {
                        return Err(ConfigError::invalid(
                            "control_url",
                            format!(
                                "{url:?} must be an http:// or https:// URL (several: comma-separated)"
                            ),
                        ));
                    }
                }
                if !self.node_id.is_empty() {
                    check_label("node_id", &self.node_id)?;
                }
            }
        }
        if let Some(m) = self.memory_mb
            && !(16..=1 << 30).contains(&m)
        {
            return Err(ConfigError::invalid(
                "memory_mb",
                "must be between 16 and 1073741824",
            ));
        }
        for (i, r) in self.relays.iter().enumerate() {
            let key = format!("relays[{i}].addr");
            match r.addr.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                _ => {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{:?} must be host:port", r.addr),
                    ));
                }
            }
            if r.server_name.is_empty() || r.server_name.len() > 253 {
                return Err(ConfigError::invalid(
                    format!("relays[{i}].server_name"),
                    "must be a DNS name",
                ));
            }
        }
        if !self.data_dir.is_absolute() {
            return Err(ConfigError::invalid("data_dir", "must be an absolute path"));
        }
        let d = &self.docker;
        for (key, v) in [
            ("docker.disk_write_mbps", d.disk_write_mbps),
            ("docker.disk_read_mbps", d.disk_read_mbps),
            ("docker.disk_write_iops", d.disk_write_iops),
            ("docker.disk_read_iops", d.disk_read_iops),
        ] {
            if v > 1_000_000 {
                return Err(ConfigError::invalid(
                    key,
                    "must be at most 1000000 per second (0: no limit)",
                ));
            }
        }
        if !is_pool(&d.egress_pool) {
            return Err(ConfigError::invalid(
                "docker.egress_pool",
                "must be an IPv4 network a.b.c.d/n with n from 8 to 28 and no host bits set",
            ));
        }
        if d.network.is_empty() || d.network.len() > 64 {
            return Err(ConfigError::invalid(
                "docker.network",
                "must be 1-64 characters",
            ));
        }
        if matches!(
            d.security,
            SecurityMode::Privileged | SecurityMode::Capabilities
        ) && !d.allow_host_root_sessions
        {
            return Err(ConfigError::invalid(
                "docker.security",
                "privileged and capabilities make a session's root root on the worker; \
                 set docker.allow_host_root_sessions = true to accept that, or use default",
            ));
        }
        if let Some(p) = &d.init_binary
            && !p.is_absolute()
        {
            return Err(ConfigError::invalid(
                "docker.init_binary",
                "must be an absolute path",
            ));
        }
        if d.default_image.is_empty() {
            return Err(ConfigError::invalid(
                "docker.default_image",
                "must not be empty",
            ));
        }
        if !(16..=1_048_576).contains(&d.default_memory_mb) {
            return Err(ConfigError::invalid(
                "docker.default_memory_mb",
                "must be between 16 and 1048576",
            ));
        }
        if !(d.default_cpus > 0.0 && d.default_cpus <= 256.0) {
            return Err(ConfigError::invalid(
                "docker.default_cpus",
                "must be in (0, 256]",
            ));
        }
        if !(16..=1_000_000).contains(&d.pids_limit) {
            return Err(ConfigError::invalid(
                "docker.pids_limit",
                "must be between 16 and 1000000",
            ));
        }
        if d.default_disk_mb != 0 && !(64..=4_194_304).contains(&d.default_disk_mb) {
            return Err(ConfigError::invalid(
                "docker.default_disk_mb",
                "must be 0 (no limit) or between 64 and 4194304",
            ));
        }
        if !(64..=4_194_304).contains(&d.max_disk_mb) || d.default_disk_mb > d.max_disk_mb {
            return Err(ConfigError::invalid(
                "docker.max_disk_mb",
                "must be between 64 and 4194304, and at least docker.default_disk_mb",
            ));
        }
        if d.disk_capacity_mb != 0 && d.disk_capacity_mb < 64 {
            return Err(ConfigError::invalid(
                "docker.disk_capacity_mb",
                "must be 0 (measured) or at least 64",
            ));
        }
        if !(65_536..=67_108_864).contains(&self.terminal.replay_bytes) {
            return Err(ConfigError::invalid(
                "terminal.replay_bytes",
                "must be between 65536 (64 KiB) and 67108864 (64 MiB)",
            ));
        }
        if !(10..=86_400).contains(&self.terminal.detached_timeout_secs) {
            return Err(ConfigError::invalid(
                "terminal.detached_timeout_secs",
                "must be between 10 and 86400",
            ));
        }
        Ok(())
    }
}
