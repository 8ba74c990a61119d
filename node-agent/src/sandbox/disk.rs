//! Per-session disk limits where Docker cannot set them.
//!
//! Docker limits a container's writable layer (`--storage-opt size`) only
//! with overlay2 on XFS mounted with project quotas; most workers run ext4,
//! and some kernels (these build machines) have no quota support at all. So
//! where the engine cannot, the agent gives each session's writable layer a
//! filesystem of its own: a sparse file of `disk_mb` formatted ext4, loop
//! mounted over the container's overlay2 layer directory (the one holding
//! `diff` and `work`, which overlay needs on one mount) between create and
//! start. Everything the session writes (its root filesystem's changes,
//! inner images, /tmp) lands there, and a write past the limit fails with
//! ENOSPC inside the session while the worker's disk is untouched.
//!
//! Each session's loop device also gets bandwidth and request-rate limits
//! (`docker.disk_write_mbps`, `disk_write_iops` and their read twins; see
//! crate::sandbox::blkio): without them, a session filling its disk kept the
//! worker's disk busy and its neighbours waiting.
//!
//! The files live in the agent's data dir (`disks/<session>.img`); they are
//! sparse and mounted with `discard`, so a session costs the worker only
//! what it has written. The session cannot reach the file, the loop device
//! or the mount: it sees only the overlay on top.
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::process::Command;
use tracing::{info, warn};

use crate::sandbox::blkio::{Bandwidth, Dev, Rates};

/// Image files of loop-backed session disks, in the agent's data dir.
#[derive(Debug)]
pub struct LoopDisks {
    dir: PathBuf,
    /// Per-session disk bandwidth, where limits are set and can be.
    bandwidth: Option<Bandwidth>,
}

impl LoopDisks {
    /// Loop disks need root (mount, loop devices), the loop driver and
    /// `mkfs.ext4` (e2fsprogs); the reason they cannot be used otherwise.
    /// Bandwidth limits that cannot be set here are logged and left off;
    /// the disks still work.
    pub fn detect(data_dir: &Path, rates: Rates) -> Result<Self, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("the agent does not run as root".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("the kernel has no loop devices (/dev/loop-control)".into());
        }
        if find_program("mkfs.ext4").is_none() {
            return Err("mkfs.ext4 is not installed (Debian package e2fsprogs)".into());
        }
        let dir = data_dir.join("disks");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let bandwidth = match Bandwidth::detect(rates) {
            Ok(Some(b)) => {
                info!(rates = ?b.rates(), "session disks have bandwidth limits (0: none)");
                Some(b)
            }
            Ok(None) => None,
            Err(why) => {
                warn!("session disks have no bandwidth limit: {why}");
                None
            }
        };
        Ok(Self { dir, bandwidth })
    }

    /// Whether each session's disk bandwidth is limited.
    pub fn bandwidth_limited(&self) -> bool {
        self.bandwidth.is_some()
    }

    /// Sets the bandwidth limits on the loop disk mounted at `layer` for the
    /// kernel's I/O on the session's behalf (before the session starts).
    pub fn limit(&self, layer: &Path) -> std::io::Result<()> {
        match &self.bandwidth {
            Some(bw) => bw.limit_device(Dev::loop_under(layer)?),
            None => Ok(()),
        }
    }

    /// The same limits for the session's own I/O, once it runs (`pid`: its
    /// init, whose cgroup exists only from the start).
    pub fn limit_session(&self, layer: &Path, pid: i32) -> std::io::Result<()> {
        match &self.bandwidth {
            Some(bw) => bw.limit_session(Dev::loop_under(layer)?, pid),
            None => Ok(()),
        }
    }

    /// MiB free on the filesystem holding the disk images.
    pub fn free_mb(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize) / (1024 * 1024))
    }

    fn image(&self, session: &str) -> PathBuf {
        self.dir.join(format!("{session}.img"))
    }

    /// Gives a created (not yet started) container's writable layer a
    /// filesystem of `disk_mb` MiB.
    pub async fn attach(&self, session: &str, layer: &Path, disk_mb: u64) -> std::io::Result<()> {
        let img = self.image(session);
        let staging = self.dir.join(format!("{session}.mnt"));
        let result = async {
            let f = std::fs::File::create(&img)?;
            f.set_len(disk_mb * 1024 * 1024)?;
            drop(f);
            // No reserved blocks: the session's root is not the worker's root,
            // and the limit should be what it can write. Lazy init keeps
            // formatting a large sparse file at milliseconds.
            run(Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-m",
                    "0",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1",
                ])
                .arg(&img))
            .await?;
            // Docker's files for the layer (`link`, `lower`, `diff`, `work`)
            // move onto the new filesystem with their owners and modes, then
            // it is mounted over the layer directory.
            std::fs::create_dir_all(&staging)?;
            mount(&img, &staging).await?;
            let copied = async {
                let _ = std::fs::remove_dir_all(staging.join("lost+found"));
                let mut src = layer.as_os_str().to_owned();
                src.push("/.");
                run(Command::new("cp").arg("-a").arg(&src).arg(&staging)).await
            }
            .await;
            let unmounted = umount(&staging).await;
            let _ = std::fs::remove_dir(&staging);
            copied?;
            unmounted?;
            mount(&img, layer).await?;
            // Limited before the container starts, so no write goes unlimited.
            if let Err(e) = self.limit(layer) {
                let _ = umount(layer).await;
                return Err(e);
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = umount(&staging).await;
            let _ = std::fs::remove_dir(&staging);
            let _ = std::fs::remove_file(&img);
        }
        result
    }

    /// Whether a disk image was made for this session.
    pub fn has(&self, session: &str) -> bool {
        self.image(session).is_file()
    }

    /// Mounts a session's disk again over its layer (after a reboot, before
    /// the container starts again). Nothing to do if it is mounted.
    pub async fn reattach(&self, session: &str, layer: &Path) -> std::io::Result<()> {
        if !is_mountpoint(layer) {
            mount(&self.image(session), layer).await?;
        }
        // A reboot dropped the limits with the loop device.
        self.limit(layer)
    }

    /// Drops the bandwidth limits of the loop disk mounted at `layer`, so
    /// whatever uses the device next is not held to them. (The session's
    /// cgroup, with its copy, goes with the container.)
    pub fn unlimit(&self, session: &str, layer: &Path) {
        let Some(bw) = &self.bandwidth else {
            return;
        };
        match Dev::loop_under(layer) {
            Ok(dev) => {
                if let Err(e) = bw.clear_device(dev) {
                    warn!(%session, %dev, "cannot drop the disk's bandwidth limit: {e}");
                }
            }
            Err(e) => warn!(%session, "cannot find the session's loop device: {e}"),
        }
    }

    /// Frees a session's disk once its container is gone: Docker unmounts
    /// it while removing the layer; whatever is still mounted is detached
    /// here, then the image file is deleted.
    pub async fn release(&self, session: &str, layer: Option<&Path>) {
        if let Some(layer) = layer
            && is_mountpoint(layer)
            && let Err(e) = umount(layer).await
        {
            warn!(%session, "cannot unmount the session's disk: {e}");
        }
        match std::fs::remove_file(self.image(session)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(%session, "cannot delete the session's disk image: {e}"),
        }
    }

    /// Deletes the images of sessions that no longer exist (removed while
    /// the agent was down). Mounted ones are in use and stay. (A limit
    /// left on the loop device of such a session stays until the device's
    /// next session replaces it: clearing rules of detached devices here
    /// would race with another agent attaching one.)
    pub fn sweep(&self, keep: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Some(session) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".img"))
            else {
                continue;
            };
            if keep.contains(session) || image_in_use(&path) {
                continue;
            }
            info!(%session, "deleting the disk of a session that no longer exists");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The overlay2 layer directory of a container (parent of its `UpperDir`),
