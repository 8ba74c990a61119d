//! Terminals typing while relays drain and crash, at load: the harness's
//! `terminals` scenario (each keystroke waits for its echo; a dropped
//! terminal resumes as the page does and sends its kept input exactly
//! once) through one name in front of two relays, as a load balancer
//! would. Two runs on one cluster: first with no restart, then while relay
//! 0 drains (SIGTERM), relay 1 drains, relay 0 is SIGKILLed and relay 1 is
//! SIGKILLed, each started again and reaching the worker before the next.
//! In both: every terminal opens, none is lost, every keystroke sent is
//! echoed (one per terminal may be in flight at the stop), none lost.
//!
//! `WARREN_TYPING_TERMINALS` sets how many terminals type (default 20);
//! docs/benchmarks.md has the run with 200.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // uses part of the module
#[path = "support/cluster.rs"]
mod cluster;
#[allow(dead_code)] // uses part of the module
mod common;
use cluster::*;
use common::loadtest_args as args;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use warren_loadtest::{Report, Target};
use warren_testkit::{until, until_ok};

/// Counts of one run, for the report line and the checks.
fn summary(r: &Report) -> String {
    let c = &r.counts;
    format!(
        "terminals {} opened / {} failed; keystrokes {} sent, {} echoed, {} lost; \
         echo p50 {:.1} ms p99 {:.1} ms; drops {} resumed {}",
        c.terminals_opened,
        c.terminals_failed,
        c.keystrokes_sent,
        c.keystrokes_echoed,
        c.keystrokes_lost,
        r.latency.p50_us as f64 / 1000.0,
        r.latency.p99_us as f64 / 1000.0,
        r.errors.get("terminal dropped").copied().unwrap_or(0),
        r.errors.get("terminal resumed").copied().unwrap_or(0),
    )
}

fn check(r: &Report, terminals: u64) {
    let c = &r.counts;
    let all = summary(r);
    assert_eq!(c.terminals_opened, terminals, "{all}\n{r:#?}");
    assert_eq!(c.terminals_failed, 0, "{all}");
    assert_eq!(c.keystrokes_lost, 0, "{all}");
    assert!(c.keystrokes_echoed > 0, "{all}");
    assert!(c.keystrokes_sent >= c.keystrokes_echoed, "{all}");
    assert!(
        c.keystrokes_sent - c.keystrokes_echoed <= terminals,
        "{all}"
    );
    // Every drop resumed; nothing else went wrong.
    let dropped = r.errors.get("terminal dropped").copied().unwrap_or(0);
    let resumed = r.errors.get("terminal resumed").copied().unwrap_or(0);
    assert_eq!(dropped, resumed, "{all}");
    let other: Vec<_> = r
        .errors
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "terminal dropped" | "terminal resumed"))
        .collect();
    assert!(other.is_empty(), "{all}: {other:?}");
}

