//! Egress per session, tried from inside sessions on the real engine: a
//! server on a Docker network of the test's own is reached by the session
//! that lists that network's CIDR, and by no other (no policy, another
//! CIDR, a wider CIDR containing it, `internet`); the worker itself,
//! Warren's networks and other sessions stay out of reach whatever is
//! listed; the rules come back after an agent restart that lost them, and
//! the agent's rules and networks are gone once the sessions are.
#![allow(clippy::unwrap_used)]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Stack, Term, WAIT, docker, docker_or_skip, random_suffix};
use warren_agent::SessionInfo;
use warren_proto::egress::Egress;

async fn session_with(stack: &Stack, egress: Egress) -> SessionInfo {
    stack
        .agent()
        .create_session(&warren_agent::SessionSpec {
            id: format!("e{}", random_suffix()),
            image: Some("warren/session:mini".into()),
            memory_mb: Some(64),
            egress,
            ..Default::default()
        })
        .await
        .unwrap()
}

fn cidrs(list: &[&str]) -> Egress {
    Egress::Cidrs(list.iter().map(|s| s.to_string()).collect())
}

/// Whether a session's shell gets an HTTP answer from `target`
/// (`ip:port`; each call with its own `n`, so markers never repeat in one
/// terminal). `nc`, not `wget -T`: busybox's wget crashes with `-T`, which
/// would read as "blocked".
async fn reaches(t: &mut Term, target: &str, n: u32) -> bool {
    let (host, port) = target.split_once(':').unwrap();
    let out = t
        .run(
            &format!(
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc {host} {port} 2>/dev/null | grep -q '^HTTP/' && echo REACH-$(({n}+1000)) || echo BLOCK-$(({n}+1000))"
            ),
            &format!("-{}", n + 1000),
        )
        .await;
    let (reach, block) = (
        out.contains(&format!("REACH-{}", n + 1000)),
        out.contains(&format!("BLOCK-{}", n + 1000)),
    );
    assert!(reach != block, "{target}: {out}");
    reach
}

/// The Linux bridge of a session's own network.
fn bridge_of(stack: &Stack, session: &str) -> String {
    docker(&[
        "network",
        "inspect",
        "-f",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
        &warren_agent::sandbox::runtime::egress_network_name(stack.node(), session),
    ])
}

/// Removes rules left for bridges that are gone, after the stack (and
/// its networks) when declared before it: a failed test leaves none.
struct SweepRules;

impl Drop for SweepRules {
    fn drop(&mut self) {
        warren_agent::sandbox::egress::sweep_stale();
    }
}

