//! The engine: connecting, what it can do (user namespaces, disk limits),
//! and narrowing the settings when it refuses them.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::Docker;
use tracing::{info, warn};
use warren_config::DockerConfig;

use super::{DockerRuntime, LABEL_MANAGED, LABEL_NODE};
use crate::sandbox::security::SecurityProfile;

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
        // Session disks are sparse files (or quotas): what they may fill in
        // all is what the worker's disk has free now, less its reserve,
        // unless the operator says less.
        let measured = rustix::fs::statvfs(data_dir)
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize) / (1024 * 1024))
            .unwrap_or(0)
            .saturating_sub(super::MIN_FREE_DISK_MB);
        let disk_capacity_mb = match cfg.disk_capacity_mb {
            0 => measured,
            set => set,
        };
        let images =
            crate::sandbox::images::Images::new(data_dir, cfg.image_budget_mb, &cfg.default_image);
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
            disk_capacity_mb,
            images,
            ipv6: Path::new("/proc/sys/net/ipv6").exists(),
            committed: Default::default(),
            snapshot_prune: Default::default(),
        };
        rt.ensure_network().await?;
        Ok(rt)
    }

    /// Older engines reject capability names newer than themselves (Docker
    /// 20.10 does not know `CAP_PERFMON`); drop the one named and go on.
    pub(super) fn drop_unknown_capability(&self, err: &bollard::errors::Error) -> bool {
        let Some(name) = unknown_capability(err) else {
            return false;
        };
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
    pub(super) fn disk_limit_unsupported(&self, err: &bollard::errors::Error) -> bool {
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
}

/// The capability (without `CAP_`) an engine refused as unknown, if that
/// is what `err` says.
fn unknown_capability(err: &bollard::errors::Error) -> Option<String> {
    let bollard::errors::Error::DockerResponseServerError {
        status_code: 400,
        message,
    } = err
    else {
        return None;
    };
    let rest = message.split("unknown capability: ").nth(1)?;
    let name = rest.trim_matches(|c: char| c == '"' || c == '\\' || c.is_whitespace());
    Some(name.strip_prefix("CAP_").unwrap_or(name).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(status_code: u16, message: &str) -> bollard::errors::Error {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: message.into(),
        }
    }

    #[test]
    fn unknown_capabilities_are_named() {
        let e = server_error(
            400,
            "invalid CapAdd: unknown capability: \\\"CAP_PERFMON\\\"",
        );
        assert_eq!(unknown_capability(&e).as_deref(), Some("PERFMON"));
        let e = server_error(400, "unknown capability: BPF");
        assert_eq!(unknown_capability(&e).as_deref(), Some("BPF"));
        assert_eq!(
            unknown_capability(&server_error(500, "unknown capability: BPF")),
            None
        );
        assert_eq!(
            unknown_capability(&server_error(400, "no such image")),
            None
        );
    }
}
