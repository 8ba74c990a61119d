//! Snapshots: a session's container committed as `warren-snapshot/<id>` on
//! this worker, and removed when control no longer lists it.
//!
//! The image records the command the session's own image ran (in a label
//! only the agent writes: snapshot names are never pulled, so no registry
//! can supply one), because the container's entrypoint is the agent's
//! init and must not become the snapshot's. Mounts (the bound files, the
//! image's volumes as tmpfs, init's socket) are not part of a commit.
use std::collections::{HashMap, HashSet};

use bollard::models::ContainerConfig;
use bollard::query_parameters::{
    CommitContainerOptions, InspectContainerOptions, ListImagesOptions, RemoveImageOptions,
};
use tracing::{info, warn};
use warren_proto::sandbox::{SNAPSHOT_REPO, snapshot_id};

use super::{DockerRuntime, LABEL_NODE, MIN_FREE_DISK_MB, RuntimeError, SessionInfo};

/// The command a snapshot's sessions run (JSON list), set at commit.
pub const LABEL_SNAPSHOT_COMMAND: &str = "warren.snapshot.command";

impl DockerRuntime {
    /// Commits `info`'s container as `image` (a name control made with
    /// `snapshot_image`, recorded in control's desired state at `version`);
    /// its size in bytes.
    pub async fn commit_snapshot(
        &self,
        info: &SessionInfo,
        image: &str,
        version: i64,
    ) -> Result<u64, RuntimeError> {
        let Some(id) = snapshot_id(image) else {
            return Err(RuntimeError::Invalid(format!(
                "{image:?} is not a snapshot name"
            )));
        };
        // The name is new: a commit never replaces an image.
        if self.docker.inspect_image(image).await.is_ok() {
            return Err(RuntimeError::Invalid(format!("{image} exists already")));
        }
        // A commit copies the session's writable layer into the engine's
        // storage on the worker's disk: it must fit there with room to
        // spare.
        // (Sizing walks the layer; should the engine fail at it, the
        // reserve alone is required.)
        let layer_mb = match self
            .docker
            .inspect_container(
                &info.container_id,
                Some(InspectContainerOptions { size: true }),
            )
            .await
        {
            Ok(c) => c.size_rw.unwrap_or(0).max(0) as u64 / (1024 * 1024),
            Err(e) => {
                warn!(session = %info.id, "cannot size the session's layer: {e}");
                0
            }
        };
        let free_mb = rustix::fs::statvfs(&self.docker_root)
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize) / (1024 * 1024))
            .unwrap_or(0);
        if free_mb < layer_mb + MIN_FREE_DISK_MB {
            warn!(session = %info.id, free_mb, layer_mb, "refusing a snapshot: the engine's storage has too little room");
            return Err(RuntimeError::Invalid(
                "this worker's disk has no room for the snapshot".into(),
            ));
        }
        let command = self.image_facts(&info.image).await?.command;
        // The node's label: another agent on the same engine (two workers
        // on one host) sweeps only its own snapshots.
        let labels = HashMap::from([
            (
                LABEL_SNAPSHOT_COMMAND.to_string(),
                serde_json::to_string(&command).unwrap_or_else(|_| "[]".into()),
            ),
            (LABEL_NODE.to_string(), self.node_id.clone()),
        ]);
        let config = ContainerConfig {
            labels: Some(labels),
            entrypoint: Some(Vec::new()),
            cmd: Some(command),
            ..Default::default()
        };
        let opts = CommitContainerOptions {
            container: Some(info.container_id.clone()),
            repo: Some(format!("{SNAPSHOT_REPO}/{id}")),
            tag: Some("latest".into()),
            comment: Some(format!("warren snapshot of session {}", info.id)),
            pause: true,
            ..Default::default()
        };
        self.committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), version);
        // Paused, the layer is copied at rest. The cgroup freezer can fail
        // on a loaded worker (a task stuck in disk I/O under the session's
        // throttle): then the copy is taken live, as `docker commit
        // --pause=false` does, rather than refused.
        if let Err(e) = self
            .docker
            .commit_container(opts.clone(), config.clone())
            .await
        {
            warn!(session = %info.id, "paused commit failed ({e}); committing without pausing");
            let live = CommitContainerOptions {
                pause: false,
                ..opts
            };
            self.docker.commit_container(live, config).await?;
        }
        // What it adds on the worker: its own layer, not the image below.
        let size_of = |i: bollard::models::ImageInspect| i.size.unwrap_or(0).max(0) as u64;
        let total = match self.docker.inspect_image(image).await {
            Ok(i) => size_of(i),
            Err(e) => {
                warn!(%image, "cannot size the snapshot just made: {e}");
                0
            }
        };
        let base = self
            .docker
            .inspect_image(&info.image)
            .await
            .map(size_of)
            .unwrap_or(0);
        let size = total.saturating_sub(base);
        info!(session = %info.id, %image, size, "snapshot committed");
        Ok(size)
    }

    /// The command recorded in a snapshot image, if `image` is one.
    pub(super) fn snapshot_command(
        labels: Option<&HashMap<String, String>>,
    ) -> Result<Vec<String>, RuntimeError> {
        labels
            .and_then(|l| l.get(LABEL_SNAPSHOT_COMMAND))
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or_else(|| RuntimeError::Invalid("the snapshot image records no command".into()))
    }

    /// Removes this worker's snapshot images that `keep` (control's desired
    /// state at version `index`) does not name, except those committed at
    /// a later version; one a container still runs from is left for a
    /// later turn. The names removed.
    pub async fn prune_snapshots(&self, keep: &[String], index: i64) -> Vec<String> {
        // One pass at a time, newest state last.
        let _one = self.snapshot_prune.lock().await;
        let mut keep: HashSet<String> = keep
            .iter()
            .filter_map(|k| snapshot_id(k))
            .map(str::to_string)
            .collect();
        {
            let mut committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
            // Listed (or forgotten) as of this state: no longer protected.
            committed.retain(|_, v| *v > index);
            keep.extend(committed.keys().cloned());
        }
        // This node's snapshots only: the engine may serve other agents,
        // whose controls list snapshots this one never heard of.
        let filters = HashMap::from([
            ("reference".to_string(), vec![format!("{SNAPSHOT_REPO}/*")]),
            (
                "label".to_string(),
                vec![format!("{LABEL_NODE}={}", self.node_id)],
            ),
        ]);
        let images = match self
            .docker
            .list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
        {
            Ok(i) => i,
            Err(e) => {
                warn!("cannot list snapshot images: {e}");
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for img in images {
            for tag in &img.repo_tags {
                let Some(id) = snapshot_id(tag) else { continue };
                if keep.contains(id) {
                    continue;
                }
                match self
                    .docker
                    .remove_image(tag, None::<RemoveImageOptions>, None)
                    .await
                {
                    Ok(_) => {
                        info!(image = %tag, "removed a snapshot control no longer lists");
                        removed.push(tag.clone());
                    }
                    // In use by a session started from it: next turn.
                    Err(e) => warn!(image = %tag, "cannot remove a snapshot yet: {e}"),
                }
            }
        }
        removed
    }
}
