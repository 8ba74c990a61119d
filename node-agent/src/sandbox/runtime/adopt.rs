//! Adopting this node's sessions after an agent restart.
use std::collections::HashMap;

use bollard::query_parameters::ListContainersOptions;
use tracing::warn;

use crate::sandbox::tenant_paths;

use super::{
    DockerRuntime, LABEL_CPUS, LABEL_CPUSET, LABEL_DISK, LABEL_EGRESS, LABEL_MEMORY, LABEL_NODE,
    LABEL_POOL, LABEL_SESSION, RuntimeError, SessionInfo, wait_for_init,
};

impl DockerRuntime {
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
            // What its disk, pin, files and network are kept under.
            let Some(key) = labels.get(LABEL_SESSION).cloned() else {
                continue;
            };
            if !warren_config::is_dns_label(&key) {
                warn!(container = %cid, "a container of this node has a session label that is no session id; left alone");
                continue;
            }
            // A warm container is the session that claimed it, or (never
            // claimed) removed: the pool starts fresh ones.
            let sid = if labels.get(LABEL_POOL).is_some_and(|p| !p.is_empty()) {
                match self.claimed_by(&key, c.names.as_deref().unwrap_or_default()) {
                    Some(sid) => sid,
                    None => {
                        if self.remove_container_and_disk(&cid, &key).await.is_ok() {
                            let _ = std::fs::remove_dir_all(self.sessions_dir.join(&key));
                        }
                        continue;
                    }
                }
            } else {
                key.clone()
            };
            // Labels are the agent's own (it sets every one it reads), but a
            // container made by an older agent may carry an image's: each
            // value is checked, and one out of range counts as absent.
            let memory_mb = labels
                .get(LABEL_MEMORY)
                .and_then(|m| m.parse().ok())
                .filter(|m| (16..=1_048_576).contains(m))
                .unwrap_or(0);
            let running = matches!(
                c.state,
                Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            );
            // Its egress rules again (a reboot loses them) before it runs
            // again; a policy that cannot be read or set removes it.
            let policy = warren_proto::egress::Egress::from_text(
                labels.get(LABEL_EGRESS).map(String::as_str).unwrap_or(""),
            )
            .checked(true);
            let restored = match &policy {
                Ok(p) if p.is_none() => Ok(()),
                Ok(p) => self.restore_egress(&key, p).await,
                Err(e) => Err(RuntimeError::Invalid(e.clone())),
            };
            if let Err(e) = restored {
                warn!(session = %sid, "cannot set the session's egress policy up again, removing it: {e}");
                if self.remove_container_and_disk(&cid, &key).await.is_ok() {
                    self.remove_egress_network(&key).await;
                }
                continue;
            }
            // A loop disk is mounted again (after a reboot) before its
            // container starts, or the session would find its files gone and
            // run without a limit.
            if !running
                && labels.get(LABEL_DISK).is_some_and(|d| d == "loop")
                && let Err(e) = self.reattach_disk(&cid, &key).await
            {
                warn!(session = %sid, "cannot mount the stopped session's disk again, removing it: {e}");
                let _ = self.remove_container_and_disk(&cid, &key).await;
                continue;
            }
            if !running && let Err(e) = self.docker.start_container(&cid, None).await {
                warn!(session = %sid, "cannot restart stopped session container, removing it: {e}");
                let _ = self.remove_container_and_disk(&cid, &key).await;
                continue;
            }
            let info = match self
                .inspect(&cid, &key, c.image.as_deref().unwrap_or(""), memory_mb)
                .await
            {
                Ok(i) => SessionInfo {
                    id: sid.clone(),
                    ..i
                },
                // Removed between the list and now: nothing to adopt.
                Err(RuntimeError::Docker(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                })) => continue,
                Err(e) => return Err(e),
            };
            // A container restarted after a reboot has a new network
            // namespace: its DNS is closed again (a no-op otherwise), before
            // anything else waits.
            if let Err(e) = tenant_paths::block_engine_dns(info.init.init_pid).await {
                warn!(session = %sid, "cannot close the engine's DNS to the adopted session, removing it: {e}");
                let _ = self.remove_container_and_disk(&cid, &key).await;
                continue;
            }
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
                labels
                    .get(LABEL_CPUS)
                    .and_then(|c| c.parse::<f64>().ok())
                    .filter(|c| *c > 0.0 && *c <= 256.0),
            ) {
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(&key, cores, limit);
            }
            out.push(info);
        }
        if let Some(disks) = &self.loop_disks {
            disks.sweep(&out.iter().map(|s| s.key.clone()).collect());
        }
        self.sweep_egress(&out.iter().map(|s| s.key.clone()).collect())
            .await;
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
}
