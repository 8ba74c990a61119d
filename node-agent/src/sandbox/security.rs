//! Which security profile sessions get on this worker (docs/security.md).
//!
//! `default` keeps a session's root inside Docker's confinement, less
//! NET_RAW. The host-root profiles exist for Docker-in-Docker on a
//! single-user machine and only behind `allow_host_root_sessions`:
//! `--privileged` asks runc for every capability; where the host's bounding
//! set is narrower (these build machines lack `CAP_SYS_RESOURCE`), runc
//! fails, so `capabilities` grants every capability the host does have, with
//! unconfined seccomp, AppArmor and system paths and a writable cgroup mount,
//! which is what `dockerd` inside the session needs.
use warren_config::SecurityMode;

/// Linux capability names by number (capability.h).
const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The settings applied to every session container (docs/security.md).
#[derive(Debug, Clone, PartialEq)]
pub enum SecurityProfile {
    /// Host root: `--privileged`.
    Privileged,
    /// Host root: every capability the host has, confinement off.
    Capabilities {
        caps: Vec<String>,
        missing: Vec<String>,
    },
    /// Isolated: Docker's default capabilities less NET_RAW (no raw packets,
    /// so no ARP/L2 spoofing on the shared bridge), a private cgroup
    /// namespace over the read-only cgroup mount Docker gives, no new
    /// privileges, Docker's seccomp and masked /proc paths.
    Default,
    /// Isolated Docker-in-Docker on an engine with user-namespace remapping:
    /// the session's root is an unprivileged host uid; SYS_ADMIN (needed to
    /// mount inner containers' filesystems) holds only inside the session's
    /// own user namespace. Docker's seccomp profile stays; /proc and /sys are
    /// not masked (a new procfs for an inner container may not be mounted
    /// over masked paths), which shows read-only host information such as
    /// /sys/firmware; writes there are refused to a non-host root.
    Dind,
}

impl SecurityProfile {
    /// Resolves the configured mode against what this host allows. Host-root
    /// profiles only come from an explicit `allow_host_root`.
    pub fn detect(
        mode: SecurityMode,
        allow_host_root: bool,
        engine_userns: bool,
    ) -> SecurityProfile {
        match mode {
            SecurityMode::Default => SecurityProfile::Default,
            SecurityMode::Dind => SecurityProfile::Dind,
            SecurityMode::Auto if engine_userns => SecurityProfile::Dind,
            SecurityMode::Auto if !allow_host_root => SecurityProfile::Default,
            // Config validation refuses these without the setting; refuse
            // here too, whatever built the config.
            SecurityMode::Privileged | SecurityMode::Capabilities if !allow_host_root => {
                SecurityProfile::Default
            }
            SecurityMode::Privileged => SecurityProfile::Privileged,
            SecurityMode::Capabilities | SecurityMode::Auto => {
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .unwrap_or(40);
                let (caps, missing) = split_caps(bounding_set(&status).unwrap_or(0), last);
                if mode == SecurityMode::Auto && missing.is_empty() {
                    SecurityProfile::Privileged
                } else {
                    SecurityProfile::Capabilities { caps, missing }
                }
            }
        }
    }

    /// The profile's name, as the node record shows it.
    pub fn name(&self) -> &'static str {
        match self {
            SecurityProfile::Default => "default",
            SecurityProfile::Dind => "dind",
            SecurityProfile::Privileged => "host-root-privileged",
            SecurityProfile::Capabilities { .. } => "host-root-capabilities",
        }
    }

    /// Whether a session's root is root on the worker.
    pub fn is_host_root(&self) -> bool {
        matches!(
            self,
            SecurityProfile::Privileged | SecurityProfile::Capabilities { .. }
        )
    }

    pub fn describe(&self) -> String {
        match self {
            SecurityProfile::Privileged => {
                "host-root-privileged: sessions are root on this worker".into()
            }
            SecurityProfile::Default => {
                "default: isolated (no NET_RAW, private cgroup namespace, no new privileges; no Docker-in-Docker)".into()
            }
            SecurityProfile::Dind => {
                "dind: isolated Docker-in-Docker (user-namespace root, no NET_RAW, private cgroup namespace; podman inside)".into()
            }
            SecurityProfile::Capabilities { caps, missing } => format!(
                "host-root-capabilities: sessions are root on this worker ({} capabilities, unconfined seccomp/AppArmor/system paths, writable cgroups; host lacks {})",
                caps.len(),
                if missing.is_empty() {
                    "nothing".to_string()
                } else {
                    missing.join(", ")
                }
            ),
        }
    }

    /// Applies the profile to a container's host config.
    pub fn apply(&self, hc: &mut bollard::models::HostConfig) {
        match self {
            SecurityProfile::Privileged => {
                hc.privileged = Some(true);
                // On an engine that remaps user namespaces, host root is
                // only by asking for the host's namespace.
                hc.userns_mode = Some("host".into());
            }
            SecurityProfile::Dind => {
                hc.cap_add = Some(vec!["CAP_SYS_ADMIN".into()]);
                hc.cap_drop = Some(vec!["NET_RAW".into()]);
                // AppArmor's docker-default refuses mounts; seccomp stays.
                hc.security_opt = Some(vec!["apparmor=unconfined".into()]);
                hc.masked_paths = Some(vec![]);
                hc.readonly_paths = Some(vec![]);
                hc.cgroupns_mode = Some(bollard::models::HostConfigCgroupnsModeEnum::PRIVATE);
            }
            SecurityProfile::Default => {
                hc.cap_drop = Some(vec!["NET_RAW".into()]);
                hc.security_opt = Some(vec!["no-new-privileges:true".into()]);
                hc.cgroupns_mode = Some(bollard::models::HostConfigCgroupnsModeEnum::PRIVATE);
            }
            SecurityProfile::Capabilities { caps, .. } => {
                hc.userns_mode = Some("host".into());
                hc.cap_add = Some(caps.iter().map(|c| format!("CAP_{c}")).collect());
                hc.security_opt = Some(vec![
                    "seccomp=unconfined".into(),
                    "apparmor=unconfined".into(),
                ]);
                // `systempaths=unconfined`: nothing masked or read-only in /proc and /sys.
                hc.masked_paths = Some(vec![]);
                hc.readonly_paths = Some(vec![]);
                hc.binds
                    .get_or_insert_with(Vec::new)
                    .push("/sys/fs/cgroup:/sys/fs/cgroup:rw".into());
            }
        }
    }
}

fn bounding_set(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn split_caps(bnd: u64, last: u32) -> (Vec<String>, Vec<String>) {
    let mut have = Vec::new();
    let mut missing = Vec::new();
    for (i, name) in CAP_NAMES.iter().enumerate().take(last as usize + 1) {
        if bnd & (1u64 << i) != 0 {
            have.push(name.to_string());
        } else {
            missing.push(name.to_string());
        }
    }
    (have, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bounding_set() {
        let s = "Name:\tx\nCapBnd:\t000001fffeffffff\nCapAmb:\t0\n";
        let bnd = bounding_set(s).unwrap();
        let (have, missing) = split_caps(bnd, 40);
        assert_eq!(missing, vec!["SYS_RESOURCE".to_string()]);
        assert_eq!(have.len(), 40);
        let (_, none_missing) = split_caps(0x1ff_ffff_ffff, 40);
        assert!(none_missing.is_empty());
    }
}
