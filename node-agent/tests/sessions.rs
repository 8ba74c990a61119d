//! End to end with real Docker and real QUIC: a relay-side listener, an
//! agent that dialed it, session containers running warren-init.
#![allow(clippy::unwrap_used, clippy::result_large_err)]
mod common;

use common::{Stack, WAIT, docker_or_skip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_tunnel::proto::StreamKind;
use warren_tunnel::server::OpenError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_echo_resize_and_exit_code() {
    if !docker_or_skip().await {
        return;
    }
    let stack = Stack::start("echo").await;
    let s = stack.session("warren/session:mini", 64).await;
    let mut t = stack.terminal(&s.id, "cols=100&rows=30").await;
    t.run("echo $((6*7))", "42").await;
    t.run("stty size", "30 100").await;
    t.resize(132, 50).await;
    t.run("stty size", "50 132").await;
    t.send("exit 3").await;
    assert_eq!(t.wait_exit().await, 3);

    // A client of another protocol version is refused with a reason naming
    // both versions (4426), before any shell starts.
    {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let st = stack.stream(&s.id, StreamKind::Terminal).await.unwrap();
        let url = format!("ws://{}.warren.localhost/_warren/terminal?v=2", s.id);
        let (mut ws, _) = tokio_tungstenite::client_async(url, st).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(
                    u16::from(f.code),
                    warren_proto::terminal::close::UNSUPPORTED_VERSION
                );
                assert!(
                    f.reason.contains("v2") && f.reason.contains("v1"),
                    "{}",
                    f.reason
                );
            }
            other => panic!("expected a version refusal, got {other:?}"),
        }
    }

    // A stream for a session this node does not have is refused by the agent.
    match stack.stream("nosuchsession", StreamKind::Terminal).await {
        Err(OpenError::Rejected { code, .. }) => assert_eq!(code, "session_not_found"),
        other => panic!("expected a rejection, got {:?}", other.map(|_| ())),
    }
    stack.agent().remove_session(&s.id).await.unwrap();
    assert!(stack.containers().is_empty(), "container not removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_from_inside() {
    if !docker_or_skip().await {
        return;
    }
    let stack = Stack::start("limits").await;
    let a = stack
        .agent()
        .create_session(&warren_agent::SessionSpec {
            id: format!("l{}", common::random_suffix()),
            image: Some("warren/session:mini".into()),
            memory_mb: Some(64),
            pids_limit: Some(48),
            ..Default::default()
        })
        .await
        .unwrap();
    let b = stack.session("warren/session:mini", 64).await;
    let mut t = stack.terminal(&a.id, "").await;

    // The memory limit, as the container's own cgroup shows it.
    t.run(
        "p=$(grep -E ':memory:' /proc/self/cgroup | cut -d: -f3); \
         echo limit=$(cat /sys/fs/cgroup/memory$p/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes)=",
        "limit=67108864=",
    )
    .await;
    // A memory hog is OOM-killed inside its session (137 = SIGKILL).
    t.run(
        "dd if=/dev/zero of=/dev/null bs=200M count=1; echo rc=$?=",
        "rc=137=",
    )
    .await;
    t.run("echo alive-$((2+3))", "alive-5").await;

    // A fork bomb stops at the pids limit; the shell survives it.
    t.send("for i in $(seq 1 100); do sleep 300 & done").await;
    t.expect("can't fork").await;
    t.run("kill -9 -1; echo cleaned-$((4*4))", "cleaned-16")
        .await;

    // The other session and the agent never noticed.
    let mut tb = stack.terminal(&b.id, "").await;
    tb.run("echo other-$((6*7))", "other-42").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_isolated_and_ports_reachable() {
    if !docker_or_skip().await {
        return;
    }
    let stack = Stack::start("net").await;
    let a = stack.session("warren/session:mini", 64).await;
    let b = stack.session("warren/session:mini", 64).await;
    let b_ip = b.ip.expect("session has an address");

    let mut tb = stack.terminal(&b.id, "").await;
    tb.run("httpd -p 8080 -h /www && echo httpd-$((1+1))", "httpd-2")
        .await;

    // The agent reaches B's port over a `port 8080` stream.
    let mut body = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match stack.stream(&b.id, StreamKind::Port(8080)).await {
            Ok(mut s) => {
                s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                s.read_to_string(&mut body).await.unwrap();
                break;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("port not ready yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("port stream failed: {e}"),
        }
    }
    assert!(
        body.contains("200 OK") && body.contains("warren mini session"),
        "{body}"
    );

    // A closed port is refused with a clear code.
    match stack.stream(&b.id, StreamKind::Port(9)).await {
        Err(OpenError::Rejected { code, message }) => {
            assert_eq!(code, "port_unreachable");
            assert!(message.contains("port 9"), "{message}");
        }
        other => panic!("expected a rejection, got {:?}", other.map(|_| ())),
    }

    // Session A cannot open a TCP connection to session B. (An HTTP probe
    // with nc: busybox's `wget -T` crashes, which read as "blocked" for
    // every target; the probe is checked on B's own server first.)
    let probe = |target: &str, n: u32| {
        let (host, port) = target.split_once(':').unwrap();
        format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc {host} {port} 2>/dev/null | grep -q '^HTTP/' && echo REACH-$(({n}+0)) || echo BLOCK-$(({n}+0))"
        )
    };
    let out = tb.run(&probe("127.0.0.1:8080", 9), "-9").await;
    assert!(out.contains("REACH-9"), "the probe works: {out}");
    let mut ta = stack.terminal(&a.id, "").await;
    let out = ta.run(&probe(&format!("{b_ip}:8080"), 1), "-1").await;
    assert!(out.contains("BLOCK-1") && !out.contains("REACH-1"), "{out}");
    // Nor anything outside its network: a server on another Docker network
    // (made by this test), which the host itself reaches, is out of reach.
    let outside = stack.outside_server().await;
    let out = ta.run(&probe(&outside, 2), "-2").await;
    assert!(out.contains("BLOCK-2") && !out.contains("REACH-2"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_adopts_sessions_and_shells_survive() {
    if !docker_or_skip().await {
        return;
    }
    let mut stack = Stack::start("restart").await;
    let s = stack.session("warren/session:mini", 64).await;
    let mut t = stack.terminal(&s.id, "").await;
    let term_id = t.terminal.unwrap();
    t.run("sleep 1000 & echo started-$((5*5))", "started-25")
        .await;
    drop(t);

    stack.stop_agent().await;
    stack.start_agent().await;

    // Adopted: known to the new agent, and still one container.
    assert!(
        stack.agent().session(&s.id).is_some(),
        "session not adopted"
    );
    assert_eq!(stack.containers().len(), 1, "container duplicated or lost");

    // The old shell is still there, with its output and its background job.
    let mut t = stack.terminal(&s.id, &format!("terminal={term_id}")).await;
    assert_eq!(t.terminal, Some(term_id));
    t.expect("started-25").await;
    t.run(
        "ps | grep -q '[s]leep 1000' && echo still-$((3+4))",
        "still-7",
    )
    .await;

    // And a new terminal works too.
    let mut t2 = stack.terminal(&s.id, "").await;
    assert_ne!(t2.terminal, Some(term_id));
    t2.run("echo fresh-$((8*8))", "fresh-64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dind_session_runs_an_inner_container() {
    if !docker_or_skip().await {
        return;
    }
    // On an engine with user-namespace remapping (what setup-host.sh sets
    // up) this is the isolated `dind` profile; elsewhere the host-root one.
    let stack = Stack::start_with("dind", true).await;
    let profile = stack.agent().runtime().security().name();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert_eq!(
            profile, "dind",
            "CI needs Docker with userns-remap (scripts/setup-host.sh) for isolated Docker-in-Docker"
        );
    }
    let s = stack.session("warren/session:dind", 1024).await;
    // Hand the inner daemon an image: saved on the host, copied in.
    let tar = std::env::temp_dir().join(format!("mini-{}.tar", s.id));
    let st = std::process::Command::new("docker")
        .args(["save", "-o", tar.to_str().unwrap(), "warren/session:mini"])
        .status()
        .unwrap();
    assert!(st.success());
    warren_testkit::copy_into(&s.container_id, &tar, "/tmp/mini.tar");
    let _ = std::fs::remove_file(&tar);

    let mut t = stack.terminal(&s.id, "").await;
    t.run(
        "for i in $(seq 1 90); do docker info >/dev/null 2>&1 && break; sleep 1; done; docker info --format 'inner={{.ServerVersion}}='",
        "inner=",
    )
    .await;
    t.send("docker load -i /tmp/mini.tar >/dev/null && docker run --rm -m 64m warren/session:mini sh -c 'echo ran-$((6*7))'")
        .await;
    t.expect_within("ran-42", WAIT * 2).await;
    if profile == "dind" {
        // The session's root is not the host's: its ids are remapped, and
        // what host root could do fails.
        let out = t
            .run(
                "echo map=$(head -1 /proc/self/uid_map | awk '{print $2}')=; echo $$ > /sys/fs/cgroup/memory/cgroup.procs 2>/dev/null && echo ESCAPED-$((1+1)) || echo stayed-$((1+1)); \
                 echo '|/x' > /proc/sys/kernel/core_pattern 2>/dev/null && echo CORE-$((1+2)) || echo nocore-$((1+2)); \
                 echo b > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ-$((1+3)) || echo nosysrq-$((1+3)); \
                 grep CapEff /proc/self/status; echo done-$((2+3))",
                "done-5",
            )
            .await;
        let host_uid: u64 = out
            .rsplit("map=")
            .next()
            .and_then(|v| v.split('=').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(host_uid > 0, "session root is host root: {out}");
        for bad in ["ESCAPED-2", "CORE-3", "SYSRQ-4"] {
            assert!(!out.contains(bad), "{bad}: {out}");
        }
    }
}

/// Reads until the socket closes; its close code.
async fn close_code<S>(t: &mut warren_testkit::Term<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, async {
        while let Some(m) = t.ws.next().await {
            match m {
                Ok(tokio_tungstenite::tungstenite::Message::Close(f)) => {
                    return f.map(|f| u16::from(f.code));
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the terminal never closed")
}

/// What the terminal endpoint says to input it cannot take: a message over
/// the limit (1009), a resume past the end of the output (a `rewound`
/// notice, then the terminal goes on), the session deleted under an open
/// terminal (4404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_edges_get_clear_answers() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    if !docker_or_skip().await {
        return;
    }
    let stack = Stack::start("edges").await;
    let s = stack.session("warren/session:mini", 64).await;

    let mut t = stack.terminal(&s.id, "").await;
    t.run("echo before-$((3*5))", "before-15").await;
    let id = t.terminal.unwrap();
    let big = vec![b'x'; warren_proto::terminal::MAX_MESSAGE + 1];
    let _ = t.ws.send(Message::Binary(big.into())).await;
    assert_eq!(
        close_code(&mut t).await,
        Some(warren_proto::terminal::close::MESSAGE_TOO_BIG)
    );

    let mut t = stack
        .terminal(&s.id, &format!("terminal={id}&offset=999999999"))
        .await;
    t.run("echo after-$((4*5))", "after-20").await;
    assert_eq!(t.rewound.len(), 1, "{:?}", t.rewound);
    assert_eq!(t.rewound[0].0, 999_999_999);
    assert!(t.gaps.is_empty(), "told as lost bytes: {:?}", t.gaps);

    stack.agent().remove_session(&s.id).await.unwrap();
    assert_eq!(
        close_code(&mut t).await,
        Some(warren_proto::terminal::close::SESSION_GONE)
    );
}

/// Two agents on one engine (two workers on a host, or parallel tests):
/// each sweeps only the snapshots it committed, never another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_sweep_never_touches_another_nodes_snapshots() {
    if !docker_or_skip().await {
        return;
    }
    let a = Stack::start("snapa").await;
    let b = Stack::start("snapb").await;
    let s = a.session("warren/session:mini", 64).await;
    let id: String = format!("{}0000000000000000", common::random_suffix())
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(16)
        .collect();
    let image = warren_proto::sandbox::snapshot_image(&id);
    a.agent()
        .runtime()
        .commit_snapshot(&s, &image, 1)
        .await
        .unwrap();
    let exists = || {
        !common::docker(&["image", "ls", "-q", &image])
            .trim()
            .is_empty()
    };
    assert!(exists(), "the snapshot was committed");

    // B's control lists nothing: B's sweep must leave A's snapshot alone.
    let removed = b.agent().runtime().prune_snapshots(&[], 1).await;
    assert!(!removed.iter().any(|r| r.contains(&id)), "{removed:?}");
    assert!(exists(), "another node's sweep removed the snapshot");

    // A's own sweep still removes what A's control no longer lists.
    a.agent().remove_session(&s.id).await.unwrap();
    let removed = a.agent().runtime().prune_snapshots(&[], 1).await;
    assert!(removed.iter().any(|r| r.contains(&id)), "{removed:?}");
    assert!(!exists(), "its own node's sweep left the snapshot");
}
