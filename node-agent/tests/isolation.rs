//! Hostile tenants, from inside real session containers (the isolated
//! `default` profile): what a session's root tries against another
//! session, the worker and Warren's own socket, and what it gets.
#![allow(clippy::unwrap_used, clippy::result_large_err)]
mod common;

use common::{Stack, WAIT, docker, docker_or_skip};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use warren_tunnel::proto::StreamKind;

/// Opens a terminal and returns what came first: `Ok(hello text)` or
/// `Err(close reason)`.
/// A `warren/session:mini` session with its own disk.
fn disk_spec(prefix: &str, memory_mb: u64, disk_mb: u64) -> warren_agent::SessionSpec {
    warren_agent::SessionSpec {
        id: format!("{prefix}{}", common::random_suffix()),
        image: Some("warren/session:mini".into()),
        memory_mb: Some(memory_mb),
        disk_mb: Some(disk_mb),
        ..Default::default()
    }
}

/// Whether the stack's sessions get loop disks; CI must have them.
fn loop_disks_or_skip(stack: &Stack) -> bool {
    if stack.agent().runtime().disk_backend() == "loop" {
        return true;
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "CI expects loop disks (overlay2 on ext4)"
    );
    eprintln!("SKIPPED: session disks are not loop disks here");
    false
}

async fn try_terminal(stack: &Stack, session: &str) -> Result<String, String> {
    let s = stack.stream(session, StreamKind::Terminal).await.unwrap();
    let url = format!("ws://{session}.warren.localhost/_warren/terminal");
    let (mut ws, _) = tokio_tungstenite::client_async(url, s).await.unwrap();
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no answer from the terminal endpoint");
    match first {
        Some(Ok(Message::Text(t))) => Ok(t.to_string()),
        Some(Ok(Message::Close(Some(c)))) => Err(c.reason.to_string()),
        other => Err(format!("{other:?}")),
    }
}

/// The socket swap (security review C2): session A replaces init's socket
/// with a symlink to session B's (by its host path), or listens there
/// itself. A new terminal "to A" is an error, never B's shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_socket_swap_never_reaches_another_session() {
    if !docker_or_skip().await {
        return;
    }
    let stack = Stack::start("swap").await;
    let a = stack.session("warren/session:mini", 64).await;
    let b = stack.session("warren/session:mini", 64).await;
    let mut tb = stack.terminal(&b.id, "").await;
    tb.run("echo victim-secret > /tmp/mark; echo ok-$((1+1))", "ok-2")
        .await;

    let mut ta = stack.terminal(&a.id, "").await;
    // Nothing of the host is writable here: /run/warren is the session's own tmpfs.
    let out = ta
        .run(
            "grep ' /run/warren ' /proc/self/mountinfo | grep -c tmpfs; echo m-$((3+3))",
            "m-6",
        )
        .await;
    assert!(out.contains("\n1"), "/run/warren is not a tmpfs: {out}");

    // 1. A symlink to B's socket through the host's /proc (what an agent
    //    following links in the host's namespace would reach).
    let b_path = format!("/proc/{}/root/run/warren/init.sock", b.init.init_pid);
    ta.run(
        &format!(
            "mv /run/warren/init.sock /run/warren/real.sock && ln -s {b_path} /run/warren/init.sock && echo swapped-$((2*5))"
        ),
        "swapped-10",
    )
    .await;
    let r = try_terminal(&stack, &a.id).await;
    let reason = r.expect_err("a terminal opened through a planted symlink");
    assert!(reason.contains("symlinks are not followed"), "{reason}");

    // 2. A symlink inside the session, to its own real socket: refused too
    //    (no symlink is ever followed).
    ta.run(
        "ln -sf /run/warren/real.sock /run/warren/init.sock && echo relinked-$((3*5))",
        "relinked-15",
    )
    .await;
    let reason = try_terminal(&stack, &a.id).await.unwrap_err();
    assert!(reason.contains("symlinks are not followed"), "{reason}");

    // 3. A listener of the tenant's own at the path (a second warren-init,
    //    not PID 1): the agent checks who listens and refuses it.
    ta.run(
        "rm -f /run/warren/init.sock; (/.warren/init --socket /run/warren/init.sock >/dev/null 2>&1 &); \
         for i in $(seq 1 50); do [ -S /run/warren/init.sock ] && break; sleep 0.1; done; echo fake-$((4*5))",
        "fake-20",
    )
    .await;
    let reason = try_terminal(&stack, &a.id).await.unwrap_err();
    assert!(reason.contains("is not the session's init"), "{reason}");

    // 4. Put the real socket back: A's own terminal works again, and it is A's.
    ta.run(
        "pkill -f 'init --socket' ; mv -f /run/warren/real.sock /run/warren/init.sock && echo restored-$((5*5))",
        "restored-25",
    )
    .await;
    let mut again = stack.terminal(&a.id, "").await;
    let out = again
        .run("cat /tmp/mark 2>/dev/null || echo no-mark-$((6*6))", "-36")
        .await;
    assert!(!out.contains("victim-secret"), "{out}");
    // B was never touched.
    tb.run("cat /tmp/mark", "victim-secret").await;
}

