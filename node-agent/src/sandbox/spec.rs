//! A session's container settings, as a pure function of what they depend
//! on: [`SessionSpec::resolve`] checks a session's spec against the agent's
//! defaults, and [`container_config`] builds the container Docker is asked
//! for from it, the security profile and this worker's decisions (paths,
//! pinned cores, disk). Neither reads a file or asks the engine; the
//! runtime ([`crate::sandbox::runtime`]) gathers their inputs and runs the
//! sequence.
//!
//! Every container runs `warren-init` (bind-mounted read-only) as its
//! entrypoint, with the image's own entrypoint and command passed after
//! `--`. Init's socket lives on a small tmpfs inside the container, reached
//! by the agent through [`crate::serve::initsock`]; no host directory is
//! writable from a session.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, RestartPolicy, RestartPolicyNameEnum,
};
use warren_config::{DockerConfig, TerminalConfig};
use warren_proto::egress::Egress;

use crate::sandbox::security::SecurityProfile;

pub const LABEL_MANAGED: &str = "warren.managed";
pub const LABEL_SESSION: &str = "warren.session";
pub const LABEL_NODE: &str = "warren.node";
pub const LABEL_MEMORY: &str = "warren.memory_mb";
/// Set to `loop` on sessions whose writable layer is a loop-mounted disk.
pub const LABEL_DISK: &str = "warren.disk";
/// The cores a session is pinned to ("0,1") and its CPU limit.
pub const LABEL_CPUSET: &str = "warren.cpuset";
pub const LABEL_CPUS: &str = "warren.cpus";
/// The session's egress policy ([`Egress::to_text`]: `none`, `internet`
/// or its CIDRs), read back on adoption to set its rules up again.
pub const LABEL_EGRESS: &str = "warren.egress";
/// Where init's socket directory (a tmpfs) is mounted in every session.
const SOCKET_DIR_IN_CONTAINER: &str = "/run/warren";
/// Bound on a session's container log (init's and the image command's output).
const LOG_MAX_SIZE: &str = "1m";
/// Paths an image volume may not cover: the agent's own mounts.
const RESERVED_PATHS: [&str; 5] = [
    SOCKET_DIR_IN_CONTAINER,
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/hostname",
    warren_init::BINARY_IN_CONTAINER,
];
/// Where lxcfs serves its per-container views of /proc and /sys.
pub const LXCFS_DIR: &str = "/var/lib/lxcfs";

/// What to run for one session; unset fields take the agent's defaults.
#[derive(Debug, Clone, Default)]
pub struct SessionSpec {
    pub id: String,
    pub image: Option<String>,
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// Writable disk (image layer changes, inner images) in MB.
    pub disk_mb: Option<u64>,
    /// What the session may reach beyond Warren (default: nothing).
    pub egress: Egress,
}

/// A [`SessionSpec`] with the agent's defaults filled in, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub id: String,
    pub image: String,
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids_limit: i64,
    /// Writable disk in MB; 0 asks for no limit.
    pub disk_mb: u64,
    /// The spec asked for its disk limit (not the agent's default): the
    /// session is refused rather than run without it.
    pub disk_asked: bool,
    /// Its egress policy, checked: `None` runs on the sessions network,
    /// anything else on a network of its own ([`crate::sandbox::egress`]).
    pub egress: Egress,
}

