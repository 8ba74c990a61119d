//! Disk bandwidth per session, set on the session's own loop device.
//!
//! A session's buffered writes reach its loop disk from the kernel's
//! flusher and journal threads. On cgroup v1 (Docker 20.10 on these
//! workers) those are charged to the root blkio cgroup, not the session's,
//! so a throttle on the session's cgroup alone misses them: a disk filler
//! wrote 680 MB/s to the worker's disk and every neighbour's keystrokes
//! waited behind it (echo p99 7-9x idle). Each loop device belongs to one
//! session, so a rule on that device limits that session alone. v1
//! throttling is flat (a parent's rule does not bind its children's I/O),
//! so the rule goes twice: in the root cgroup (the flusher's and journal's
//! writes) and in the session's cgroup (its direct and synced writes). The
//! session cannot change either: its cgroup filesystem is read-only.
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A block device, `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dev {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl Dev {
    /// The loop device a loop-mounted filesystem at `mountpoint` lives on.
    /// Anything else is refused: a rule meant for a session must never land
    /// on the worker's own disk (as it would if the mount were missing).
    pub fn loop_under(mountpoint: &Path) -> std::io::Result<Dev> {
        let st = std::fs::metadata(mountpoint)?;
        let dev = Dev {
            major: rustix::fs::major(st.dev()),
            minor: rustix::fs::minor(st.dev()),
        };
        if !Path::new(&format!("/sys/dev/block/{dev}/loop")).is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is on {dev}, not a loop device",
                mountpoint.display()
            )));
        }
        Ok(dev)
    }
}

/// What each session may do to its disk per second; 0: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub write_mbps: u64,
    pub read_mbps: u64,
    /// Write requests: a flood of small synced writes (each a journal
    /// commit down to the worker's disk) costs neighbours at few bytes.
    pub write_iops: u64,
    pub read_iops: u64,
}

impl Rates {
    pub fn from_config(d: &warren_config::DockerConfig) -> Self {
        Self {
            write_mbps: d.disk_write_mbps,
            read_mbps: d.disk_read_mbps,
            write_iops: d.disk_write_iops,
            read_iops: d.disk_read_iops,
        }
    }

    /// The rule files of blkio's throttle and the value for each.
    fn rules(&self) -> [(&'static str, u64); 4] {
        [
            (
                "blkio.throttle.write_bps_device",
                self.write_mbps.saturating_mul(1024 * 1024),
            ),
            (
                "blkio.throttle.read_bps_device",
                self.read_mbps.saturating_mul(1024 * 1024),
            ),
            ("blkio.throttle.write_iops_device", self.write_iops),
            ("blkio.throttle.read_iops_device", self.read_iops),
        ]
    }
}

/// Per-session disk limits on this worker's blkio hierarchy.
#[derive(Debug)]
pub struct Bandwidth {
    /// Where the v1 blkio hierarchy is mounted.
    root: PathBuf,
    rates: Rates,
}

impl Bandwidth {
    /// `None` when every limit is 0 (off); an error says why limits that
    /// were asked for cannot be set on this worker.
    pub fn detect(rates: Rates) -> Result<Option<Self>, String> {
        if rates == Rates::default() {
            return Ok(None);
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        let root = blkio_mount(&mountinfo).ok_or(
            "there is no cgroup v1 blkio hierarchy (on cgroup v2 these limits are not set yet)",
        )?;
        if !root.join("blkio.throttle.write_bps_device").is_file() {
            return Err(format!(
                "{} has no blkio.throttle files (kernel without CONFIG_BLK_DEV_THROTTLING)",
                root.display()
            ));
        }
        Ok(Some(Self { root, rates }))
    }

    /// The limits for `dev` in the root cgroup: the I/O the kernel does on
    /// the session's behalf. Set before the session starts.
    pub fn limit_device(&self, dev: Dev) -> std::io::Result<()> {
        self.write_rules(&self.root, dev, self.rates)
    }

    /// The same limits in the cgroup of the session's init (`pid`, host
    /// view): the I/O its own processes submit.
    pub fn limit_session(&self, dev: Dev, pid: i32) -> std::io::Result<()> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let rel = blkio_cgroup(&cgroups)
            .ok_or_else(|| std::io::Error::other(format!("process {pid} has no blkio cgroup")))?;
        let dir = self.root.join(rel);
        // The root is the one already limited; a session is never there.
        if dir == self.root {
            return Err(std::io::Error::other(format!(
                "process {pid} is in the root blkio cgroup"
            )));
        }
        self.write_rules(&dir, dev, self.rates)
    }

    /// Drops the root cgroup's rules for a loop device whose session is
    /// gone, so whatever uses that device next is not held to them. (The
    /// session's cgroup goes with its container.)
    pub fn clear_device(&self, dev: Dev) -> std::io::Result<()> {
        self.write_rules(&self.root, dev, Rates::default())
    }

    fn write_rules(&self, dir: &Path, dev: Dev, rates: Rates) -> std::io::Result<()> {
        // Writing 0 removes a rule; each is written either way so a device
        // reused by another session never keeps an old one.
        for (file, value) in rates.rules() {
            let path = dir.join(file);
            let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
            f.write_all(format!("{dev} {value}\n").as_bytes())
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }

    pub fn rates(&self) -> Rates {
        self.rates
    }
}

/// The mount point of the cgroup v1 hierarchy holding `blkio`.
fn blkio_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        // id parent major:minor root mountpoint options ... - fstype source super
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split(' ');
        let (fstype, _source, sup) = (post.next()?, post.next()?, post.next()?);
        let mountpoint = pre.split(' ').nth(4)?;
        (fstype == "cgroup" && sup.split(',').any(|o| o == "blkio"))
            .then(|| PathBuf::from(mountpoint))
    })
}

/// The blkio cgroup in `/proc/<pid>/cgroup`, relative to its hierarchy.
fn blkio_cgroup(cgroups: &str) -> Option<PathBuf> {
    cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if !controllers.split(',').any(|c| c == "blkio") {
            return None;
        }
        let rel = Path::new(path.strip_prefix('/')?);
        // Never step out of the hierarchy.
        rel.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
            .then(|| rel.to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_blkio_hierarchy() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
36 25 0:32 / /sys/fs/cgroup/blkio rw,relatime shared:15 - cgroup cgroup rw,blkio
37 25 0:33 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        assert_eq!(blkio_mount(mi), Some(PathBuf::from("/sys/fs/cgroup/blkio")));
        let combined = "36 25 0:32 / /sys/fs/cgroup/blkio,cpu rw - cgroup cgroup rw,cpu,blkio\n";
        assert_eq!(
            blkio_mount(combined),
            Some(PathBuf::from("/sys/fs/cgroup/blkio,cpu"))
        );
        let v2 = "37 25 0:33 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(blkio_mount(v2), None);
        // A name=blkio hierarchy is not the controller.
        let named = "38 25 0:34 / /x rw - cgroup cgroup rw,name=blkio\n";
        assert_eq!(blkio_mount(named), None);
    }

    #[test]
    fn reads_a_processs_blkio_cgroup() {
        let c = "12:pids:/docker/abc\n7:blkio:/docker/abc\n0::/\n";
        assert_eq!(blkio_cgroup(c), Some(PathBuf::from("docker/abc")));
        let combined = "3:cpu,blkio:/docker/x\n";
        assert_eq!(blkio_cgroup(combined), Some(PathBuf::from("docker/x")));
        assert_eq!(blkio_cgroup("7:blkio:/\n"), Some(PathBuf::new()));
        assert_eq!(blkio_cgroup("7:blkio:/docker/../../etc\n"), None);
        assert_eq!(blkio_cgroup("7:blkio:docker\n"), None);
        assert_eq!(blkio_cgroup("0::/docker/abc\n"), None);
    }

    #[test]
    fn only_loop_devices_are_taken() {
        assert!(Dev::loop_under(Path::new("/proc")).is_err());
        assert!(Dev::loop_under(Path::new("/no/such/dir")).is_err());
    }
}