/// Root in a session has no host-namespace power: no NET_RAW, SYS_ADMIN or
/// SYS_MODULE; the cgroup tree is its own (private namespace) and read-only,
/// so it can neither leave its limits nor see its neighbours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_capabilities_and_no_cgroup_escape() {
    if !docker_or_skip().await {
        return;
    }
    // The isolated profile without Docker inside (the dind profile's own
    // checks are in sessions.rs).
    let stack = Stack::start_mode("caps", false, warren_config::SecurityMode::Default).await;
    assert_eq!(stack.agent().runtime().security().name(), "default");
    let a = stack.session("warren/session:mini", 64).await;
    let b = stack.session("warren/session:mini", 64).await;
    let mut t = stack.terminal(&a.id, "").await;

    let out = t
        .run(
            "echo cap=$(grep CapEff /proc/self/status | cut -f2)=$((40+2))",
            "=42",
        )
        .await;
    // The last `cap=` is the output (the first is the echoed command).
    let hex = out
        .rsplit("cap=")
        .next()
        .and_then(|s| s.split('=').next())
        .unwrap()
        .trim()
        .to_string();
    let caps = u64::from_str_radix(&hex, 16).unwrap();
    for (bit, name) in [
        (13, "NET_RAW"),
        (21, "SYS_ADMIN"),
        (16, "SYS_MODULE"),
        (17, "SYS_RAWIO"),
        (12, "NET_ADMIN"),
        (25, "SYS_TIME"),
    ] {
        assert_eq!(caps & (1 << bit), 0, "session root has CAP_{name}: {hex}");
    }

    // Moving itself into the host's root memory cgroup fails.
    let out = t
        .run(
            "echo $$ > /sys/fs/cgroup/memory/cgroup.procs 2>/dev/null && echo ESCAPED-$((1+1)) || echo stayed-$((1+1))",
            "-2",
        )
        .await;
    assert!(
        out.contains("stayed-2") && !out.contains("ESCAPED-2"),
        "{out}"
    );
    // Its cgroup paths are its own root: no container ids, no siblings.
    let out = t
        .run(
            "cat /proc/self/cgroup; ls /sys/fs/cgroup/memory/ | grep -c -E 'docker|[0-9a-f]{64}'; echo cg-$((7+7))",
            "cg-14",
        )
        .await;
    for id in [&a.container_id, &b.container_id] {
        assert!(!out.contains(&id[..12]), "container ids visible: {out}");
    }
    assert!(
        !out.contains("/docker/"),
        "host cgroup paths visible: {out}"
    );
    // Kernel knobs and raw devices stay out of reach.
    let out = t
        .run(
            "echo '|/tmp/x' > /proc/sys/kernel/core_pattern 2>/dev/null && echo CORE-$((2+1)) || echo nocore-$((2+1)); \
             mknod /tmp/sda b 8 0 2>/dev/null && echo MKNOD-$((2+2)) || echo nomknod-$((2+2))",
            "-4",
        )
        .await;
    assert!(out.contains("nocore-3") && !out.contains("CORE-3"), "{out}");
    // mknod itself may be allowed (MKNOD is in Docker's set); opening a block
    // device is not (the devices cgroup).
    let out = t
        .run(
            "head -c 1 /tmp/sda >/dev/null 2>&1 && echo READ-$((3+2)) || echo noread-$((3+2))",
            "-5",
        )
        .await;
    assert!(
        out.contains("noread-5") && !out.contains("READ-5\r"),
        "{out}"
    );
}