impl SessionSpec {
    /// Fills in `cfg`'s defaults and checks the result; `disk_limits` says
    /// whether this worker can limit a session's disk at all. The error is
    /// the reason, for the caller.
    pub fn resolve(&self, cfg: &DockerConfig, disk_limits: bool) -> Result<Resolved, String> {
        if !warren_config::is_dns_label(&self.id) {
            return Err(format!("session id {:?} is not a DNS label", self.id));
        }
        let image = self
            .image
            .clone()
            .unwrap_or_else(|| cfg.default_image.clone());
        let memory_mb = self.memory_mb.unwrap_or(cfg.default_memory_mb);
        let cpus = self.cpus.unwrap_or(cfg.default_cpus);
        let pids_limit = self.pids_limit.unwrap_or(cfg.pids_limit);
        let disk_mb = self.disk_mb.unwrap_or(cfg.default_disk_mb);
        if self
            .disk_mb
            .is_some_and(|d| !(64..=cfg.max_disk_mb).contains(&d))
        {
            return Err(format!(
                "disk_mb must be between 64 and {} (docker.max_disk_mb)",
                cfg.max_disk_mb
            ));
        }
        if self.disk_mb.is_some() && !disk_limits {
            return Err("this worker cannot limit disk (its Docker engine needs overlay2, on XFS with project quotas or with loop devices for the agent)".into());
        }
        if !((16..=1_048_576).contains(&memory_mb)
            && cpus > 0.0
            && cpus <= 256.0
            && (16..=1_000_000).contains(&pids_limit))
        {
            return Err("memory_mb, cpus or pids_limit out of range".into());
        }
        // Control decided what the operator allows; the agent checks the
        // shape again (and refuses what no session may reach).
        let egress = self.egress.checked(true)?;
        Ok(Resolved {
            id: self.id.clone(),
            image,
            memory_mb,
            cpus,
            pids_limit,
            disk_mb,
            disk_asked: self.disk_mb.is_some(),
            egress,
        })
    }
}

/// Everything a session's container settings depend on, resolved by the
/// runtime for one create attempt.
#[derive(Debug, Clone)]
pub struct ContainerInputs<'a> {
    pub session: &'a Resolved,
    /// The image's own entrypoint and command, run by init after `--`.
    pub command: &'a [String],
    /// The static `warren-init` on the worker, bound in read-only.
    pub init_binary: &'a Path,
    /// lxcfs's views of /proc and /sys files ([`lxcfs_binds`]), if it runs.
    pub lxcfs_binds: &'a [String],
    /// The agent's labels on everything it creates (managed, node, extra).
    pub labels: &'a BTreeMap<String, String>,
    /// The session's network: the sessions network, or its own when it
    /// has an egress policy.
    pub network: &'a str,
    /// The OCI runtime (`docker.runtime`); the engine's default if unset.
    pub oci_runtime: Option<&'a str>,
    pub terminal: &'a TerminalConfig,
    /// The cores the session is pinned to, if it is.
    pub cpuset: Option<&'a [usize]>,
    /// The disk label's value (how the disk is limited), if it gets one.
    pub disk_label: Option<&'a str>,
    /// A disk limit (MB) the engine enforces (`--storage-opt size`).
    pub disk_quota_mb: Option<u64>,
    /// Read-only binds of the agent's `/etc/hosts`, `/etc/resolv.conf` and
    /// `/etc/hostname` ([`crate::sandbox::tenant_paths::BoundFiles`]).
    pub bound_files: &'a [String],
    /// The image's declared `VOLUME`s (each becomes a bounded tmpfs).
    pub image_volumes: &'a [String],
    /// The worker's kernel has IPv6 (its per-session settings exist).
    pub ipv6: bool,
}

