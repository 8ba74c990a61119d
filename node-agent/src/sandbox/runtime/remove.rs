//! Removing a session: its container, its loop disk, its pin, its own
//! network and egress rules.
use bollard::query_parameters::RemoveContainerOptions;

use super::{DockerRuntime, RuntimeError, SessionInfo};

impl DockerRuntime {
    pub async fn remove(&self, info: &SessionInfo) -> Result<(), RuntimeError> {
        self.remove_container_and_disk(&info.container_id, &info.key)
            .await?;
        // Once the container is gone: its rules never lapse while it runs.
        self.remove_egress_network(&info.key).await;
        let _ = std::fs::remove_dir_all(self.sessions_dir.join(&info.key));
        Ok(())
    }

    /// Removes a container, then frees its loop disk if it had one.
    pub(super) async fn remove_container_and_disk(
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
