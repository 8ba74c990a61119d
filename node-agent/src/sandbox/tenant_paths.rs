//! Paths out of a session that the engine opens by default, closed.
//!
//! - **Bound files.** The engine binds `/etc/hosts`, `/etc/resolv.conf` and
//!   `/etc/hostname` read-write from its own directory on the worker's
//!   disk, outside the session's disk and its throttle: one `dd` into
//!   `/etc/hosts` filled the worker. The agent writes those three files
//!   itself, small and fixed, and binds them read-only (the engine skips
//!   its own where a mount exists).
//! - **Image volumes.** An image's `VOLUME`s would become anonymous volumes
//!   on the worker's disk. Each becomes a tmpfs instead (the engine skips
//!   an image volume where a mount exists), bounded in size and counted in
//!   the session's memory, so it never reaches the worker's disk.
//! - **Healthchecks.** An image's `HEALTHCHECK` runs `docker exec` from the
//!   worker at the image's interval, outside the session's limits: off.
//! - **DNS.** The engine's resolver at 127.0.0.11 names every container on
//!   the sessions network (a reverse lookup of a neighbour's address
//!   answered `warren-<node>-<session>`) and forwards names outside. Sessions
//!   have no egress, so they get no DNS: traffic to the resolver is refused
//!   inside the session's network namespace, which belongs to the worker's
//!   user namespace and so cannot be changed from the session.
//! - **IPv6.** The inter-session block is IPv4 (iptables); link-local IPv6
//!   crosses a bridge regardless. Sessions' IPv6 is off (`disable_ipv6`, a
//!   per-namespace setting the session cannot write).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokio::process::Command;

/// Where the engine's embedded resolver answers inside a container.
const ENGINE_RESOLVER: &str = "127.0.0.11";
/// Largest tmpfs an image volume gets, in MiB (also bounded by the
/// session's memory, which its pages count against).
const VOLUME_TMPFS_MAX_MB: u64 = 1024;

/// The hostname every session sees.
pub const HOSTNAME: &str = "warren";

/// The agent's copies of the files the engine would bind in, one folder
/// per session under the agent's `sessions` directory.
#[derive(Debug, Clone)]
pub struct BoundFiles {
    dir: PathBuf,
}

impl BoundFiles {
    pub fn new(sessions_dir: &Path) -> Self {
        Self {
            dir: sessions_dir.to_path_buf(),
        }
    }

    fn session_dir(&self, session: &str) -> PathBuf {
        self.dir.join(session)
    }

    /// Writes the session's files (owned by the worker's root, readable by
    /// the session's) and returns the read-only binds for them.
    pub fn prepare(&self, session: &str) -> std::io::Result<Vec<String>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.session_dir(session);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let files = [
            ("hosts", "/etc/hosts", hosts()),
            ("resolv.conf", "/etc/resolv.conf", resolv_conf()),
            ("hostname", "/etc/hostname", format!("{HOSTNAME}\n")),
        ];
        let mut binds = Vec::with_capacity(files.len());
        for (name, target, content) in files {
            let path = dir.join(name);
            std::fs::write(&path, content)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            binds.push(format!("{}:{target}:ro", path.display()));
        }
        Ok(binds)
    }

    /// Removes the session's files (nothing to do if there are none).
    pub fn remove(&self, session: &str) {
        let _ = std::fs::remove_dir_all(self.session_dir(session));
    }
}