/// The container Docker is asked to create for a session under `security`.
pub fn container_config(
    inputs: &ContainerInputs<'_>,
    security: &SecurityProfile,
) -> ContainerCreateBody {
    let s = inputs.session;
    let mut binds = vec![format!(
        "{}:{}:ro",
        inputs.init_binary.display(),
        warren_init::BINARY_IN_CONTAINER
    )];
    // The session's own resource view (free, /proc/meminfo, uptime, the
    // CPU count from its quota) where lxcfs runs on the worker.
    binds.extend(inputs.lxcfs_binds.iter().cloned());
    // The engine's own copies of these are writable files on the worker's
    // disk: the agent's are small and read-only.
    binds.extend(inputs.bound_files.iter().cloned());
    let mut labels: HashMap<String, String> = inputs.labels.clone().into_iter().collect();
    labels.insert(LABEL_SESSION.into(), s.id.clone());
    labels.insert(LABEL_MEMORY.into(), s.memory_mb.to_string());
    // Every label the agent reads back is set here, empty for "none": the
    // engine merges the image's labels into the container's, so one left
    // unset could be the image's (`LABEL warren.cpuset=0`).
    labels.insert(
        LABEL_DISK.into(),
        inputs.disk_label.unwrap_or_default().into(),
    );
    labels.insert(LABEL_EGRESS.into(), s.egress.to_text());
    let cpuset = inputs.cpuset.map(crate::sandbox::cpus::format_list);
    labels.insert(LABEL_CPUSET.into(), cpuset.clone().unwrap_or_default());
    labels.insert(
        LABEL_CPUS.into(),
        if cpuset.is_some() {
            s.cpus.to_string()
        } else {
            String::new()
        },
    );
    // The image's volumes as tmpfs (in the session's memory), never
    // anonymous volumes on the worker's disk; init's socket dir last, so
    // an image naming it cannot change its options.
    let mut tmpfs = crate::sandbox::tenant_paths::volume_tmpfs(inputs.image_volumes, s.memory_mb);
    tmpfs.retain(|path, _| !RESERVED_PATHS.iter().any(|r| *r == path));
    tmpfs.insert(
        SOCKET_DIR_IN_CONTAINER.to_string(),
        "rw,nosuid,nodev,noexec,size=64k,mode=0700".to_string(),
    );

    let mut hc = HostConfig {
        cpuset_cpus: cpuset,
        memory: Some((s.memory_mb * 1024 * 1024) as i64),
        // No swap: the memory limit is a hard one.
        memory_swap: Some((s.memory_mb * 1024 * 1024) as i64),
        nano_cpus: Some((s.cpus * 1e9) as i64),
        pids_limit: Some(s.pids_limit),
        binds: Some(binds),
        // Init's socket: inside the container, small, counted in the
        // session's memory; never a host directory.
        tmpfs: Some(tmpfs),
        sysctls: Some(crate::sandbox::tenant_paths::network_sysctls(inputs.ipv6)),
        // Container logs are bounded: a session printing to PID 1's
        // stdout must not fill the worker's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                ("max-file".to_string(), "1".to_string()),
            ])),
        }),
        network_mode: Some(inputs.network.to_string()),
        runtime: inputs.oci_runtime.map(str::to_string),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    security.apply(&mut hc);
    if let Some(mb) = inputs.disk_quota_mb {
        hc.storage_opt = Some(HashMap::from([("size".to_string(), format!("{mb}M"))]));
    }

    let mut cmd = vec![
        "--socket".to_string(),
        warren_init::SOCKET_IN_CONTAINER.to_string(),
        "--detached-timeout".to_string(),
        inputs.terminal.detached_timeout_secs.to_string(),
        "--replay-bytes".to_string(),
        inputs.terminal.replay_bytes.to_string(),
        "--".to_string(),
    ];
    cmd.extend(inputs.command.iter().cloned());
    // `nproc` counts the CPUs the process may run on (its pinned cores,
    // or all of the worker's); OMP_NUM_THREADS, which it honours, says
    // the quota.
    let env = vec![format!("OMP_NUM_THREADS={}", s.cpus.ceil().max(1.0) as u64)];
    ContainerCreateBody {
        image: Some(s.image.clone()),
        hostname: Some("warren".into()),
        env: Some(env),
        entrypoint: Some(vec![warren_init::BINARY_IN_CONTAINER.to_string()]),
        cmd: Some(cmd),
        labels: Some(labels),
        host_config: Some(hc),
        // An image's HEALTHCHECK would run from the worker, outside the
        // session's limits, as often as the image says.
        healthcheck: Some(crate::sandbox::tenant_paths::no_healthcheck()),
        ..Default::default()
    }
}

/// The container's name on the engine.
pub fn container_name(node_id: &str, session: &str) -> String {
    format!("warren-{node_id}-{session}")
}