fn iptables_save() -> String {
    let out = std::process::Command::new("iptables-save")
        .output()
        .unwrap();
    assert!(out.status.success(), "iptables-save failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTP answer to every connection on every address of the worker;
/// counts the connections.
async fn host_service() -> (u16, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhost\n")
                .await;
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_reach_what_they_list_and_nothing_else() {
    if !docker_or_skip().await {
        return;
    }
    let _sweep = SweepRules;
    let mut stack = Stack::start("egress").await;
    // A server on a Docker network of this test's own (labelled, removed
    // with the stack), which the host reaches.
    let server = stack.outside_server().await;
    let out_net = format!("warren-test-out-{}", stack.run);
    let subnet = docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        &out_net,
    ]);
    let out_gw = docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        &out_net,
    ]);
    // A service on the worker itself, on every address.
    let (port, accepted) = host_service().await;
    tokio::net::TcpStream::connect((out_gw.as_str(), port))
        .await
        .expect("the host reaches its own service");
    warren_testkit::until(
        "the host service's first connection",
        WAIT,
        Duration::from_millis(10),
        || async { accepted.load(Ordering::SeqCst) == 1 },
    )
    .await;

    let none = stack.session("warren/session:mini", 64).await;
    let listed = session_with(&stack, cidrs(&[&subnet])).await;
    let other = session_with(&stack, cidrs(&["10.99.0.0/16"])).await;
    let wide = session_with(&stack, cidrs(&["0.0.0.0/0"])).await;
    let internet = session_with(&stack, Egress::Internet).await;
    let egress_sessions = [&listed, &other, &wide, &internet];

    // Only the session that lists the server's network reaches it.
    let mut t = stack.terminal(&none.id, "").await;
    assert!(!reaches(&mut t, &server, 1).await, "no policy: no egress");
    let mut tl = stack.terminal(&listed.id, "").await;
    assert!(reaches(&mut tl, &server, 2).await, "{subnet} is listed");
    let mut to = stack.terminal(&other.id, "").await;
    assert!(!reaches(&mut to, &server, 3).await, "another CIDR");
    let mut tw = stack.terminal(&wide.id, "").await;
    assert!(
        !reaches(&mut tw, &server, 4).await,
        "0.0.0.0/0 contains the bridge's subnet but does not name it"
    );
    let mut ti = stack.terminal(&internet.id, "").await;
    assert!(
        !reaches(&mut ti, &server, 5).await,
        "internet is public addresses, not the worker's private networks"
    );

    // Whatever is listed (0.0.0.0/0, or a network the worker has an
    // address on), the worker itself, the sessions network and other
    // sessions stay out of reach; the host reaches those sessions' servers.
    let gateway = |s: &SessionInfo| {
        let ip = s.ip.unwrap().to_string();
        let mut o: Vec<&str> = ip.split('.').collect();
        o[3] = "1";
        o.join(".")
    };
    for (i, (s, term)) in [(&none, &mut t), (&other, &mut to)].into_iter().enumerate() {
        term.run(
            &format!("httpd -p 8080 -h /etc && echo serving-$(({i}+500))"),
            &format!("serving-{}", i + 500),
        )
        .await;
        let addr = format!("{}:8080", s.ip.unwrap());
        warren_testkit::until(
            "a session's server, from the host",
            WAIT,
            Duration::from_millis(50),
            || async { tokio::net::TcpStream::connect(&addr).await.is_ok() },
        )
        .await;
    }
    for (n, (term, s)) in [(&mut tl, &listed), (&mut tw, &wide)]
        .into_iter()
        .enumerate()
    {
        for (i, target) in [
            format!("{out_gw}:{port}"),
            format!("{}:{port}", gateway(s)),
            format!("{}:8080", none.ip.unwrap()),
            format!("{}:8080", other.ip.unwrap()),
        ]
        .iter()
        .enumerate()
        {
            assert!(
                !reaches(term, target, 10 + (n * 10 + i) as u32).await,
                "{target} reached from {}",
                s.id
            );
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a session reached the worker's service"
    );

    // The agent's rules: a chain per session bridge, jumped from
    // DOCKER-USER, and the worker's INPUT closed to the bridge.
    let bridges: Vec<String> = egress_sessions
        .iter()
        .map(|s| bridge_of(&stack, &s.id))
        .collect();
    let rules = iptables_save();
    for b in &bridges {
        assert!(b.starts_with("wrn-"), "{b}");
        assert!(rules.contains(&format!(":WARREN-{b} ")), "chain of {b}");
        assert!(
            rules.contains(&format!("-A DOCKER-USER -i {b} -j WARREN-{b}")),
            "{rules}"
        );
        assert!(rules.contains(&format!("-A INPUT -i {b} ")), "{rules}");
    }

    // A restart that finds the rules gone (a reboot, a flush) sets them up
    // again before anything else: the listed session still reaches its
    // network and the wider one still does not.
    drop((t, tl, to, tw, ti));
    stack.stop_agent().await;
    for b in &bridges {
        warren_agent::sandbox::egress::remove(b);
    }
    assert!(!iptables_save().contains(&format!("WARREN-{}", bridges[0])));
    stack.start_agent().await;
    let rules = iptables_save();
    for b in &bridges {
        assert!(rules.contains(&format!(":WARREN-{b} ")), "{b} again");
    }
    let mut tl = stack.terminal(&listed.id, "").await;
    assert!(reaches(&mut tl, &server, 20).await, "listed, after restart");
    let mut tw = stack.terminal(&wide.id, "").await;
    assert!(
        !reaches(&mut tw, &server, 21).await,
        "0.0.0.0/0, after restart"
    );
    drop((tl, tw));

    // Removed sessions leave no rule and no network behind.
    for s in egress_sessions.iter().chain([&&none]) {
        stack.agent().remove_session(&s.id).await.unwrap();
    }
    let rules = iptables_save();
    for b in &bridges {
        assert!(!rules.contains(b.as_str()), "rules of {b} left:\n{rules}");
    }
    let nets = docker(&[
        "network",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &format!("label=warren.node={}", stack.node()),
    ]);
    assert!(
        !nets.lines().any(|n| n.ends_with("-egress")),
        "session networks left behind: {nets}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_left_without_its_session_is_swept_on_start() {
    if !docker_or_skip().await {
        return;
    }
    let _sweep = SweepRules;
    let mut stack = Stack::start("egress-sweep").await;
    let s = session_with(&stack, cidrs(&["10.99.0.0/16"])).await;
    let bridge = bridge_of(&stack, &s.id);
    // The container goes behind the agent's back (a crash between the
    // container's removal and its network's).
    stack.stop_agent().await;
    docker(&["rm", "-f", &s.container_id]);
    assert!(iptables_save().contains(&format!(":WARREN-{bridge} ")));
    stack.start_agent().await;
    assert!(stack.agent().session(&s.id).is_none());
    // Its bridge is gone with its network, and so are its rules (the
    // bridge's name may be another session's by now: names follow subnets).
    let name = format!(":WARREN-{bridge} ");
    assert!(
        !iptables_save().contains(&name)
            || std::path::Path::new("/sys/class/net")
                .join(&bridge)
                .exists(),
        "rules of a session that is gone"
    );
    for b in warren_agent::sandbox::egress::chained_bridges() {
        assert!(
            std::path::Path::new("/sys/class/net").join(&b).exists(),
            "rules left for {b}, which is gone"
        );
    }
    let nets = docker(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        !nets.contains(&warren_agent::sandbox::runtime::egress_network_name(
            stack.node(),
            &s.id
        )),
        "{nets}"
    );
}
