//! Which security profile a Docker-in-Docker session gets on this host.
//!
//! `--privileged` asks runc for every capability; where the host's bounding
//! set is narrower (these build machines lack `CAP_SYS_RESOURCE`), runc
//! fails. Then the agent grants every capability the host does have, with
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

/// The settings applied to every session container.
#[derive(Debug, Clone, PartialEq)]
pub enum SecurityProfile {
    Privileged,
    Capabilities {
        caps: Vec<String>,
        missing: Vec<String>,
    },
    Default,
}

impl SecurityProfile {
    /// Resolves the configured mode against what this host allows.
    pub fn detect(mode: SecurityMode) -> SecurityProfile {
        match mode {
            SecurityMode::Privileged => SecurityProfile::Privileged,
            SecurityMode::Default => SecurityProfile::Default,
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

    pub fn describe(&self) -> String {
        match self {
            SecurityProfile::Privileged => "privileged (full capability bounding set)".into(),
            SecurityProfile::Default => "Docker's default profile (no Docker-in-Docker)".into(),
            SecurityProfile::Capabilities { caps, missing } => format!(
                "{} capabilities, unconfined seccomp/AppArmor/system paths, writable cgroups; host lacks {}",
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
            SecurityProfile::Privileged => hc.privileged = Some(true),
            SecurityProfile::Default => {}
            SecurityProfile::Capabilities { caps, .. } => {
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