/// Sessions reach no address on the worker (gateway included), no metadata
/// address, and cannot send raw frames (no ARP spoofing on the bridge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_services_metadata_or_raw_packets() {
    if !docker_or_skip().await {
        return;
    }
    let stack = Stack::start("hostnet").await;
    // A service on the worker listening on every address.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let a = stack.session("warren/session:mini", 64).await;
    let b = stack.session("warren/session:mini", 64).await;
    let gw = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            &stack.network(),
        ])
        .output()
        .unwrap();
    let gw = String::from_utf8_lossy(&gw.stdout).trim().to_string();
    assert!(!gw.is_empty(), "no gateway on the sessions network");
    // The host itself reaches its service on the gateway address.
    tokio::net::TcpStream::connect((gw.as_str(), port))
        .await
        .expect("the host reaches its own service");
    // Wait until the server counted that connection.
    let deadline = tokio::time::Instant::now() + WAIT;
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "accept never ran");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let before = accepted.load(std::sync::atomic::Ordering::SeqCst);

    let mut t = stack.terminal(&a.id, "").await;
    for (i, target) in [format!("{gw}:{port}"), "169.254.169.254:80".to_string()]
        .iter()
        .enumerate()
    {
        let out = t
            .run(
                &format!(
                    "nc -w 3 {} </dev/null && echo REACH-{i}$((0)) || echo block-{i}$((0))",
                    target.replace(':', " ")
                ),
                &format!("-{i}0"),
            )
            .await;
        assert!(
            out.contains(&format!("block-{i}0")) && !out.contains(&format!("REACH-{i}0")),
            "{target}: {out}"
        );
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "a session's connection reached the host service"
    );

    // No raw sockets: gratuitous ARP claiming B's address is refused.
    let b_ip = b.ip.unwrap();
    let out = t
        .run(
            &format!("arping -U -c 1 -I eth0 -s {b_ip} {b_ip} 2>&1; echo rc=$?=$((8+1))"),
            "=9",
        )
        .await;
    assert!(
        !out.contains("rc=0=9") && out.to_lowercase().contains("not permitted"),
        "{out}"
    );
}

/// A session printing flat out to PID 1's stdout (the container log)
/// leaves a bounded log on the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_log_is_bounded() {
    if !docker_or_skip().await {
        return;
    }
    let stack = Stack::start("logs").await;
    // PID 1's own descriptors (the engine's log pipe among them) are closed
    // to the session: init is not dumpable.
    let a = stack.session("warren/session:mini", 64).await;
    let mut t = stack.terminal(&a.id, "").await;
    let out = t
        .run(
            "echo x > /proc/1/fd/1 || echo refused-$((6*7)); cat /proc/1/environ >/dev/null 2>&1 || echo hidden-$((6*7))",
            "hidden-42",
        )
        .await;
    assert!(out.contains("refused-42"), "{out}");

    // The image's own command writes through init, which drains it at once
    // and passes on a bounded rate: 8 MB in, the log keeps at most the
    // burst and a notice, and the flood does not stall.
    let image = warren_agent::testing::long_command_image();
    let b = stack.session(&image, 64).await;
    let mut t = stack.terminal(&b.id, "").await;
    t.run(
        "for p in /proc/[0-9]*; do [ \"$(cat $p/comm)\" = sleep ] && s=$p; done; \
         head -c 8000000 /dev/zero | tr '\\0' x > $s/fd/1; echo flooded-$((9*9))",
        "flooded-81",
    )
    .await;
    let path = docker(&["inspect", "-f", "{{.LogPath}}", &b.container_id]);
    let deadline = std::time::Instant::now() + WAIT;
    let log = loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains("warren-init: dropped") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        log.contains("warren-init: dropped"),
        "no drop notice in the log"
    );
    let xs = log.bytes().filter(|&b| b == b'x').count();
    assert!(
        xs > 0 && xs <= (warren_init::logs::LOG_BURST + 4 * warren_init::logs::LOG_RATE) as usize,
        "the log took {xs} bytes of the flood"
    );
}

