//! Session containers on Docker (bollard): create, adopt, remove.
//!
//! Every container runs `warren-init` (bind-mounted read-only) as its
//! entrypoint, with the image's own entrypoint and command passed after
//! `--`. Init's socket lives on a small tmpfs inside the container, reached
//! by the agent through [`crate::serve::initsock`]; no host directory is writable
//! from a session.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, NetworkCreateRequest, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
};
use futures_util::StreamExt;
use tracing::{info, warn};
use warren_config::DockerConfig;

use crate::sandbox::security::SecurityProfile;
use crate::serve::initsock::InitTarget;

pub const LABEL_MANAGED: &str = "warren.managed";
pub const LABEL_SESSION: &str = "warren.session";
pub const LABEL_NODE: &str = "warren.node";
pub const LABEL_MEMORY: &str = "warren.memory_mb";
/// Set to `loop` on sessions whose writable layer is a loop-mounted disk.
pub const LABEL_DISK: &str = "warren.disk";
/// The cores a session is pinned to ("0,1") and its CPU limit.
pub const LABEL_CPUSET: &str = "warren.cpuset";
pub const LABEL_CPUS: &str = "warren.cpus";
/// Where init's socket directory (a tmpfs) is mounted in every session.
const SOCKET_DIR_IN_CONTAINER: &str = "/run/warren";
/// Bound on a session's container log (init's and the image command's output).
const LOG_MAX_SIZE: &str = "1m";
/// Free space (MiB) the worker keeps for itself: below it, no new sessions
/// with loop disks.
const MIN_FREE_DISK_MB: u64 = 1024;
/// Time a new container has to bring up its init socket.
const INIT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run for one session; unset fields take the agent's defaults.
#[derive(Debug, Clone, Default)]
pub struct SessionSpec {
    pub id: String,
    pub image: Option<String>,
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// Writable disk (image layer changes, inner images) in MB.
    pub disk_mb: Option<u64>,
}

/// A session container the agent runs.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub container_id: String,
    pub image: String,
    pub memory_mb: u64,
    /// Address on the sessions network, where its ports are reached.
    pub ip: Option<IpAddr>,
    /// The session's init, as the agent reaches it.
    pub init: InitTarget,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid session spec: {0}")]
    Invalid(String),
    /// The engine's own words stay in the agent's log: they may name
    /// internal addresses.
    #[error("image {0} is not available on this worker")]
    Image(String, String),
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("session {0} did not become ready: {1}")]
    NotReady(String, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Details (paths, mount errors) stay in the agent's log.
    #[error("session {0}: its disk limit could not be set up on this worker")]
    Disk(String),
}

pub struct DockerRuntime {
    docker: Docker,
    cfg: DockerConfig,
    node_id: String,
    sessions_dir: PathBuf,
    init_binary: PathBuf,
    // Narrowed at runtime if the engine does not know a capability name.
    security: std::sync::Mutex<SecurityProfile>,
    labels: BTreeMap<String, String>,
    terminal: warren_config::TerminalConfig,
    /// The engine enforces `--storage-opt size` (cleared if it says not).
    disk_quota: std::sync::atomic::AtomicBool,
    /// Loop-mounted session disks, where the engine cannot limit them.
    loop_disks: Option<crate::sandbox::disk::LoopDisks>,
    docker_root: PathBuf,
    /// Cores each session is pinned to (`docker.pin_cpus`).
    pins: Option<std::sync::Mutex<crate::sandbox::cpus::Pins>>,
}

