//! Session containers on Docker (bollard): create here; the engine and its
//! limits in `engine.rs`, the sessions network in `network.rs`, sessions'
//! own networks (egress) in `egress.rs`, adoption after a restart in
//! `adopt.rs`, removal in `remove.rs`. What a container
//! is made of is [`crate::sandbox::spec`]'s pure function; this module runs
//! the sequence around it.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{CreateContainerOptions, CreateImageOptions};
use futures_util::StreamExt;
use tracing::{info, warn};
use warren_config::DockerConfig;

use crate::sandbox::security::SecurityProfile;
use crate::sandbox::spec::{self, ContainerInputs, Resolved};
use crate::sandbox::tenant_paths::{self, BoundFiles};
use crate::serve::initsock::InitTarget;

mod adopt;
mod egress;
mod engine;
mod network;
mod pool;
mod remove;
mod snapshot;

pub use crate::sandbox::spec::{
    LABEL_CPUS, LABEL_CPUSET, LABEL_DISK, LABEL_EGRESS, LABEL_MANAGED, LABEL_MEMORY, LABEL_NODE,
    LABEL_SESSION, SessionSpec,
};
pub use egress::network_name as egress_network_name;
pub use pool::LABEL_POOL;
pub use snapshot::LABEL_SNAPSHOT_COMMAND;

/// Free space (MiB) the worker keeps for itself: below it, no new sessions
/// with loop disks.
const MIN_FREE_DISK_MB: u64 = 1024;
/// Time a pull may take before the create fails.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Time a new container has to bring up its init socket.
const INIT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A session container the agent runs.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    /// What its container, disk, pin and files on the worker are kept
    /// under: the session's id, or for one claimed from a warm pool the
    /// warm container's own (`warm-…`).
    pub key: String,
    pub container_id: String,
    pub image: String,
    pub memory_mb: u64,
    /// Address on the session's network, where its ports are reached.
    pub ip: Option<IpAddr>,
    /// The session's init, as the agent reaches it.
    pub init: InitTarget,
}

impl SessionInfo {
    /// The session's init, the rest of the record dropped.
    pub fn into_init(self) -> InitTarget {
        self.init
    }
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
    /// Details (the engine's and iptables' words) stay in the agent's log.
    #[error("session {0}: its egress policy could not be set up on this worker")]
    Egress(String),
}

impl RuntimeError {
    /// What the tenant is told (a session's `reason`): the engine's own
    /// words name worker paths and addresses, so they stay in the log.
    pub fn tenant_reason(&self) -> String {
        match self {
            RuntimeError::Docker(_) | RuntimeError::Io(_) => {
                "the worker's container engine refused the session (details in the agent's log)"
                    .into()
            }
            other => other.to_string(),
        }
    }
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
    /// Disk offered to sessions in all (MiB), told to control so that it
    /// never places more session disks here than the worker has.
    disk_capacity_mb: u64,
    /// Images the agent pulled, pruned under `docker.image_budget_mb`.
    images: crate::sandbox::images::Images,
    /// The worker's kernel has IPv6 (sessions get it turned off).
    ipv6: bool,
    /// Snapshots this agent committed, with the desired-state version at
    /// which control recorded each: an older desired state does not list
    /// them yet, and must not remove them.
    committed: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// Held by a snapshot pruning pass.
    snapshot_prune: tokio::sync::Mutex<()>,
}