/// Bind mounts of lxcfs's files over the session's /proc and /sys ones,
/// for those lxcfs serves (none when it does not run here).
pub fn lxcfs_binds(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if !dir.join("proc/meminfo").is_file() {
        return out;
    }
    for f in [
        "proc/meminfo",
        "proc/cpuinfo",
        "proc/stat",
        "proc/uptime",
        "proc/loadavg",
        "proc/diskstats",
        "proc/swaps",
        "sys/devices/system/cpu/online",
    ] {
        let p = dir.join(f);
        if p.is_file() {
            out.push(format!("{}:/{f}:ro", p.display()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::HostConfigCgroupnsModeEnum;

    fn session() -> Resolved {
        Resolved {
            id: "s1".into(),
            image: "busybox:latest".into(),
            memory_mb: 512,
            cpus: 1.5,
            pids_limit: 256,
            disk_mb: 0,
            disk_asked: false,
            egress: Egress::None,
        }
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_NODE.to_string(), "n1".to_string()),
        ])
    }

    /// Builds a session's container with the given profile and defaults
    /// for everything else.
    fn build(security: &SecurityProfile) -> ContainerCreateBody {
        let (s, labels, terminal) = (session(), labels(), TerminalConfig::default());
        let command = ["/bin/sh".to_string()];
        container_config(
            &ContainerInputs {
                session: &s,
                command: &command,
                init_binary: Path::new("/opt/warren/warren-init"),
                lxcfs_binds: &[],
                labels: &labels,
                network: "warren-sessions",
                oci_runtime: None,
                terminal: &terminal,
                cpuset: None,
                disk_label: None,
                disk_quota_mb: None,
                bound_files: &[],
                image_volumes: &[],
                ipv6: true,
            },
            security,
        )
    }

    fn host(body: &ContainerCreateBody) -> &HostConfig {
        body.host_config.as_ref().expect("host config")
    }

    fn strings(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    /// Settings every profile has: limits, network, labels, init, logs.
    fn assert_common(body: &ContainerCreateBody) {
        let hc = host(body);
        assert_eq!(hc.memory, Some(512 * 1024 * 1024));
        assert_eq!(hc.memory_swap, hc.memory, "no swap beyond the limit");
        assert_eq!(hc.nano_cpus, Some(1_500_000_000));
        assert_eq!(hc.pids_limit, Some(256));
        assert_eq!(hc.network_mode.as_deref(), Some("warren-sessions"));
        assert_eq!(hc.runtime, None);
        assert_eq!(hc.cpuset_cpus, None);
        assert_eq!(hc.storage_opt, None);
        assert_eq!(
            hc.restart_policy.as_ref().and_then(|r| r.name),
            Some(RestartPolicyNameEnum::NO)
        );
        let log = hc.log_config.as_ref().expect("log config");
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.as_ref().unwrap()["max-size"], "1m");
        assert_eq!(log.config.as_ref().unwrap()["max-file"], "1");
        let tmpfs = hc.tmpfs.as_ref().expect("tmpfs");
        assert_eq!(
            tmpfs["/run/warren"],
            "rw,nosuid,nodev,noexec,size=64k,mode=0700"
        );
        let binds = hc.binds.as_ref().expect("binds");
        assert_eq!(
            binds[0],
            format!(
                "/opt/warren/warren-init:{}:ro",
                warren_init::BINARY_IN_CONTAINER
            ),
            "init is bound first, read-only"
        );
        let labels = body.labels.as_ref().expect("labels");
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_NODE], "n1");
        assert_eq!(labels[LABEL_SESSION], "s1");
        assert_eq!(labels[LABEL_MEMORY], "512");
        // Set, empty: an image's label of that name never shows through.
        assert_eq!(labels[LABEL_DISK], "");
        assert_eq!(labels[LABEL_CPUSET], "");
        assert_eq!(labels[LABEL_CPUS], "");
        assert_eq!(labels[LABEL_EGRESS], "none");
        assert_eq!(
            body.healthcheck.as_ref().and_then(|h| h.test.clone()),
            strings(&["NONE"]),
            "an image's healthcheck never runs"
        );
        assert_eq!(
            hc.sysctls.as_ref().expect("sysctls")["net.ipv6.conf.all.disable_ipv6"],
            "1"
        );
        assert_eq!(body.image.as_deref(), Some("busybox:latest"));
        assert_eq!(body.hostname.as_deref(), Some("warren"));
        assert_eq!(body.env, strings(&["OMP_NUM_THREADS=2"]));
        assert_eq!(
            body.entrypoint,
            Some(vec![warren_init::BINARY_IN_CONTAINER.to_string()])
        );
        let cmd = body.cmd.as_ref().expect("cmd");
        assert_eq!(cmd[0], "--socket");
        assert_eq!(cmd[1], warren_init::SOCKET_IN_CONTAINER);
        assert_eq!(&cmd[2..4], ["--detached-timeout", "900"]);
        assert_eq!(&cmd[4..6], ["--replay-bytes", "2097152"]);
        assert_eq!(&cmd[6..], ["--", "/bin/sh"]);
    }

    #[test]
    fn default_profile_is_confined() {
        let body = build(&SecurityProfile::Default);
        assert_common(&body);
        let hc = host(&body);
        assert_eq!(hc.privileged, None);
        assert_eq!(hc.userns_mode, None);
        assert_eq!(hc.cap_add, None);
        assert_eq!(hc.cap_drop, strings(&["NET_RAW"]));
        assert_eq!(hc.security_opt, strings(&["no-new-privileges:true"]));
        assert_eq!(hc.cgroupns_mode, Some(HostConfigCgroupnsModeEnum::PRIVATE));
        // Docker's masked and read-only /proc and /sys paths stay.
        assert_eq!(hc.masked_paths, None);
        assert_eq!(hc.readonly_paths, None);
        assert_eq!(hc.binds.as_ref().unwrap().len(), 1, "no cgroup mount");
    }

    #[test]
    fn dind_profile_keeps_seccomp_and_a_private_cgroup_namespace() {
        let body = build(&SecurityProfile::Dind);
        assert_common(&body);
        let hc = host(&body);
        assert_eq!(hc.privileged, None);
        assert_eq!(hc.userns_mode, None, "the engine's remapped namespace");
        assert_eq!(hc.cap_add, strings(&["CAP_SYS_ADMIN"]));
        assert_eq!(hc.cap_drop, strings(&["NET_RAW"]));
        assert_eq!(hc.security_opt, strings(&["apparmor=unconfined"]));
        assert_eq!(hc.cgroupns_mode, Some(HostConfigCgroupnsModeEnum::PRIVATE));
        assert_eq!(hc.masked_paths, Some(vec![]));
        assert_eq!(hc.readonly_paths, Some(vec![]));
        assert_eq!(hc.binds.as_ref().unwrap().len(), 1, "no cgroup mount");
    }

    #[test]
    fn privileged_profile_is_host_root() {
        let body = build(&SecurityProfile::Privileged);
        assert_common(&body);
        let hc = host(&body);
        assert_eq!(hc.privileged, Some(true));
        assert_eq!(hc.userns_mode.as_deref(), Some("host"));
        assert_eq!(hc.cap_add, None);
        assert_eq!(hc.cap_drop, None);
        assert_eq!(hc.security_opt, None);
        assert_eq!(hc.cgroupns_mode, None);
        assert_eq!(hc.binds.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn capabilities_profile_grants_the_hosts_caps_unconfined() {
        let profile = SecurityProfile::Capabilities {
            caps: vec!["CHOWN".into(), "SYS_ADMIN".into()],
            missing: vec!["SYS_RESOURCE".into()],
        };
        let body = build(&profile);
        assert_common(&body);
        let hc = host(&body);
        assert_eq!(hc.privileged, None);
        assert_eq!(hc.userns_mode.as_deref(), Some("host"));
        assert_eq!(hc.cap_add, strings(&["CAP_CHOWN", "CAP_SYS_ADMIN"]));
        assert_eq!(hc.cap_drop, None);
        assert_eq!(
            hc.security_opt,
            strings(&["seccomp=unconfined", "apparmor=unconfined"])
        );
        assert_eq!(hc.cgroupns_mode, None);
        assert_eq!(hc.masked_paths, Some(vec![]));
        assert_eq!(hc.readonly_paths, Some(vec![]));
        assert_eq!(
            hc.binds.as_ref().unwrap()[1..],
            ["/sys/fs/cgroup:/sys/fs/cgroup:rw"],
            "a writable cgroup mount after init's"
        );
    }

    #[test]
    fn pinning_disk_lxcfs_and_runtime_reach_the_container() {
        let s = Resolved {
            disk_mb: 2048,
            ..session()
        };
        let (labels, terminal) = (labels(), TerminalConfig::default());
        let lxcfs = ["/var/lib/lxcfs/proc/meminfo:/proc/meminfo:ro".to_string()];
        let body = container_config(
            &ContainerInputs {
                session: &s,
                command: &[],
                init_binary: Path::new("/i"),
                lxcfs_binds: &lxcfs,
                labels: &labels,
                network: "net",
                oci_runtime: Some("sysbox-runc"),
                terminal: &terminal,
                cpuset: Some(&[2, 3]),
                disk_label: Some("quota"),
                disk_quota_mb: Some(2048),
                bound_files: &[],
                image_volumes: &[],
                ipv6: true,
            },
            &SecurityProfile::Default,
        );
        let hc = host(&body);
        assert_eq!(hc.cpuset_cpus.as_deref(), Some("2,3"));
        assert_eq!(hc.runtime.as_deref(), Some("sysbox-runc"));
        assert_eq!(hc.storage_opt.as_ref().unwrap()["size"], "2048M");
        assert_eq!(hc.binds.as_ref().unwrap()[1..], lxcfs);
        let l = body.labels.as_ref().unwrap();
        assert_eq!(l[LABEL_DISK], "quota");
        assert_eq!(l[LABEL_CPUSET], "2,3");
        assert_eq!(l[LABEL_CPUS], "1.5");
        assert_eq!(
            body.cmd.as_ref().unwrap().last().map(String::as_str),
            Some("--")
        );
    }

    #[test]
    fn specs_take_defaults_and_are_checked() {
        let cfg = DockerConfig::default();
        let spec = SessionSpec {
            id: "s1".into(),
            ..Default::default()
        };
        let r = spec.resolve(&cfg, false).expect("defaults are valid");
        assert_eq!(r.image, cfg.default_image);
        assert_eq!(r.memory_mb, cfg.default_memory_mb);
        assert_eq!(r.cpus, cfg.default_cpus);
        assert_eq!(r.pids_limit, cfg.pids_limit);
        assert_eq!(
            r.disk_mb, cfg.default_disk_mb,
            "a default disk needs no limit support"
        );
        assert!(!r.disk_asked);

        let bad = |s: SessionSpec, disk_limits| spec_error(&s, &cfg, disk_limits);
        assert_eq!(
            bad(
                SessionSpec {
                    id: "Not_A_Label".into(),
                    ..Default::default()
                },
                true
            ),
            "session id \"Not_A_Label\" is not a DNS label"
        );
        let with = |f: fn(&mut SessionSpec)| {
            let mut s = spec.clone();
            f(&mut s);
            s
        };
        assert_eq!(
            bad(with(|s| s.disk_mb = Some(63)), true),
            "disk_mb must be between 64 and 65536 (docker.max_disk_mb)"
        );
        assert_eq!(
            bad(with(|s| s.disk_mb = Some(4_194_304)), true),
            "disk_mb must be between 64 and 65536 (docker.max_disk_mb)",
            "a disk over the node's maximum is refused"
        );
        assert!(
            bad(with(|s| s.disk_mb = Some(64)), false).starts_with("this worker cannot limit disk")
        );
        let asked = with(|s| s.disk_mb = Some(64)).resolve(&cfg, true);
        assert_eq!(asked.map(|r| (r.disk_mb, r.disk_asked)), Ok((64, true)));
        let egress =
            with(|s| s.egress = Egress::Cidrs(vec!["10.0.0.0/8".into()])).resolve(&cfg, true);
        assert_eq!(
            egress.map(|r| r.egress),
            Ok(Egress::Cidrs(vec!["10.0.0.0/8".into()]))
        );
        assert!(
            bad(
                with(|s| s.egress = Egress::Cidrs(vec!["169.254.169.254".into()])),
                true
            )
            .contains("never reachable")
        );
        for s in [
            with(|s| s.memory_mb = Some(15)),
            with(|s| s.cpus = Some(0.0)),
            with(|s| s.cpus = Some(256.5)),
            with(|s| s.pids_limit = Some(15)),
        ] {
            assert_eq!(bad(s, true), "memory_mb, cpus or pids_limit out of range");
        }
    }

    fn spec_error(s: &SessionSpec, cfg: &DockerConfig, disk_limits: bool) -> String {
        s.resolve(cfg, disk_limits).expect_err("refused")
    }

    #[test]
    fn lxcfs_binds_only_what_lxcfs_serves() {
        let dir = std::env::temp_dir().join(format!("warren-lxcfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(lxcfs_binds(&dir).is_empty(), "lxcfs does not run");
        std::fs::create_dir_all(dir.join("proc")).unwrap();
        for f in ["meminfo", "uptime"] {
            std::fs::write(dir.join("proc").join(f), "").unwrap();
        }
        let binds = lxcfs_binds(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            binds,
            [
                format!("{}/proc/meminfo:/proc/meminfo:ro", dir.display()),
                format!("{}/proc/uptime:/proc/uptime:ro", dir.display()),
            ]
        );
    }

    #[test]
    fn container_names_carry_node_and_session() {
        assert_eq!(container_name("n1", "s1"), "warren-n1-s1");
    }

    #[test]
    fn nothing_a_session_writes_lands_on_the_workers_disk() {
        let (s, labels, terminal) = (session(), labels(), TerminalConfig::default());
        let bound = [
            "/var/lib/warren/sessions/s1/hosts:/etc/hosts:ro".to_string(),
            "/var/lib/warren/sessions/s1/resolv.conf:/etc/resolv.conf:ro".to_string(),
            "/var/lib/warren/sessions/s1/hostname:/etc/hostname:ro".to_string(),
        ];
        let volumes = [
            "/var/lib/docker".to_string(),
            "/run//warren/.".to_string(),
            "/etc/../etc/hosts".to_string(),
        ];
        let body = container_config(
            &ContainerInputs {
                session: &s,
                command: &[],
                init_binary: Path::new("/i"),
                lxcfs_binds: &[],
                labels: &labels,
                network: "net",
                oci_runtime: None,
                terminal: &terminal,
                cpuset: None,
                disk_label: None,
                disk_quota_mb: None,
                bound_files: &bound,
                image_volumes: &volumes,
                ipv6: true,
            },
            &SecurityProfile::Default,
        );
        let hc = host(&body);
        let binds = hc.binds.as_ref().expect("binds");
        for b in &bound {
            assert!(binds.contains(b), "{b} bound");
        }
        let tmpfs = hc.tmpfs.as_ref().expect("tmpfs");
        assert_eq!(tmpfs["/var/lib/docker"], "rw,exec,nosuid,nodev,size=256m");
        assert_eq!(
            tmpfs["/run/warren"], "rw,nosuid,nodev,noexec,size=64k,mode=0700",
            "an image volume cannot change init's socket dir"
        );
        assert!(!tmpfs.contains_key("/etc/hosts"));
    }
}