/// if Docker reports one under its own root directory.
pub fn layer_dir(
    graph_driver: Option<&bollard::models::DriverData>,
    docker_root: &Path,
) -> Option<PathBuf> {
    let gd = graph_driver?;
    if gd.name != "overlay2" {
        return None;
    }
    let upper = Path::new(gd.data.get("UpperDir")?);
    if upper.file_name()? != "diff" || !upper.is_absolute() {
        return None;
    }
    let layer = upper.parent()?;
    // Never mount over anything but a layer directory of this engine.
    if !layer.starts_with(docker_root)
        || layer
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return None;
    }
    Some(layer.to_path_buf())
}

/// Whether `path` is the root of a mount (its device differs from its
/// parent's).
pub fn is_mountpoint(path: &Path) -> bool {
    let (Ok(me), Ok(parent)) = (
        std::fs::symlink_metadata(path),
        std::fs::symlink_metadata(path.parent().unwrap_or(path)),
    ) else {
        return false;
    };
    me.dev() != parent.dev() || me.ino() == parent.ino()
}

/// Whether a loop device is backed by this file (so it is mounted).
fn image_in_use(img: &Path) -> bool {
    let Ok(canonical) = std::fs::canonicalize(img) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("loop/backing_file"))
            .is_ok_and(|b| Path::new(b.trim_end()) == canonical)
    })
}

async fn mount(img: &Path, at: &Path) -> std::io::Result<()> {
    // `loop` makes mount(8) pick a free loop device and detach it again on
    // unmount (autoclear); `discard` hands freed blocks back to the worker.
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,discard"])
        .arg(img)
        .arg(at))
    .await
}

async fn umount(at: &Path) -> std::io::Result<()> {
    run(Command::new("umount").arg(at)).await
}

async fn run(cmd: &mut Command) -> std::io::Result<()> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let out = cmd.kill_on_drop(true).output().await?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(std::io::Error::other(format!(
        "{program} failed ({}): {}",
        out.status,
        stderr.trim()
    )))
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d: PathBuf| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn driver(name: &str, upper: &str) -> bollard::models::DriverData {
        bollard::models::DriverData {
            name: name.into(),
            data: HashMap::from([("UpperDir".to_string(), upper.to_string())]),
        }
    }

    #[test]
    fn layer_dir_is_only_an_overlay2_layer_under_dockers_root() {
        let root = Path::new("/var/lib/docker/100000.100000");
        let ok = driver(
            "overlay2",
            "/var/lib/docker/100000.100000/overlay2/abc/diff",
        );
        assert_eq!(
            layer_dir(Some(&ok), root),
            Some(PathBuf::from("/var/lib/docker/100000.100000/overlay2/abc"))
        );
        for bad in [
            driver("vfs", "/var/lib/docker/100000.100000/overlay2/abc/diff"),
            driver("overlay2", "/etc/diff"),
            driver(
                "overlay2",
                "/var/lib/docker/100000.100000/overlay2/abc/work",
            ),
            driver(
                "overlay2",
                "/var/lib/docker/100000.100000/../../../etc/diff",
            ),
            driver("overlay2", "overlay2/abc/diff"),
        ] {
            assert_eq!(layer_dir(Some(&bad), root), None, "{bad:?}");
        }
        assert_eq!(layer_dir(None, root), None);
    }

    #[test]
    fn mountpoints_are_told_from_directories() {
        assert!(is_mountpoint(Path::new("/")));
        assert!(is_mountpoint(Path::new("/proc")));
        let dir = std::env::temp_dir().join(format!("warren-mp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_mountpoint(&dir));
        std::fs::remove_dir(&dir).unwrap();
    }
}
