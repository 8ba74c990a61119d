//! Images the agent pulled, pruned under a budget.
//!
//! Every session image a tenant names is pulled onto the worker's disk and
//! stayed there for good: enough distinct images fill the disk. The agent
//! remembers which images it pulled itself, by image id (the names a tenant
//! gives one image vary), in `pulled-images.json` in its data dir, and when
//! the engine's images together pass `docker.image_budget_mb` it removes
//! the least recently pulled of them that no container uses, until they
//! fit. Images it did not pull (the ones `scripts/build-images.sh` makes,
//! which no registry can give back) and the configured default image are
//! never removed. A create holds the pruner's lock from the pull until its
//! container exists, so an image is never removed while a session needs
//! it; a pruning pass that finds creates in flight waits for the next turn
//! rather than hold new creates up.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, ListImagesOptions, RemoveImageOptions};
use tokio::sync::{RwLock, RwLockReadGuard};
use tracing::{info, warn};

const FILE: &str = "pulled-images.json";

/// The pruner: which images the agent pulled, and the lock creates hold.
#[derive(Debug)]
pub struct Images {
    file: PathBuf,
    budget_mb: u64,
    keep: String,
    /// Image id (or, in tests, a name) → when it was last pulled (unix
    /// seconds).
    pulled: std::sync::Mutex<BTreeMap<String, u64>>,
    lock: RwLock<()>,
}

/// What one pruning pass did.
#[derive(Debug, Default, PartialEq)]
pub struct Pruned {
    pub removed: Vec<String>,
    pub total_mb: u64,
}

impl Images {
    pub fn new(data_dir: &Path, budget_mb: u64, default_image: &str) -> Self {
        let file = data_dir.join(FILE);
        let pulled = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            file,
            budget_mb,
            keep: default_image.to_string(),
            pulled: std::sync::Mutex::new(pulled),
            lock: RwLock::new(()),
        }
    }

    /// Held by a create from before its pull until its container exists.
    pub async fn in_use(&self) -> RwLockReadGuard<'_, ()> {
        self.lock.read().await
    }

    /// Records that the agent pulled `image` (it may prune it later).
    pub fn note_pulled(&self, image: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut p = self.pulled.lock().unwrap_or_else(|e| e.into_inner());
        p.insert(image.to_string(), now);
        self.save(&p);
    }

    fn save(&self, p: &BTreeMap<String, u64>) {
        if let Ok(b) = serde_json::to_vec(p)
            && let Err(e) = std::fs::write(&self.file, b)
        {
            warn!(file = %self.file.display(), "cannot record pulled images: {e}");
        }
    }

    /// Removes pulled images no container uses, least recently pulled
    /// first, while all images together are over the budget.
    pub async fn prune(&self, docker: &Docker) -> Result<Pruned, bollard::errors::Error> {
        if self.budget_mb == 0 {
            return Ok(Pruned::default());
        }
        // Creates in flight: try again at the next turn (a waiting writer
        // would hold up every new create behind it).
        let Ok(_exclusive) = self.lock.try_write() else {
            return Ok(Pruned::default());
        };
        let images = docker
            .list_images(Some(ListImagesOptions {
                all: false,
                ..Default::default()
            }))
            .await?;
        // Snapshots are tenants' data, bounded by control's quotas, never
        // pruned here: they do not count against the budget either (else
        // they would evict everyone's pulled images).
        let mut total: u64 = images
            .iter()
            .filter(|i| {
                !i.repo_tags
                    .iter()
                    .any(|t| warren_proto::sandbox::is_snapshot_name(t))
            })
            .map(|i| i.size.max(0) as u64)
            .sum();
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await?;
        // In use: an image a container runs (by id), and a name a
        // container was created from.
        let used: HashSet<String> = containers
            .into_iter()
            .flat_map(|c| [c.image_id, c.image])
            .flatten()
            .collect();
        let mut out = Pruned::default();
        let budget = self.budget_mb * 1024 * 1024;
        if total <= budget {
            out.total_mb = total / (1024 * 1024);
            return Ok(out);
        }
        let mut pulled: Vec<(String, u64)> = self
            .pulled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        pulled.sort_by_key(|(_, at)| *at);
        for (reference, _) in pulled {
            if total <= budget {
                break;
            }
            if reference == self.keep {
                continue;
            }
            let Some(img) = images.iter().find(|i| i.repo_tags.contains(&reference)) else {
                // Gone already (removed by hand): forget it.
                self.forget(&reference);
                continue;
            };
            // Other names for the same image keep it: this only untags.
            let last_name = img.repo_tags.len() <= 1;
            if used.contains(&reference) || (last_name && used.contains(&img.id)) {
                continue;
            }
            let opts = RemoveImageOptions {
                // An id with several names needs force; nothing runs from it.
                force: img.id == reference,
                ..Default::default()
            };
            match docker.remove_image(&reference, Some(opts), None).await {
                Ok(_) => {
                    if last_name {
                        total = total.saturating_sub(img.size.max(0) as u64);
                    }
                    info!(image = %reference, "removed a pulled image no session uses (docker.image_budget_mb)");
                    self.forget(&reference);
                    out.removed.push(reference);
                }
                Err(e) => warn!(image = %reference, "cannot remove a pulled image: {e}"),
            }
        }
        out.total_mb = total / (1024 * 1024);
        Ok(out)
    }

    fn forget(&self, reference: &str) {
        let mut p = self.pulled.lock().unwrap_or_else(|e| e.into_inner());
        if p.remove(reference).is_some() {
            self.save(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulled_images_are_remembered_across_restarts() {
        let dir = std::env::temp_dir().join(format!("warren-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let a = Images::new(&dir, 100, "keep:me");
        a.note_pulled("x/y:1");
        let b = Images::new(&dir, 100, "keep:me");
        assert!(b.pulled.lock().expect("lock").contains_key("x/y:1"));
        b.forget("x/y:1");
        let c = Images::new(&dir, 100, "keep:me");
        assert!(c.pulled.lock().expect("lock").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