impl DockerRuntime {
    /// What this node offers in disk, for control's placement; `None`
    /// where session disks are not limited (then they are not counted).
    pub fn disk_offer(&self) -> Option<warren_proto::internal::NodeDisk> {
        self.disk_limits()
            .then_some(warren_proto::internal::NodeDisk {
                // At least 1: 0 would mean "not counted" to control.
                capacity_mb: self.disk_capacity_mb.max(1) as i64,
                max_session_mb: self.cfg.max_disk_mb as i64,
            })
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

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Creates and starts a session container and waits for its init.
    pub async fn create(&self, spec: &SessionSpec) -> Result<SessionInfo, RuntimeError> {
        self.create_in(spec, None).await
    }

    /// [`Self::create`], for a warm pool's container when `pool` names it.
    async fn create_in(
        &self,
        spec: &SessionSpec,
        pool: Option<&str>,
    ) -> Result<SessionInfo, RuntimeError> {
        let session = spec
            .resolve(&self.cfg, self.disk_limits())
            .map_err(RuntimeError::Invalid)?;
        // From the pull until the container exists, its image is not pruned.
        let image_guard = self.images.in_use().await;
        let image = self.image_facts(&session.image).await?;
        // Left by agents before init's socket moved into the container.
        let _ = std::fs::remove_dir_all(self.sessions_dir.join(&session.id));
        let bound = BoundFiles::new(&self.sessions_dir);
        let bound_files = bound.prepare(&session.id)?;
        // A session with egress gets a network of its own, its rules in
        // place before the container exists.
        let network = if session.egress.is_none() {
            self.cfg.network.clone()
        } else {
            match self
                .create_egress_network(&session.id, &session.egress)
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    bound.remove(&session.id);
                    return Err(e);
                }
            }
        };
        let container = match self
            .create_container(&session, &image, &bound_files, &network, pool)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                bound.remove(&session.id);
                self.remove_egress_network(&session.id).await;
                return Err(e);
            }
        };
        drop(image_guard);
        // Whatever the image declared, nothing may be an engine volume (on
        // the worker's disk): refuse rather than run such a session.
        let result = match self.engine_volumes(&container).await {
            Ok(0) => self.start(&container, &session).await,
            Ok(_) => Err(RuntimeError::Invalid(
                "this image declares volumes the agent cannot place on the session's own storage"
                    .into(),
            )),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Leave nothing half-made behind.
            if self
                .remove_container_and_disk(&container, &session.id)
                .await
                .is_ok()
            {
                self.remove_egress_network(&session.id).await;
            }
            bound.remove(&session.id);
        }
        result
    }

    /// Asks the engine for the session's container, pinned to its cores,
    /// narrowing what the engine refuses (an unknown capability, a disk
    /// quota) and asking again. Returns the container's id.
    async fn create_container(
        &self,
        session: &Resolved,
        image: &ImageFacts,
        bound_files: &[String],
        network: &str,
        pool: Option<&str>,
    ) -> Result<String, RuntimeError> {
        // Always set, empty on a session's own container: an image (or a
        // snapshot of a claimed container) carrying this label must not make
        // a session look warm.
        let mut labels = self.labels.clone();
        labels.insert(LABEL_POOL.into(), pool.unwrap_or_default().into());
        // The session's own resource view where lxcfs runs on the worker.
        let lxcfs_binds = spec::lxcfs_binds(Path::new(spec::LXCFS_DIR));
        let disk_label = session.disk_mb > 0 && self.disk_limits();
        let pinned = self.pins.as_ref().and_then(|p| {
            p.lock()
                .unwrap_or_else(|e| e.into_inner())
                .assign(&session.id, session.cpus)
        });
        let opts = CreateContainerOptions {
            name: Some(spec::container_name(&self.node_id, &session.id)),
            ..Default::default()
        };
        loop {
            let security = self.security();
            let disk_quota_mb =
                (session.disk_mb > 0 && self.disk_quota()).then_some(session.disk_mb);
            let body = spec::container_config(
                &ContainerInputs {
                    session,
                    command: &image.command,
                    init_binary: &self.init_binary,
                    lxcfs_binds: &lxcfs_binds,
                    labels: &labels,
                    network,
                    oci_runtime: self.cfg.runtime.as_deref(),
                    terminal: &self.terminal,
                    cpuset: pinned.as_deref(),
                    disk_label: disk_label.then(|| self.disk_backend()),
                    disk_quota_mb,
                    bound_files,
                    image_volumes: &image.volumes,
                    ipv6: self.ipv6,
                },
                &security,
            );
            match self.docker.create_container(Some(opts.clone()), body).await {
                Ok(c) => return Ok(c.id),
                Err(e) if self.drop_unknown_capability(&e) => continue,
                Err(e)
                    if (!session.disk_asked || self.loop_disks.is_some())
                        && self.disk_limit_unsupported(&e) =>
                {
                    continue;
                }
                Err(e) => {
                    self.unpin(&session.id);
                    return Err(e.into());
                }
            }
        }
    }

    /// Starts a created container: its loop disk first, then the container,
    /// its disk's limits in its own cgroup, and waits for its init.
    async fn start(
        &self,
        container: &str,
        session: &Resolved,
    ) -> Result<SessionInfo, RuntimeError> {
        let mut disk_layer = None;
        if session.disk_mb > 0
            && !self.disk_quota()
            && let Some(disks) = &self.loop_disks
        {
            // Loop disks are thin: a worker whose own disk is nearly full
            // takes no more sessions rather than fail them all later.
            if disks.free_mb().is_some_and(|f| f < MIN_FREE_DISK_MB) {
                warn!(session = %session.id, "refusing a session: the agent's data dir has under {MIN_FREE_DISK_MB} MiB free");
                return Err(RuntimeError::Invalid(
                    "this worker's disk is nearly full".into(),
                ));
            }
            let layer = self.layer_dir(container).await?;
            disks
                .attach(&session.id, &layer, session.disk_mb)
                .await
                .map_err(|e| {
                    warn!(session = %session.id, "cannot set up the session's disk: {e}");
                    RuntimeError::Disk(session.id.clone())
                })?;
            disk_layer = Some(layer);
        }
        self.docker.start_container(container, None).await?;
        let info = self
            .inspect(container, &session.id, &session.image, session.memory_mb)
            .await?;
        // The session's own cgroup exists now; its disk's limits go there
        // too (the root cgroup's were set before the start).
        if let (Some(layer), Some(disks)) = (&disk_layer, &self.loop_disks) {
            disks
                .limit_session(layer, info.init.init_pid)
                .map_err(|e| {
                    warn!(session = %session.id, "cannot limit the session's disk bandwidth: {e}");
                    RuntimeError::Disk(session.id.clone())
                })?;
        }
        // No DNS from the engine's resolver (it names neighbours).
        tenant_paths::block_engine_dns(info.init.init_pid)
            .await
            .map_err(|e| {
                warn!(session = %session.id, "cannot close the engine's DNS to the session: {e}");
                RuntimeError::NotReady(session.id.clone(), "its network could not be set up".into())
            })?;
        wait_for_init(&info).await?;
        Ok(info)
    }

    /// The image's own entrypoint and command and its declared volumes,
    /// pulling the image if the engine does not have it.
    async fn image_facts(&self, image: &str) -> Result<ImageFacts, RuntimeError> {
        let inspect = match self.docker.inspect_image(image).await {
            Ok(i) => i,
            // A snapshot lives on the worker that made it; a registry
            // never supplies one.
            Err(_) if warren_proto::sandbox::is_snapshot_name(image) => {
                return Err(RuntimeError::Image(
                    image.into(),
                    "snapshot images are never pulled".into(),
                ));
            }
            Err(_) => {
                self.pull(image).await?;
                self.docker
                    .inspect_image(image)
                    .await
                    .map_err(|e| RuntimeError::Image(image.into(), e.to_string()))?
            }
        };
        let config = inspect.config.unwrap_or_default();
        let command = if warren_proto::sandbox::is_snapshot_name(image) {
            Self::snapshot_command(config.labels.as_ref())?
        } else {
            let mut c = config.entrypoint.unwrap_or_default();
            c.extend(config.cmd.unwrap_or_default());
            c
        };
        let volumes = config
            .volumes
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        Ok(ImageFacts { command, volumes })
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        info!(%image, "pulling image");
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let pulled = tokio::time::timeout(PULL_TIMEOUT, async {
            let mut s = self.docker.create_image(Some(opts), None, None);
            while let Some(item) = s.next().await {
                if let Err(e) = item {
                    warn!(%image, "pull failed: {e}");
                    return Err(RuntimeError::Image(image.into(), e.to_string()));
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| {
            warn!(%image, "pull did not finish within {} s", PULL_TIMEOUT.as_secs());
            RuntimeError::Image(image.into(), "pull timed out".into())
        })?;
        pulled?;
        // Remembered by id: the names a tenant gives an image vary.
        if let Ok(i) = self.docker.inspect_image(image).await
            && let Some(id) = i.id
        {
            self.images.note_pulled(&id);
        }
        Ok(())
    }

    /// Removes pulled images no session uses while the engine's images
    /// are over `docker.image_budget_mb`.
    pub async fn prune_images(&self) -> Result<crate::sandbox::images::Pruned, RuntimeError> {
        Ok(self.images.prune(&self.docker).await?)
    }

    /// The pruner (tests mark images as pulled through it).
    pub fn images(&self) -> &crate::sandbox::images::Images {
        &self.images
    }

    /// How many of the container's mounts are engine volumes.
    async fn engine_volumes(&self, container: &str) -> Result<usize, RuntimeError> {
        let c = self.docker.inspect_container(container, None).await?;
        Ok(c.mounts
            .unwrap_or_default()
            .iter()
            .filter(|m| m.typ.as_deref() == Some("volume"))
            .count())
    }

    /// The container's overlay2 layer directory, for its loop disk.
    async fn layer_dir(&self, container: &str) -> Result<PathBuf, RuntimeError> {
        let c = self.docker.inspect_container(container, None).await?;
        crate::sandbox::disk::layer_dir(c.graph_driver.as_ref(), &self.docker_root).ok_or_else(
            || {
                warn!(%container, graph_driver = ?c.graph_driver, "no overlay2 layer directory for the container");
                RuntimeError::Disk(container.into())
            },
        )
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
        let own = egress::network_name(&self.node_id, id);
        let ip = c
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.get(&self.cfg.network).or_else(|| n.get(&own)).cloned())
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse().ok());
        Ok(SessionInfo {
            id: id.into(),
            key: id.into(),
            container_id: container_id.clone(),
            image: image.into(),
            memory_mb,
            ip,
            init: InitTarget {
                container_id: container_id.as_str().into(),
                init_pid,
            },
        })
    }

    fn unpin(&self, session: &str) {
        if let Some(p) = &self.pins {
            p.lock().unwrap_or_else(|e| e.into_inner()).release(session);
        }
    }
}

/// What the agent reads from an image before running it.
struct ImageFacts {
    /// Its entrypoint and command, run by init.
    command: Vec<String>,
    /// Its declared `VOLUME`s.
    volumes: Vec<String>,
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