/// Disk limits: where the engine enforces them, a disk filler stops at the
/// limit with ENOSPC and the session and its neighbour go on; where it
/// cannot (overlay2 without XFS project quotas, as on these build machines),
/// a session that asks for a limit is refused, never silently unlimited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_limits_are_enforced_or_refused() {
    if !docker_or_skip().await {
        return;
    }
    let stack = Stack::start("disk").await;
    let spec = |disk_mb| disk_spec("d", 64, disk_mb);
    // Out of range: refused whatever the engine.
    let bad = stack.agent().create_session(&spec(1)).await;
    assert!(
        matches!(&bad, Err(e) if e.to_string().contains("disk_mb must be between")),
        "{bad:?}"
    );
    if !stack.agent().runtime().disk_limits() {
        // These machines can always limit disks (loop disks need root, loop
        // devices and e2fsprogs, all of which setup-host.sh provides).
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI needs a worker that limits session disks"
        );
        let r = stack.agent().create_session(&spec(100)).await;
        assert!(
            matches!(&r, Err(e) if e.to_string().contains("cannot limit disk")),
            "{r:?}"
        );
        assert!(
            stack.containers().is_empty(),
            "a refused session left a container"
        );
        eprintln!("NOTE: this engine cannot limit disks; the refusal was checked, not ENOSPC");
        return;
    }
    let a = stack.agent().create_session(&spec(100)).await.unwrap();
    let b = stack.session("warren/session:mini", 64).await;
    let host_free = warren_agent::testing::worker_free_mb;
    let before = host_free();
    let mut t = stack.terminal(&a.id, "").await;
    // The session sees its own size.
    let df = t.run("df -m / | tail -1; echo df-$((5*5))", "df-25").await;
    let size: u64 = df
        .lines()
        .find(|l| l.starts_with("overlay"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overlay line in {df}"));
    assert!((60..=100).contains(&size), "df shows {size} MB: {df}");
    let out = t
        .run(
            "dd if=/dev/zero of=/fill bs=1M count=400 2>&1 | head -2; echo filled-$((6*7))",
            "filled-42",
        )
        .await;
    assert!(out.contains("No space left"), "{out}");
    // The worker's disk paid for at most the session's limit.
    let used = before - host_free();
    assert!(used < 150, "the worker lost {used} MB to a 100 MB session");
    // What is left after the big writes is refused too, the session goes on.
    let out = t
        .run(
            "dd if=/dev/zero of=/fill2 bs=1k count=10000 2>&1 | head -1; echo small-$((7*7))",
            "small-49",
        )
        .await;
    assert!(out.contains("No space left"), "{out}");
    t.run(
        "rm /fill /fill2; echo ok > /after; cat /after; echo freed-$((8*8))",
        "freed-64",
    )
    .await;
    let mut tb = stack.terminal(&b.id, "").await;
    tb.run("echo neighbour-$((9*9))", "neighbour-81").await;
    drop(t);

    // Removing the session frees its disk: nothing stays mounted, no image
    // file is left in the agent's data dir.
    let disks = stack.data_dir().join("disks");
    assert!(disks.join(format!("{}.img", a.id)).is_file());
    stack.agent().remove_session(&a.id).await.unwrap();
    assert!(!disks.join(format!("{}.img", a.id)).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&a.container_id),
        "the session's layer is still mounted"
    );
}

