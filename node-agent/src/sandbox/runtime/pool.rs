//! Warm containers: started ahead of demand under a key of their own
//! (`warm-…`), then claimed by one session, renamed after it and never
//! handed to another. What decides how many to keep is the agent's
//! [`crate::warm`]; this is the engine side.
use bollard::query_parameters::RenameContainerOptions;
use rand::Rng;
use warren_proto::internal::WarmPool;

use super::{DockerRuntime, RuntimeError, SessionInfo, SessionSpec, spec};

/// The pool a warm container was made for (its name, [`WarmPool::name`]).
/// A container with this label whose engine name is still its warm key's
/// was never claimed.
pub const LABEL_POOL: &str = "warren.pool";

/// Warm keys: never a session id (control's ids have no `-`).
const WARM_PREFIX: &str = "warm-";

impl DockerRuntime {
    /// Starts one container of `pool`, ready (its init answers), on the
    /// sessions network with no egress: nothing of any tenant is in it.
    pub async fn create_warm(&self, pool: &WarmPool) -> Result<SessionInfo, RuntimeError> {
        let key: String = {
            const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let mut r = rand::rng();
            WARM_PREFIX
                .chars()
                .chain((0..12).map(|_| A[r.random_range(0..A.len())] as char))
                .collect()
        };
        let spec = SessionSpec {
            id: key,
            image: Some(pool.image.clone()),
            memory_mb: Some(pool.memory_mb),
            cpus: Some(pool.cpus),
            pids_limit: None,
            disk_mb: (pool.disk_mb > 0 && self.disk_limits()).then_some(pool.disk_mb),
            egress: Default::default(),
        };
        self.create_in(&spec, Some(&pool.name())).await
    }

    /// Makes a warm container `session`'s: renamed after it, so that an
    /// agent restarted later adopts it as that session. Its limits, disk and
    /// network are the pool's, which are the session's (a session claims
    /// only a pool of exactly its image and size, with no egress).
    pub async fn claim_warm(
        &self,
        warm: SessionInfo,
        session: &str,
    ) -> Result<SessionInfo, RuntimeError> {
        // Still alive: its command may have died (out of memory) or the
        // engine restarted while it waited.
        crate::serve::initsock::request(&warm.init, warren_init::proto::Op::List)
            .await
            .map_err(|e| RuntimeError::NotReady(warm.key.clone(), e.to_string()))?;
        self.docker
            .rename_container(
                &warm.container_id,
                RenameContainerOptions {
                    name: spec::container_name(&self.node_id, session),
                },
            )
            .await?;
        Ok(SessionInfo {
            id: session.into(),
            ..warm
        })
    }

    /// For a container found with [`LABEL_POOL`] and `key` as its session
    /// label: the session that claimed it, or `None` if it is still warm
    /// (its engine name is its key's). `names` as the engine lists them
    /// (`/name`).
    pub(super) fn claimed_by(&self, key: &str, names: &[String]) -> Option<String> {
        let prefix = format!("/{}", spec::container_name(&self.node_id, ""));
        names
            .iter()
            .filter_map(|n| n.strip_prefix(&prefix))
            .find(|s| *s != key && !s.starts_with(WARM_PREFIX))
            .filter(|s| warren_config::is_dns_label(s))
            .map(str::to_string)
    }
}