impl DockerRuntime {
    /// Connects to the local Docker engine, negotiates the API version,
    /// resolves the security profile and makes sure the sessions network exists.
    pub async fn connect(
        cfg: DockerConfig,
        node_id: &str,
        data_dir: &Path,
        init_binary: PathBuf,
        extra_labels: BTreeMap<String, String>,
        terminal: warren_config::TerminalConfig,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let docker = Docker::connect_with_local_defaults()
            .context("connecting to Docker")?
            .negotiate_version()
            .await
            .context("Docker does not answer (is dockerd running?)")?;
        if !init_binary.is_file() {
            anyhow::bail!(
                "warren-init binary not found at {} (build it with scripts/build-init.sh or set docker.init_binary)",
                init_binary.display()
            );
        }
        let info = docker
            .info()
            .await
            .context("asking Docker for its settings")?;
        let engine_userns = info
            .security_options
            .as_ref()
            .is_some_and(|o| o.iter().any(|s| s.contains("name=userns")));
        if cfg.security == warren_config::SecurityMode::Dind && !engine_userns {
            anyhow::bail!(
                "docker.security = dind needs a Docker engine with user-namespace remapping \
                 (\"userns-remap\": \"default\" in /etc/docker/daemon.json; scripts/setup-host.sh sets it)"
            );
        }
        // Docker limits a container's disk only with overlay2 on XFS mounted
        // with project quotas (`pquota` cannot be seen from here: the first
        // create tries, and an engine that refuses turns it off). Elsewhere
        // the agent gives each session a loop-mounted disk (crate::sandbox::disk).
        let driver = info.driver.clone().unwrap_or_default();
        let backing = info
            .driver_status
            .as_ref()
            .and_then(|d| {
                d.iter()
                    .find(|kv| kv.first().is_some_and(|k| k == "Backing Filesystem"))
            })
            .and_then(|kv| kv.get(1).cloned())
            .unwrap_or_default();
        let disk_quota = driver == "overlay2" && backing == "xfs";
        let loop_disks = if driver == "overlay2" {
            crate::sandbox::disk::LoopDisks::detect(
                data_dir,
                crate::sandbox::blkio::Rates::from_config(&cfg),
            )
        } else {
            Err(format!("the storage driver is {driver}, not overlay2"))
        };
        let loop_disks = match loop_disks {
            Ok(l) => {
                if !disk_quota {
                    info!(%backing, "session disks are loop-mounted filesystems (Docker cannot limit them on {backing})");
                }
                Some(l)
            }
            Err(why) if disk_quota => {
                info!("session disks are limited by XFS project quotas (no loop fallback: {why})");
                None
            }
            Err(why) => {
                warn!(%driver, %backing, "sessions have no disk limit here: Docker cannot set one (needs overlay2 on XFS with pquota) and {why}");
                None
            }
        };
        let docker_root = PathBuf::from(info.docker_root_dir.clone().unwrap_or_default());
        let security =
            SecurityProfile::detect(cfg.security, cfg.allow_host_root_sessions, engine_userns);
        if security.is_host_root() {
            warn!(profile = %security.describe(), "HOST-ROOT SESSIONS: any session can take this worker and every session on it (docker.allow_host_root_sessions)");
        }
        info!(profile = %security.describe(), api = %docker.client_version(), "docker runtime ready");
        let security = std::sync::Mutex::new(security);
        let sessions_dir = data_dir.join("sessions");
        std::fs::create_dir_all(&sessions_dir)
            .with_context(|| format!("creating {}", sessions_dir.display()))?;
        let mut labels = extra_labels;
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_NODE.into(), node_id.into());
        let cfg_pin_cpus = cfg.pin_cpus;
        let rt = Self {
            docker,
            cfg,
            node_id: node_id.into(),
            sessions_dir,
            init_binary,
            security,
            labels,
            terminal,
            disk_quota: std::sync::atomic::AtomicBool::new(disk_quota),
            loop_disks,
            docker_root,
            pins: cfg_pin_cpus.then(|| {
                std::sync::Mutex::new(crate::sandbox::cpus::Pins::new(
                    crate::sandbox::cpus::allowed(),
                ))
            }),
        };
        rt.ensure_network().await?;
        Ok(rt)
    }

    /// Whether sessions here get a disk limit.
    pub fn disk_limits(&self) -> bool {
        self.disk_quota() || self.loop_disks.is_some()
    }

    /// How session disks are limited here: `quota`, `loop` or `none`.
    pub fn disk_backend(&self) -> &'static str {
        if self.disk_quota() {
            "quota"
        } else if self.loop_disks.is_some() {
            "loop"
        } else {
            "none"
        }
    }

    fn disk_quota(&self) -> bool {
        self.disk_quota.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn security(&self) -> SecurityProfile {
        self.security
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Older engines reject capability names newer than themselves (Docker
    /// 20.10 does not know `CAP_PERFMON`); drop the one named and go on.
    fn drop_unknown_capability(&self, err: &bollard::errors::Error) -> bool {
        let bollard::errors::Error::DockerResponseServerError {
            status_code: 400,
            message,
        } = err
        else {
            return false;
        };
        let Some(rest) = message.split("unknown capability: ").nth(1) else {
            return false;
        };
        let name = rest.trim_matches(|c: char| c == '"' || c == '\\' || c.is_whitespace());
        let name = name.strip_prefix("CAP_").unwrap_or(name).to_string();
        let mut sec = self.security.lock().unwrap_or_else(|e| e.into_inner());
        if let SecurityProfile::Capabilities { caps, missing } = &mut *sec {
            if let Some(i) = caps.iter().position(|c| *c == name) {
                caps.remove(i);
                missing.push(name.clone());
                warn!(capability = %name, "Docker does not know this capability; sessions run without it");
                return true;
            }
            // Another create, racing this one, dropped it already: retry too.
            return missing.contains(&name);
        }
        false
    }

    /// overlay2 without XFS project quotas refuses `size`: stop asking
    /// (sessions then get loop disks, or run without a disk limit and the
    /// node says so).
    fn disk_limit_unsupported(&self, err: &bollard::errors::Error) -> bool {
        let bollard::errors::Error::DockerResponseServerError { message, .. } = err else {
            return false;
        };
        if message.contains("storage-opt") || message.contains("quota") {
            if self
                .disk_quota
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                warn!(
                    fallback = self.disk_backend(),
                    "Docker cannot limit session disks here ({message})"
                );
            }
            return true;
        }
        false
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The sessions network: a bridge with no route out (`internal`) and
    /// inter-container traffic off, so sessions reach neither each other nor
    /// the outside; the host (the agent) still reaches them.
    async fn ensure_network(&self) -> anyhow::Result<()> {
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

    fn container_name(&self, id: &str) -> String {
        format!("warren-{}-{}", self.node_id, id)
    }

    async fn image_command(&self, image: &str) -> Result<Vec<String>, RuntimeError> {
        let inspect = match self.docker.inspect_image(image).await {
            Ok(i) => i,
            Err(_) => {
                self.pull(image).await?;
                self.docker
                    .inspect_image(image)
                    .await
                    .map_err(|e| RuntimeError::Image(image.into(), e.to_string()))?
            }
        };
        let config = inspect.config.unwrap_or_default();
        let mut argv = config.entrypoint.unwrap_or_default();
        argv.extend(config.cmd.unwrap_or_default());
        Ok(argv)
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        info!(%image, "pulling image");
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut s = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = s.next().await {
            if let Err(e) = item {
                warn!(%image, "pull failed: {e}");
                return Err(RuntimeError::Image(image.into(), e.to_string()));
            }
        }
        Ok(())
    }

    /// Creates and starts a session container and waits for its init.
    pub async fn create(&self, spec: &SessionSpec) -> Result<SessionInfo, RuntimeError> {
        if !warren_config::is_dns_label(&spec.id) {
            return Err(RuntimeError::Invalid(format!(
                "session id {:?} is not a DNS label",
                spec.id
            )));
        }
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.cfg.default_image.clone());
        let memory_mb = spec.memory_mb.unwrap_or(self.cfg.default_memory_mb);
        let cpus = spec.cpus.unwrap_or(self.cfg.default_cpus);
        let pids = spec.pids_limit.unwrap_or(self.cfg.pids_limit);
        let disk_mb = spec.disk_mb.unwrap_or(self.cfg.default_disk_mb);
        if spec.disk_mb.is_some_and(|d| !(64..=4_194_304).contains(&d)) {
            return Err(RuntimeError::Invalid(
                "disk_mb must be between 64 and 4194304".into(),
            ));
        }
        if spec.disk_mb.is_some() && !self.disk_limits() {
            return Err(RuntimeError::Invalid(
                "this worker cannot limit disk (its Docker engine needs overlay2, on XFS with project quotas or with loop devices for the agent)".into(),
            ));
        }
        if !((16..=1_048_576).contains(&memory_mb)
            && cpus > 0.0
            && cpus <= 256.0
            && (16..=1_000_000).contains(&pids))
        {
            return Err(RuntimeError::Invalid(
                "memory_mb, cpus or pids_limit out of range".into(),
            ));
        }
        let command = self.image_command(&image).await?;
        // Left by agents before init's socket moved into the container.
        let _ = std::fs::remove_dir_all(self.sessions_dir.join(&spec.id));

        let mut binds = vec![format!(
            "{}:{}:ro",
            self.init_binary.display(),
            warren_init::BINARY_IN_CONTAINER
        )];
        // The session's own resource view (free, /proc/meminfo, uptime, the
        // CPU count from its quota) where lxcfs runs on the worker.
        binds.extend(lxcfs_binds(Path::new(LXCFS_DIR)));
        let mut labels: HashMap<String, String> = self.labels.clone().into_iter().collect();
        labels.insert(LABEL_SESSION.into(), spec.id.clone());
        labels.insert(LABEL_MEMORY.into(), memory_mb.to_string());
        if disk_mb > 0 && self.disk_limits() {
            labels.insert(LABEL_DISK.into(), self.disk_backend().into());
        }

        let pinned = self.pins.as_ref().and_then(|p| {
            p.lock()
                .unwrap_or_else(|e| e.into_inner())
                .assign(&spec.id, cpus)
        });
        let cpuset = pinned.as_deref().map(crate::sandbox::cpus::format_list);
        if let Some(cores) = &cpuset {
            labels.insert(LABEL_CPUSET.into(), cores.clone());
            labels.insert(LABEL_CPUS.into(), cpus.to_string());
        }

        let hc = HostConfig {
            cpuset_cpus: cpuset,
            memory: Some((memory_mb * 1024 * 1024) as i64),
            // No swap: the memory limit is a hard one.
            memory_swap: Some((memory_mb * 1024 * 1024) as i64),
            nano_cpus: Some((cpus * 1e9) as i64),
            pids_limit: Some(pids),
            binds: Some(binds),
            // Init's socket: inside the container, small, counted in the
            // session's memory; never a host directory.
            tmpfs: Some(HashMap::from([(
                SOCKET_DIR_IN_CONTAINER.to_string(),
                "rw,nosuid,nodev,noexec,size=64k,mode=0700".to_string(),
            )])),
            // Container logs are bounded: a session printing to PID 1's
            // stdout must not fill the worker's disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                    ("max-file".to_string(), "1".to_string()),
                ])),
            }),
            network_mode: Some(self.cfg.network.clone()),
            runtime: self.cfg.runtime.clone(),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };

        let mut cmd = vec![
            "--socket".to_string(),
            warren_init::SOCKET_IN_CONTAINER.to_string(),
            "--detached-timeout".to_string(),
            self.terminal.detached_timeout_secs.to_string(),
            "--replay-bytes".to_string(),
            self.terminal.replay_bytes.to_string(),
            "--".to_string(),
        ];
        cmd.extend(command);
        // `nproc` counts the CPUs the process may run on (its pinned cores,
        // or all of the worker's); OMP_NUM_THREADS, which it honours, says
        // the quota.
        let env = vec![format!("OMP_NUM_THREADS={}", cpus.ceil().max(1.0) as u64)];
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            hostname: Some("warren".into()),
            env: Some(env),
            entrypoint: Some(vec![warren_init::BINARY_IN_CONTAINER.to_string()]),
            cmd: Some(cmd),
            labels: Some(labels),
            host_config: Some(hc),
            ..Default::default()
        };
        let name = self.container_name(&spec.id);
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = loop {
            let mut body = body.clone();
            if let Some(hc) = body.host_config.as_mut() {
                self.security().apply(hc);
                if disk_mb > 0 && self.disk_quota() {
                    hc.storage_opt =
                        Some(HashMap::from([("size".to_string(), format!("{disk_mb}M"))]));
                }
            }
            if let Some(l) = body.labels.as_mut()
                && l.contains_key(LABEL_DISK)
            {
                l.insert(LABEL_DISK.into(), self.disk_backend().into());
            }
            match self.docker.create_container(Some(opts.clone()), body).await {
                Ok(c) => break c,
                Err(e) if self.drop_unknown_capability(&e) => continue,
                Err(e)
                    if (spec.disk_mb.is_none() || self.loop_disks.is_some())
                        && self.disk_limit_unsupported(&e) =>
                {
                    continue;
                }
                Err(e) => {
                    self.unpin(&spec.id);
                    return Err(e.into());
                }
            }
        };
        let result = async {
            let mut disk_layer = None;
            if disk_mb > 0
                && !self.disk_quota()
                && let Some(disks) = &self.loop_disks
            {
                // Loop disks are thin: a worker whose own disk is nearly full
                // takes no more sessions rather than fail them all later.
                if disks.free_mb().is_some_and(|f| f < MIN_FREE_DISK_MB) {
                    warn!(session = %spec.id, "refusing a session: the agent's data dir has under {MIN_FREE_DISK_MB} MiB free");
                    return Err(RuntimeError::Invalid(
                        "this worker's disk is nearly full".into(),
                    ));
                }
                let layer = self.layer_dir(&created.id).await?;
                disks.attach(&spec.id, &layer, disk_mb).await.map_err(|e| {
                    warn!(session = %spec.id, "cannot set up the session's disk: {e}");
                    RuntimeError::Disk(spec.id.clone())
                })?;
                disk_layer = Some(layer);
            }
            self.docker.start_container(&created.id, None).await?;
            let info = self
                .inspect(&created.id, &spec.id, &image, memory_mb)
                .await?;
            // The session's own cgroup exists now; its disk's limits go there
            // too (the root cgroup's were set before the start).
            if let (Some(layer), Some(disks)) = (&disk_layer, &self.loop_disks) {
                disks
                    .limit_session(layer, info.init.init_pid)
                    .map_err(|e| {
                        warn!(session = %spec.id, "cannot limit the session's disk bandwidth: {e}");
                        RuntimeError::Disk(spec.id.clone())
                    })?;
            }
            wait_for_init(&info).await?;
            Ok::<_, RuntimeError>(info)
        }
        .await;
        if result.is_err() {
            // Leave nothing half-made behind.
            let _ = self.remove_container_and_disk(&created.id, &spec.id).await;
        }
        result
    }

    /// The container's overlay2 layer directory, for its loop disk.
    async fn layer_dir(&self, container: &str) -> Result<PathBuf, RuntimeError> {
        let c = self.docker.inspect_container(container, None).await?;
        crate::sandbox::disk::layer_dir(c.graph_driver.as_ref(), &self.docker_root).ok_or_else(|| {
            warn!(%container, graph_driver = ?c.graph_driver, "no overlay2 layer directory for the container");
            RuntimeError::Disk(container.into())
        })
    }

    async fn inspect(
        &self,
        container: &str,
        id: &str,
        image: &str,
        memory_mb: u64,
    ) -> Result<SessionInfo, RuntimeError> {
        let c = self.docker.inspect_container(container, None).await?;
        let init_pid = c.state.as_ref().and_then(|s| s.pid).unwrap_or(0) as i32;
        let container_id = c.id.clone().unwrap_or_else(|| container.into());
        let ip = c
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.get(&self.cfg.network).cloned())
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse().ok());
        Ok(SessionInfo {
            id: id.into(),
            container_id: container_id.clone(),
            image: image.into(),
            memory_mb,
            ip,
            init: InitTarget {
                container_id,
                init_pid,
            },
        })
    }

    /// Sessions of this node found by label, started again if they had
    /// stopped (e.g. after a host reboot). Used to adopt them after an agent
    /// restart instead of duplicating or leaking them.
    pub async fn adopt(&self) -> Result<Vec<SessionInfo>, RuntimeError> {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![format!("{LABEL_NODE}={}", self.node_id)],
        );
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        let mut out = Vec::new();
        for c in list {
            let (Some(cid), Some(labels)) = (c.id.clone(), c.labels.clone()) else {
                continue;
            };
            let Some(sid) = labels.get(LABEL_SESSION).cloned() else {
                continue;
            };
            let memory_mb = labels
                .get(LABEL_MEMORY)
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            let running = matches!(
                c.state,
                Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            );
            // A loop disk is mounted again (after a reboot) before its
            // container starts, or the session would find its files gone and
            // run without a limit.
            if !running
                && labels.get(LABEL_DISK).is_some_and(|d| d == "loop")
                && let Err(e) = self.reattach_disk(&cid, &sid).await
            {
                warn!(session = %sid, "cannot mount the stopped session's disk again, removing it: {e}");
                let _ = self.remove_container_and_disk(&cid, &sid).await;
                continue;
            }
            if !running && let Err(e) = self.docker.start_container(&cid, None).await {
                warn!(session = %sid, "cannot restart stopped session container, removing it: {e}");
                let _ = self.remove_container_and_disk(&cid, &sid).await;
                continue;
            }
            let info = match self
                .inspect(&cid, &sid, c.image.as_deref().unwrap_or(""), memory_mb)
                .await
            {
                Ok(i) => i,
                // Removed between the list and now: nothing to adopt.
                Err(RuntimeError::Docker(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                })) => continue,
                Err(e) => return Err(e),
            };
            if let Err(e) = wait_for_init(&info).await {
                warn!(session = %sid, "adopted container has no working init: {e}");
            }
            // Its disk's limits again (set already unless it was restarted).
            if labels.get(LABEL_DISK).is_some_and(|d| d == "loop")
                && let Some(disks) = &self.loop_disks
            {
                let limited = match self.layer_dir(&cid).await {
                    Ok(layer) => disks
                        .limit(&layer)
                        .and_then(|()| disks.limit_session(&layer, info.init.init_pid))
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = limited {
                    warn!(session = %sid, "cannot limit the adopted session's disk bandwidth: {e}");
                }
            }
            // Its pin counts towards the load of its cores.
            if let (Some(p), Some(cores), Some(limit)) = (
                &self.pins,
                labels
                    .get(LABEL_CPUSET)
                    .and_then(|c| crate::sandbox::cpus::parse_list(c)),
                labels.get(LABEL_CPUS).and_then(|c| c.parse::<f64>().ok()),
            ) {
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(&sid, cores, limit);
            }
            out.push(info);
        }
        if let Some(disks) = &self.loop_disks {
            disks.sweep(&out.iter().map(|s| s.id.clone()).collect());
        }
        Ok(out)
    }

    async fn reattach_disk(&self, container: &str, session: &str) -> Result<(), RuntimeError> {
        let disks = self.loop_disks.as_ref().ok_or_else(|| {
            RuntimeError::Invalid("this agent cannot mount loop disks any more".into())
        })?;
        if !disks.has(session) {
            return Err(RuntimeError::Invalid(format!(
                "the disk image of session {session} is gone"
            )));
        }
        let layer = self.layer_dir(container).await?;
        Ok(disks.reattach(session, &layer).await?)
    }

    pub async fn remove(&self, info: &SessionInfo) -> Result<(), RuntimeError> {
        self.remove_container_and_disk(&info.container_id, &info.id)
            .await?;
        let _ = std::fs::remove_dir_all(self.sessions_dir.join(&info.id));
        Ok(())
    }

    fn unpin(&self, session: &str) {
        if let Some(p) = &self.pins {
            p.lock().unwrap_or_else(|e| e.into_inner()).release(session);
        }
    }

    /// Removes a container, then frees its loop disk if it had one.
    async fn remove_container_and_disk(
        &self,
        container: &str,
        session: &str,
    ) -> Result<(), RuntimeError> {
        self.unpin(session);
        let Some(disks) = &self.loop_disks else {
            return self.remove_container(container).await;
        };
        let layer = self.layer_dir(container).await.ok();
        // The disk's limits are dropped while its loop device is still
        // this session's: once Docker unmounts the layer, the device may go
        // to another session at once, whose limits must stay. The session
        // is stopped first so it writes nothing unlimited in between.
        if let Some(layer) = &layer
            && disks.bandwidth_limited()
            && crate::sandbox::disk::is_mountpoint(layer)
        {
            let _ = self
                .docker
                .kill_container(
                    container,
                    Some(bollard::query_parameters::KillContainerOptions {
                        signal: "SIGKILL".into(),
                    }),
                )
                .await;
            disks.unlimit(session, layer);
        }
        self.remove_container(container).await?;
        disks.release(session, layer.as_deref()).await;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Where lxcfs serves its per-container views of /proc and /sys.
const LXCFS_DIR: &str = "/var/lib/lxcfs";

/// Bind mounts of lxcfs's files over the session's /proc and /sys ones,
/// for those lxcfs serves (none when it does not run here).
fn lxcfs_binds(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if !dir.join("proc/meminfo").is_file() {
        return out;
    }
    for f in [
        "proc/meminfo",
        "proc/cpuinfo",
        "proc/stat",
        "proc/uptime",
        "proc/loadavg",
        "proc/diskstats",
        "proc/swaps",
        "sys/devices/system/cpu/online",
    ] {
        let p = dir.join(f);
        if p.is_file() {
            out.push(format!("{}:/{f}:ro", p.display()));
        }
    }
    out
}

/// Waits until the session's init answers on its socket.
async fn wait_for_init(info: &SessionInfo) -> Result<(), RuntimeError> {
    let deadline = tokio::time::Instant::now() + INIT_READY_TIMEOUT;
    let mut last = String::from("socket not created");
    while tokio::time::Instant::now() < deadline {
        match crate::serve::initsock::request(&info.init, warren_init::proto::Op::List).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(RuntimeError::NotReady(info.id.clone(), last))
}