/// Terminal sockets open through a relay (its metrics).
async fn open_upgrades(admin: u16) -> u64 {
    let Ok(r) = http()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
    else {
        return 0;
    };
    let body = r.text().await.unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix("warren_relay_open_upgrades "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_type_through_relay_drains_and_crashes() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let Some(c) = Cluster::start("typing", 1, 2, 1, 3600).await else {
        return;
    };
    let terminals: usize = std::env::var("WARREN_TYPING_TERMINALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(1);
    // Twenty terminals a session (64 MB each), as many sessions as needed.
    let per = terminals.min(20);
    let sessions = terminals.div_ceil(per);
    let terminals = (sessions * per) as u64;
    let name = one_name(vec![c.relay_ports[0].http, c.relay_ports[1].http]).await;
    let target = Target {
        control_url: c.control_urls[0].clone(),
        api_key: ADMIN.into(),
        relay: warren_loadtest::conn::RelayTarget {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], name)),
            domain: "warren.localhost".into(),
            tls: None,
        },
        ssh: None,
        control_ca: Some(control_cert().0.clone()),
    };
    let dir = c.dir.clone();
    let line = |secs: u64| {
        format!(
            "terminals --sessions {sessions} --terminals {per} --rate 2 --duration {secs}s \
             --ramp-up 3s --warmup 2s"
        )
    };

    // No restart: the baseline of the same run.
    let calm = warren_loadtest::run(
        &args(&line(10), &dir.join("calm")),
        &target,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    println!(
        "{terminals} terminals typing, no restart: {}",
        summary(&calm)
    );
    check(&calm, terminals);

    // Two drains and two crashes while the terminals type.
    let a = args(&line(60), &dir.join("restarts"));
    let measured_until = Duration::from_secs(3 + 2 + 60);
    let started = std::time::Instant::now();
    let c = Arc::new(Mutex::new(c));
    let restarts = {
        let c = c.clone();
        tokio::spawn(async move {
            // Sessions are made first, then terminals open over the ramp-up.
            until("every session made", WAIT, EVERY, || {
                let c = c.clone();
                async move {
                    let c = c.lock().await;
                    let (s, v) = call(&c.control_urls[0], "GET", "/v1/sessions", ADMIN, None).await;
                    s == 200
                        && v["sessions"]
                            .as_array()
                            .is_some_and(|a| a.len() >= sessions)
                }
            })
            .await;
            tokio::time::sleep(Duration::from_secs(6)).await;
            let mut events = Vec::new();
            for graceful in [true, true, false, false] {
                // Once every terminal is connected again, the relay holding
                // most of them (they move to the other at each event, and
                // may come back once it is up again).
                let admins: Vec<u16> = c.lock().await.relay_ports.iter().map(|p| p.admin).collect();
                let split = Arc::new(std::sync::Mutex::new(Vec::new()));
                until("every terminal connected", WAIT, EVERY, || {
                    let (admins, split) = (admins.clone(), split.clone());
                    async move {
                        let mut held = Vec::new();
                        for a in &admins {
                            held.push(open_upgrades(*a).await);
                        }
                        let all = held.iter().sum::<u64>() >= terminals;
                        *split.lock().unwrap() = held;
                        all
                    }
                })
                .await;
                let held = split.lock().unwrap().clone();
                let r = if held[0] >= held[1] { 0 } else { 1 };
                let mut c = c.lock().await;
                let t0 = std::time::Instant::now();
                if graceful {
                    c.relays[r].term();
                    let st = c.relays[r].wait().await;
                    assert!(st.success(), "the drained relay exited with {st}");
                    let config = c.relay_ports[r].config.clone();
                    c.relays[r] = Proc::warren("relay", &["relay"], &config);
                    let port = c.relay_ports[r].http;
                    until("relay answering again", WAIT, EVERY, || accepts(port)).await;
                } else {
                    c.restart_relay(r).await;
                }
                // The worker's tunnel to it is back before the next event.
                // (`call`, not `create_session`: a `&Cluster` is not `Send`.)
                let url = c.control_urls[0].clone();
                let (s, session) = call(
                    &url,
                    "POST",
                    "/v1/sessions",
                    ADMIN,
                    Some(serde_json::json!({})),
                )
                .await;
                assert_eq!(s, 201, "{session}");
                let port = c.relay_ports[r].http;
                let (id, token) = (
                    session["id"].as_str().unwrap().to_string(),
                    session["token"].as_str().unwrap().to_string(),
                );
                until_ok("the relay reaching the worker", WAIT, EVERY, || {
                    answers(port, &id, &token)
                })
                .await;
                let (s, v) = call(
                    &c.control_urls[0],
                    "DELETE",
                    &format!("/v1/sessions/{id}"),
                    ADMIN,
                    None,
                )
                .await;
                assert!(s == 204 || s == 200, "{s} {v}");
                events.push((r, held[r], graceful, t0.elapsed(), started.elapsed()));
                drop(c);
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            events
        })
    };
    let rough = warren_loadtest::run(&a, &target, CancellationToken::new())
        .await
        .unwrap();
    let events = restarts.await.unwrap();
    assert!(
        events.iter().all(|e| e.4 < measured_until),
        "every restart within the measured time: {events:?}"
    );
    println!(
        "{terminals} terminals typing through relay drains and crashes {:?}: {}",
        events
            .iter()
            .map(|(r, n, g, t, _)| format!(
                "relay {r} holding {n} terminals {} ({:.1} s to back)",
                if *g { "drained" } else { "killed" },
                t.as_secs_f64()
            ))
            .collect::<Vec<_>>(),
        summary(&rough)
    );
    check(&rough, terminals);
    let dropped = rough.errors.get("terminal dropped").copied().unwrap_or(0);
    assert!(
        dropped >= terminals,
        "every terminal moved at least once: {dropped}"
    );
}