/// After a reboot the loop disk is no longer mounted: the agent mounts it
/// again before restarting the container, so the session finds its files
/// and keeps its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_disk_comes_back_after_a_reboot() {
    if !docker_or_skip().await {
        return;
    }
    let mut stack = Stack::start("diskboot").await;
    if !loop_disks_or_skip(&stack) {
        return;
    }
    let s = stack
        .agent()
        .create_session(&disk_spec("r", 64, 80))
        .await
        .unwrap();
    let mut t = stack.terminal(&s.id, "").await;
    t.run("echo kept > /root/mark; sync; echo m-$((4*4))", "m-16")
        .await;
    drop(t);
    // "Reboot": the agent is down, the container stops, the mount is gone.
    stack.stop_agent().await;
    docker(&["stop", "-t", "1", &s.container_id]);
    let layer = docker(&[
        "inspect",
        "-f",
        "{{.GraphDriver.Data.UpperDir}}",
        &s.container_id,
    ]);
    let layer = std::path::Path::new(&layer).parent().unwrap().to_path_buf();
    let o = std::process::Command::new("umount")
        .arg(&layer)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    stack.start_agent().await;
    let mut t = stack.terminal(&s.id, "").await;
    let out = t
        .run("cat /root/mark; df -m / | tail -1; echo b-$((5*9))", "b-45")
        .await;
    assert!(out.contains("kept"), "the session's files are gone: {out}");
    let size: u64 = out
        .lines()
        .find(|l| l.starts_with("overlay"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overlay line in {out}"));
    assert!(size <= 80, "the limit is gone after the reboot: {out}");
}

/// `free`, /proc/meminfo, /proc/cpuinfo and `nproc` inside a session show
/// its own limits, not the worker's (lxcfs, started by setup-host.sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_view_is_the_sessions_own() {
    if !docker_or_skip().await {
        return;
    }
    if !std::path::Path::new("/var/lib/lxcfs/proc/meminfo").is_file() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI needs lxcfs running (scripts/setup-host.sh)"
        );
        eprintln!("SKIPPED: lxcfs is not running here");
        return;
    }
    let stack = Stack::start("view").await;
    let s = stack
        .agent()
        .create_session(&warren_agent::SessionSpec {
            id: format!("v{}", common::random_suffix()),
            image: Some("warren/session:dind".into()),
            memory_mb: Some(300),
            cpus: Some(1.0),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut t = stack.terminal(&s.id, "").await;
    let out = t
        .run(
            "echo mem=$(awk '/MemTotal/ {print $2}' /proc/meminfo)= cpus=$(grep -c ^processor /proc/cpuinfo)= nproc=$(nproc)= free=$(free -m | awk '/Mem:/ {print $2}')= done-$((1+1))",
            "done-2",
        )
        .await;
    let field = |name: &str| -> u64 {
        out.rsplit(&format!("{name}="))
            .next()
            .and_then(|v| v.split('=').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(u64::MAX)
    };
    assert_eq!(field("mem"), 300 * 1024, "{out}");
    assert_eq!(field("cpus"), 1, "{out}");
    assert_eq!(field("nproc"), 1, "{out}");
    assert!((299..=300).contains(&field("free")), "{out}");
}

/// A CPU quota alone lets a 1-CPU session run on every core at once; each
/// session is also pinned to cores of its own choosing (the least loaded),
/// so two 1-CPU sessions on a multi-core worker never share a core, and a
/// busy loop in one runs only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_sessions_stay_on_their_own_cores() {
    if !docker_or_skip().await {
        return;
    }
    let cores = warren_agent::cpus::allowed();
    assert!(!cores.is_empty());
    if cores.len() < 2 {
        eprintln!("SKIPPED: one core here, nothing to pin apart");
        return;
    }
    let stack = Stack::start("pins").await;
    let spec = |cpus| warren_agent::SessionSpec {
        id: format!("p{}", common::random_suffix()),
        image: Some("warren/session:mini".into()),
        memory_mb: Some(64),
        cpus: Some(cpus),
        ..Default::default()
    };
    let a = stack.agent().create_session(&spec(1.0)).await.unwrap();
    let b = stack.agent().create_session(&spec(1.0)).await.unwrap();
    let cpuset = |cid: &str| docker(&["inspect", "-f", "{{.HostConfig.CpusetCpus}}", cid]);
    let (pa, pb) = (cpuset(&a.container_id), cpuset(&b.container_id));
    assert!(
        !pa.is_empty() && !pb.is_empty(),
        "not pinned: {pa:?} {pb:?}"
    );
    assert_ne!(pa, pb, "two 1-CPU sessions share a core");
    // From inside: the session sees one core, and its busy loops run there.
    let mut t = stack.terminal(&a.id, "").await;
    let out = t
        .run(
            "for i in 1 2 3 4; do (while :; do :; done) & done; \
             sleep 1; echo allowed=$(grep Cpus_allowed_list /proc/self/status | cut -f2)= nproc=$(nproc)= ok-$((3*3))",
            "ok-9",
        )
        .await;
    assert!(out.contains(&format!("allowed={pa}=")), "{out}");
    assert!(out.contains("nproc=1="), "{out}");
    // A session as wide as the worker is not pinned.
    let c = stack
        .agent()
        .create_session(&spec(cores.len() as f64))
        .await
        .unwrap();
    assert_eq!(cpuset(&c.container_id), "");
    // Removing a session frees its core for the next one.
    stack.agent().remove_session(&a.id).await.unwrap();
    let d = stack.agent().create_session(&spec(1.0)).await.unwrap();
    assert_eq!(cpuset(&d.container_id), pa);
}

/// A session's disk bandwidth and write rate are limited whichever way it
/// writes: buffered (the kernel's flusher writes for it, charged to the
/// root cgroup), synced and direct (its own I/O, charged to its cgroup).
/// The limit is dropped from the loop device when the session goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_bandwidth_is_limited() {
    if !docker_or_skip().await {
        return;
    }
    const MBPS: u64 = 4;
    const IOPS: u64 = 50;
    let stack = Stack::start_configured("diskbw", |d| {
        d.disk_write_mbps = MBPS;
        d.disk_write_iops = IOPS;
    })
    .await;
    // The limits live on loop devices (XFS quotas have none).
    if !loop_disks_or_skip(&stack) {
        return;
    }
    let s = stack
        .agent()
        .create_session(&disk_spec("w", 128, 256))
        .await
        .unwrap();
    // The rule, in the session's blkio cgroup and in the root one.
    let root = std::path::Path::new("/sys/fs/cgroup/blkio");
    let rule_value = format!(" {}", MBPS * 1024 * 1024);
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", s.init.init_pid)).unwrap();
    let rel = cgroup
        .lines()
        .find_map(|l| l.split_once(":blkio:/").map(|(_, p)| p.to_owned()))
        .unwrap_or_else(|| panic!("no blkio cgroup in {cgroup}"));
    let own =
        std::fs::read_to_string(root.join(&rel).join("blkio.throttle.write_bps_device")).unwrap();
    let rule = own
        .lines()
        .find(|l| l.ends_with(&rule_value))
        .unwrap_or_else(|| panic!("no {MBPS} MiB/s rule in the session's cgroup: {own:?}"))
        .to_owned();
    assert!(rule.starts_with("7:"), "not a loop device: {rule}");
    let root_rules =
        || std::fs::read_to_string(root.join("blkio.throttle.write_bps_device")).unwrap();
    assert!(
        root_rules().lines().any(|l| l == rule),
        "{rule} is not in the root cgroup: {}",
        root_rules()
    );
    // And it holds. The kernel lets no more than MBPS through per second, so
    // these lower bounds cannot fail on a slow machine (only a broken limit
    // makes the writes faster).
    let mut t = stack.terminal(&s.id, "").await;
    // (what, dd arguments, seconds the limits make it last at least)
    for (what, args, secs) in [
        ("buffered", "bs=1M count=24 conv=fsync", 24 / MBPS),
        ("direct", "bs=1M count=12 oflag=direct", 12 / MBPS),
        ("small direct", "bs=4k count=150 oflag=direct", 150 / IOPS),
    ] {
        let started = std::time::Instant::now();
        let out = t
            .run(
                &format!("dd if=/dev/zero of=/w {args} 2>&1 | tail -1; rm /w; echo wrote-$((4*4))"),
                "wrote-16",
            )
            .await;
        let took = started.elapsed();
        let floor = std::time::Duration::from_millis(secs * 1000 * 2 / 3);
        assert!(
            took >= floor,
            "{what} ({args}) took {took:?} at {MBPS} MiB/s, {IOPS} writes/s (at least {floor:?}): {out}"
        );
    }
    drop(t);
    stack.agent().remove_session(&s.id).await.unwrap();
    assert!(
        !root_rules().lines().any(|l| l == rule),
        "{rule} stayed on the loop device: {}",
        root_rules()
    );
}