fn hosts() -> String {
    format!("127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

fn resolv_conf() -> String {
    "# Warren: no DNS here (this session's network allows no egress).\n".into()
}

/// A tmpfs for each of the image's declared volumes, in place of the
/// anonymous volumes the engine would make on the worker's disk.
pub fn volume_tmpfs<'a>(
    volumes: impl IntoIterator<Item = &'a String>,
    memory_mb: u64,
) -> HashMap<String, String> {
    // Half the memory: a full volume is ENOSPC, never the OOM killer.
    let size = (memory_mb / 2).clamp(1, VOLUME_TMPFS_MAX_MB);
    volumes
        .into_iter()
        .map(|v| clean_path(v))
        .filter(|v| v != "/")
        .map(|v| {
            // exec: a volume often holds an inner engine's images.
            (v, format!("rw,exec,nosuid,nodev,size={size}m"))
        })
        .collect()
}

/// A container path as the engine reads it (Go's `filepath.Clean` after a
/// leading `/`): `.` and empty parts dropped, `..` resolved, never above
/// `/`. The engine skips an image volume only where a mount has exactly
/// this path, so `/data/.` must become `/data` here too.
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The healthcheck setting that turns an image's `HEALTHCHECK` off.
pub fn no_healthcheck() -> bollard::models::HealthConfig {
    bollard::models::HealthConfig {
        test: Some(vec!["NONE".to_string()]),
        ..Default::default()
    }
}

/// Kernel settings for the session's network namespace: no IPv6 (none
/// where the worker's kernel has no IPv6, whose settings do not exist).
pub fn network_sysctls(ipv6: bool) -> HashMap<String, String> {
    if !ipv6 {
        return HashMap::new();
    }
    [
        "net.ipv6.conf.all.disable_ipv6",
        "net.ipv6.conf.default.disable_ipv6",
    ]
    .into_iter()
    .map(|k| (k.to_string(), "1".to_string()))
    .collect()
}

/// Refuses the engine's resolver inside the network namespace of `pid`
/// (the session's init). Idempotent: a rule already there is kept.
pub async fn block_engine_dns(pid: i32) -> Result<(), String> {
    if pid <= 0 {
        return Err("the session has no running process".into());
    }
    let rule = ["OUTPUT", "-d", ENGINE_RESOLVER, "-j", "REJECT"];
    let run = |op: &'static str| {
        let pid = pid.to_string();
        async move {
            Command::new("nsenter")
                .args(["-t", &pid, "-n", "iptables", "-w", op])
                .args(rule)
                .output()
                .await
        }
    };
    if run("-C").await.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let out = run("-I")
        .await
        .map_err(|e| format!("running nsenter/iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables in the session's network namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_files_are_small_read_only_and_removed() {
        let tmp = std::env::temp_dir().join(format!("warren-bound-{}", std::process::id()));
        let b = BoundFiles::new(&tmp);
        let binds = b.prepare("s1").expect("written");
        assert_eq!(binds.len(), 3);
        for bind in &binds {
            assert!(bind.ends_with(":ro"), "{bind}");
            let src = bind.split(':').next().expect("source");
            assert!(std::fs::metadata(src).expect("exists").len() < 256);
        }
        assert!(binds.iter().any(|b| b.contains(":/etc/hosts:ro")));
        assert!(binds.iter().any(|b| b.contains(":/etc/resolv.conf:ro")));
        assert!(binds.iter().any(|b| b.contains(":/etc/hostname:ro")));
        b.remove("s1");
        assert!(!tmp.join("s1").exists());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn volumes_become_bounded_tmpfs() {
        let v = [
            "/var/lib/docker".to_string(),
            "/data/".to_string(),
            "relative".to_string(),
            "/x/./y/../z//".to_string(),
            "/..".to_string(),
        ];
        let t = volume_tmpfs(&v, 512);
        assert_eq!(t.len(), 4, "{t:?}");
        assert!(t.contains_key("/relative") && t.contains_key("/x/z"));
        assert_eq!(clean_path("/run//warren/."), "/run/warren");
        assert_eq!(clean_path("../../etc"), "/etc");
        assert_eq!(t["/var/lib/docker"], "rw,exec,nosuid,nodev,size=256m");
        assert!(t.contains_key("/data"));
        assert!(volume_tmpfs(&v, 100_000)["/data"].ends_with("size=1024m"));
    }

    #[test]
    fn healthchecks_are_off_and_ipv6_too() {
        assert_eq!(no_healthcheck().test, Some(vec!["NONE".to_string()]));
        assert_eq!(network_sysctls(true)["net.ipv6.conf.all.disable_ipv6"], "1");
        assert!(network_sysctls(false).is_empty());
    }
}
