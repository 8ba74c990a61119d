//! The load-test harness, briefly, against a whole stack in this process:
//! each scenario's counts add up and nothing is left behind; broken
//! targets end the run with a clear message and a partial report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren_loadtest::{Report, Target};
use warren_testkit::{TestRun, until_ok};

#[allow(dead_code)] // the stack and argument helpers only
mod common;
use common::loadtest_args as args;

fn relay_target(st: &warren::stack::Stack, relay: std::net::SocketAddr) -> Target {
    Target {
        control_url: st.control_url.clone(),
        api_key: st.admin_key.clone(),
        relay: warren_loadtest::conn::RelayTarget {
            addr: relay,
            domain: "warren.localhost".into(),
            tls: None,
        },
        ssh: st.ssh,
        control_ca: None,
    }
}

async fn no_session_containers(run: &TestRun) {
    until_ok(
        "no session containers",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let left = warren_testkit::labelled_containers(&run.label);
            match left.is_empty() {
                true => Ok(()),
                false => Err(format!("containers left behind: {left:?}")),
            }
        },
    )
    .await
}

fn check_typing(r: &Report, terminals: u64) {
    let c = &r.counts;
    assert_eq!(c.terminals_opened, terminals, "{r:#?}");
    assert_eq!(c.terminals_failed, 0, "{r:#?}");
    assert!(c.keystrokes_echoed > 0, "{r:#?}");
    // Each terminal has at most one keystroke in flight when the run stops.
    assert!(c.keystrokes_sent >= c.keystrokes_echoed);
    assert!(
        c.keystrokes_sent - c.keystrokes_echoed <= terminals,
        "{r:#?}"
    );
    assert!(r.latency.count > 0 && r.latency.p50_us > 0, "{r:#?}");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_adds_up_and_cleans_up() {
    let Some((mut run, st)) = common::stack("lt", "warren/session:mini", 64).await else {
        return;
    };
    run.also_remove("warren.loadtest=baseline", &[]);
    let dir = run.dir.clone();
    let target = relay_target(&st, st.http.unwrap());
    let brief = "--sessions 2 --terminals 2 --rate 5 --duration 2s --ramp-up 1s --warmup 1";

    // terminals, through the relay and straight into docker exec.
    let out = dir.join("terminals");
    let a = args(&format!("terminals {brief}"), &out);
    let r = warren_loadtest::run(&a, &target, CancellationToken::new())
        .await
        .unwrap();
    check_typing(&r, 4);
    assert_eq!(
        (r.counts.sessions_created, r.counts.sessions_deleted),
        (2, 2)
    );
    for f in [
        "report.json",
        "report.md",
        "latency-over-time.svg",
        "latency-distribution.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["counts"]["terminals_opened"], 4);
    no_session_containers(&run).await;

    let a = args(
        &format!("terminals {brief} --baseline direct"),
        &dir.join("direct"),
    );
    let r = warren_loadtest::run(&a, &target, CancellationToken::new())
        .await
        .unwrap();
    check_typing(&r, 4);
    assert_eq!(r.path, "direct");
    assert!(warren_testkit::labelled_containers("warren.loadtest=baseline").is_empty());

    // ssh: the same typing over SSH through the relay.
    let a = args(&format!("ssh {brief}"), &dir.join("ssh"));
    let r = warren_loadtest::run(&a, &target, CancellationToken::new())
        .await
        .unwrap();
    check_typing(&r, 4);
    no_session_containers(&run).await;

    // throughput: printers deliver bytes; probes still echo.
    let a = args(
        "throughput --sessions 1 --terminals 2 --probes 1 --output-rate 40000 --duration 2 --ramp-up 1 --warmup 1",
        &dir.join("throughput"),
    );
    let r = warren_loadtest::run(&a, &target, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.counts.terminals_opened, 3, "{r:#?}");
    assert!(r.throughput_bytes_per_sec > 10_000.0, "{r:#?}");
    assert!(r.counts.keystrokes_echoed > 0, "{r:#?}");
    no_session_containers(&run).await;

    // sessions: each created one is used and deleted.
    let a = args(
        "sessions --session-rate 2 --duration 2 --warmup 0",
        &dir.join("sessions"),
    );
    let r = warren_loadtest::run(&a, &target, CancellationToken::new())
        .await
        .unwrap();
    assert!(r.counts.sessions_created >= 3, "{r:#?}");
    assert_eq!(
        r.counts.sessions_created, r.counts.sessions_deleted,
        "{r:#?}"
    );
    assert_eq!(
        r.counts.terminals_opened, r.counts.sessions_created,
        "{r:#?}"
    );
    assert!(r.latency.count > 0, "{r:#?}");
    no_session_containers(&run).await;

    // tunnel: in-process, beside TCP loopback.
    let a = args("tunnel --terminals 2 --duration 2", &dir.join("tunnel"));
    let r = warren_loadtest::run(&a, &target, CancellationToken::new())
        .await
        .unwrap();
    assert!(
        r.extra["tunnel_bytes_per_sec"].as_f64().unwrap() > 0.0,
        "{r:#?}"
    );
    assert!(r.extra["tcp_loopback_bytes_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(r.latency.count, 2000);

    // A wrong API key: a clear error, nothing created.
    let mut bad = target.clone();
    bad.api_key = "wk_not_a_key".into();
    let out = dir.join("badkey");
    let e = warren_loadtest::run(
        &args(&format!("terminals {brief}"), &out),
        &bad,
        CancellationToken::new(),
    )
    .await
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("refused the API key"), "{e:#}");
    assert!(
        out.join("report.json").is_file(),
        "a partial report is written"
    );

    // A relay that is not who the CA says: terminals fail, the run ends
    // with a message, sessions are deleted.
    let mut wrong_ca = relay_target(&st, st.https);
    let (other_ca, _) = warren_tunnel::tls::self_signed(&["warren.localhost"]).unwrap();
    wrong_ca.relay.tls =
        Some(warren_loadtest::conn::RelayTarget::tls_config(other_ca.as_bytes()).unwrap());
    let out = dir.join("wrongca");
    let e = warren_loadtest::run(
        &args(&format!("terminals {brief}"), &out),
        &wrong_ca,
        CancellationToken::new(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        format!("{e:#}").contains("no terminal could be opened"),
        "{e:#}"
    );
    let partial: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        partial["counts"]["sessions_created"],
        partial["counts"]["sessions_deleted"]
    );
    assert!(
        partial["errors"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains("tls")),
        "{partial}"
    );
    no_session_containers(&run).await;

    // The relay goes away mid-run (a forwarder in front of it is cut):
    // errors are counted, the run still ends on time and cleans up.
    let fwd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let faddr = fwd.local_addr().unwrap();
    let upstream = st.http.unwrap();
    let cut = CancellationToken::new();
    let cut2 = cut.clone();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = tokio::select! {
                _ = cut2.cancelled() => return,
                r = fwd.accept() => r.unwrap(),
            };
            let cut3 = cut2.clone();
            tokio::spawn(async move {
                let mut u = tokio::net::TcpStream::connect(upstream).await.unwrap();
                tokio::select! {
                    _ = cut3.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
                }
            });
        }
    });
    let target_cut = relay_target(&st, faddr);
    let out = dir.join("relaydown");
    let a = args(
        "terminals --sessions 1 --terminals 2 --rate 5 --duration 3 --ramp-up 1 --warmup 1",
        &out,
    );
    let runner = tokio::spawn(async move {
        warren_loadtest::run(&a, &target_cut, CancellationToken::new()).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await; // into the measured window
    cut.cancel();
    let r = tokio::time::timeout(Duration::from_secs(60), runner)
        .await
        .expect("the run did not stop by itself")
        .unwrap()
        .unwrap();
    assert!(r.errors.values().sum::<u64>() > 0, "{r:#?}");
    assert_eq!(r.counts.sessions_created, r.counts.sessions_deleted);
    no_session_containers(&run).await;

    st.stop.cancel();
}
