//! An operator's cluster on one machine, every part its own process as
//! deployed: two control replicas on one PostgreSQL database, two relays,
//! two workers (`warren agent --config`, given both control URLs), and a
//! real Prometheus (Debian's package) scraping all six.
//!
//! Control serves its API over TLS (a private CA): relays, agents,
//! Prometheus and the test itself trust it through their CA settings.
//!
//! Then a control replica, a relay and a worker are killed in turn
//! (SIGKILL). No running session is lost except the dead worker's (lost
//! within 15 s), terminals keep answering, new sessions land on the
//! survivor, and Prometheus sees exactly the surviving parts up.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // uses part of the module
#[path = "support/cluster.rs"]
mod cluster;
#[allow(dead_code)] // uses part of the module
mod common;
use cluster::*;
use common::free_tcp;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use warren_testkit::{until, until_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_survives_losing_a_control_replica_a_relay_and_a_worker() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let Some(prometheus) = warren_testkit::prometheus_or_skip() else {
        return;
    };
    let Some(mut c) = Cluster::start("cluster", 2, 2, 2, 600).await else {
        return;
    };

    // Control speaks only TLS: a plain-HTTP request gets no API answer.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/v1/nodes", c.control_ports[0])).await;
    assert!(
        plain.is_err(),
        "control answered plain HTTP: {:?}",
        plain.map(|r| r.status())
    );
    // `api.<domain>` on a relay reaches control over TLS (it would get
    // nothing over plain HTTP), trusting control's CA.
    let api = reqwest::Client::builder()
        .resolve(
            "api.warren.localhost",
            std::net::SocketAddr::from(([127, 0, 0, 1], c.relay_ports[0].http)),
        )
        .build()
        .unwrap()
        .get(format!(
            "http://api.warren.localhost:{}/healthz",
            c.relay_ports[0].http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 200, "api.<domain> to TLS control");
    assert_eq!(api.text().await.unwrap(), "ok\n");

    // Prometheus, scraping every part each second.
    let prom_port = free_tcp();
    let target = |a: &str| format!("\"{a}\"");
    let prom_cfg = c.dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: control\n    scheme: https\n    tls_config:\n      ca_file: {}\n    static_configs:\n      - targets: [{}, {}]\n  - job_name: relay\n    static_configs:\n      - targets: [{}, {}]\n  - job_name: agent\n    static_configs:\n      - targets: [{}, {}]\n",
            c.dir.join("control-ca.pem").display(),
            target(&format!("127.0.0.1:{}", c.control_ports[0])),
            target(&format!("127.0.0.1:{}", c.control_ports[1])),
            target(&format!("127.0.0.1:{}", c.relay_ports[0].admin)),
            target(&format!("127.0.0.1:{}", c.relay_ports[1].admin)),
            target(&c.agent_metrics[0]),
            target(&c.agent_metrics[1]),
        ),
    )
    .unwrap();
    let _prom = Proc::spawn(
        "prometheus",
        tokio::process::Command::new(&prometheus)
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                c.dir.join("prom").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stderr(Stdio::null()),
    );
    until("Prometheus sees all six parts up", WAIT, EVERY, || async {
        let up = prometheus_up(prom_port).await;
        up.len() == 6 && up.iter().all(|(_, _, v)| v == "1")
    })
    .await;
    // And Warren's own series from each kind of part.
    let series = reqwest::get(format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query=count%20by%20(job)%20(%7B__name__%3D~%22warren_.%2B%22%7D)"
    ))
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap();
    let jobs: Vec<&str> = series["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["metric"]["job"].as_str())
        .collect();
    for job in ["control", "relay", "agent"] {
        assert!(
            jobs.contains(&job),
            "no warren_* series from {job}: {series}"
        );
    }

    // One session on each worker (spread).
    let sessions = [c.create_session(0).await, c.create_session(0).await];
    let on: Vec<String> = sessions
        .iter()
        .map(|s| s["node"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(on[0], on[1], "spread put both sessions on one worker");
    let sid = |i: usize| sessions[i]["id"].as_str().unwrap().to_string();
    let token = |i: usize| sessions[i]["token"].as_str().unwrap().to_string();
    for i in 0..2 {
        for r in &c.relay_ports {
            answers(r.http, &sid(i), &token(i)).await.unwrap();
        }
    }

    // 1. Control replica A dies: workers heartbeat through B, nothing is lost.
    let killed_at = now_ms();
    let t0 = Instant::now();
    c.controls[0].kill().await;
    let b = c.control_urls[1].clone();
    until(
        "both workers heartbeating through replica B",
        WAIT,
        EVERY,
        || {
            let b = b.clone();
            async move {
                let n = nodes_seen(&b).await;
                n.len() == 2
                    && n.iter().all(|n| {
                        n["last_heartbeat_ms"]
                            .as_i64()
                            .is_some_and(|t| t > killed_at)
                    })
            }
        },
    )
    .await;
    let failover = t0.elapsed();
    for i in 0..2 {
        assert_eq!(c.status(1, &sid(i)).await, "running");
        answers(c.relay_ports[0].http, &sid(i), &token(i))
            .await
            .unwrap();
    }
    let nodes_now = nodes_seen(&b).await;
    assert!(
        nodes_now.iter().all(|n| n["state"] == "ready"),
        "{nodes_now:?}"
    );
    eprintln!(
        "control replica SIGKILLed → both workers heartbeating through the other: {} ms",
        failover.as_millis()
    );

    // 2. Relay 2 dies: terminals answer through relay 1.
    c.relays[1].kill().await;
    for i in 0..2 {
        answers(c.relay_ports[0].http, &sid(i), &token(i))
            .await
            .unwrap();
        assert_eq!(c.status(1, &sid(i)).await, "running");
    }

    // 3. Worker B dies (agent and containers): its session is lost within
    //    15 s, the other keeps running, new sessions land on the survivor.
    let dead_idx = c.nodes.iter().position(|n| *n == on[1]).unwrap();
    let t0 = Instant::now();
    c.agents[dead_idx].kill().await;
    warren_testkit::remove_labelled(&format!("warren.node={}", on[1]), &[]);
    let dead_session = sid(1);
    {
        let c = &c;
        until(
            "the dead worker's session lost",
            Duration::from_secs(15),
            EVERY,
            || {
                let id = dead_session.clone();
                async move { c.status(1, &id).await == "lost" }
            },
        )
        .await;
    }
    eprintln!(
        "worker killed → its session lost: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(c.status(1, &sid(0)).await, "running");
    answers(c.relay_ports[0].http, &sid(0), &token(0))
        .await
        .unwrap();
    let v = c.create_session(1).await;
    assert_eq!(v["node"], on[0], "a new session went to the dead worker");
    answers(
        c.relay_ports[0].http,
        v["id"].as_str().unwrap(),
        v["token"].as_str().unwrap(),
    )
    .await
    .unwrap();

    // Prometheus: the survivors up, the dead down.
    let alive = [
        format!("127.0.0.1:{}", c.control_ports[1]),
        format!("127.0.0.1:{}", c.relay_ports[0].admin),
        c.agent_metrics[1 - dead_idx].clone(),
    ];
    until(
        "Prometheus sees exactly the survivors up",
        WAIT,
        EVERY,
        || async {
            let up = prometheus_up(prom_port).await;
            up.len() == 6
                && up
                    .iter()
                    .all(|(_, inst, v)| (v == "1") == alive.contains(inst))
        },
    )
    .await;
    // The Grafana dashboard names only series the parts export (after
    // the traffic above, so that every labelled series has appeared).
    let mut exported = text(&format!("https://127.0.0.1:{}/metrics", c.control_ports[1])).await;
    exported += &text(&format!(
        "http://127.0.0.1:{}/metrics",
        c.relay_ports[0].admin
    ))
    .await;
    exported += &text(&format!("http://{}/metrics", c.agent_metrics[1 - dead_idx])).await;
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/warren.json"),
    )
    .unwrap();
    let _: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut named = 0;
    for (i, _) in dashboard.match_indices("warren_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        named += 1;
        assert!(
            exported
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard names {name}, which no part exports"
        );
    }
    assert!(named > 10, "the dashboard names {named} series");
    c.controls[1].assert_alive();
    c.relays[0].assert_alive();
    c.agents[1 - dead_idx].assert_alive();
}

/// Chromium on a session's page through a relay process: text typed into
/// `cat > file` at 25 keys a second while the relay is SIGKILLed reaches
/// the file exactly (no key lost, none twice); then a numbered line
/// printed every 250 ms: the relay is SIGKILLed and restarted at once,
/// then again after the page's 10-second token has expired. The page
/// resumes both times (renewing its token the second time, through
/// control), shows every line exactly once, and the same shell answers
/// typing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_tab_survives_relay_crashes_and_its_token_expiring() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let Some(c) = Cluster::start("tab", 1, 1, 1, 10).await else {
        return;
    };
    let s = c.create_session(0).await;
    let id = s["id"].as_str().unwrap().to_string();
    let expires = s["token_expires_at"].as_i64().unwrap();
    let http = c.relay_ports[0].http;
    let url = format!(
        "http://{id}.warren.localhost:{http}/?token={}",
        s["token"].as_str().unwrap()
    );

    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    let restarts = {
        let c = c.clone();
        serve_kills(3, move || {
            let c = c.clone();
            async move { c.lock().await.restart_relay(0).await }
        })
        .await
    };
    let out = browser(&[
        &url,
        &restarts.0,
        &expires.to_string(),
        "browser-relay-crash.png",
        "twice",
        "typing",
    ])
    .await;
    eprintln!("{out}");
    assert_eq!(
        restarts.1.await.unwrap(),
        3,
        "the relay was not killed three times"
    );
}

/// Chromium typing into `cat > file` while the session's agent restarts
/// (SIGTERM, then started again: it adopts the running session): the file
/// holds exactly what was typed; then lines printed across a second agent
/// restart show once each, from the same shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_tab_types_through_agent_restarts() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let Some(c) = Cluster::start("agentre", 1, 1, 1, 600).await else {
        return;
    };
    let s = c.create_session(0).await;
    let id = s["id"].as_str().unwrap().to_string();
    let http = c.relay_ports[0].http;
    let url = format!(
        "http://{id}.warren.localhost:{http}/?token={}",
        s["token"].as_str().unwrap()
    );
    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    let restarts = {
        let c = c.clone();
        serve_kills(2, move || {
            let c = c.clone();
            async move { c.lock().await.restart_agent(0).await }
        })
        .await
    };
    let out = browser(&[
        &url,
        &restarts.0,
        "0",
        "browser-agent-restart.png",
        "once",
        "typing",
    ])
    .await;
    eprintln!("{out}");
    assert_eq!(restarts.1.await.unwrap(), 2);
}

/// Two relays behind one name (a forwarder that picks the first relay
/// accepting connections, as a load balancer would): Chromium types into
/// `cat > file` through relay 1 when it is stopped gracefully (SIGTERM).
/// The page is told (close 1001 as the relay drains), reconnects at once
/// through relay 2, and the file holds exactly what was typed. Then relay 1
/// is back and relay 2 drains: the shell's lines show once each, from the
/// same PID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_tab_moves_to_the_other_relay_when_its_relay_drains() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let Some(c) = Cluster::start("drain", 1, 2, 1, 600).await else {
        return;
    };
    let name = one_name(vec![c.relay_ports[0].http, c.relay_ports[1].http]).await;
    let s = c.create_session(0).await;
    let id = s["id"].as_str().unwrap().to_string();
    let url = format!(
        "http://{id}.warren.localhost:{name}/?token={}",
        s["token"].as_str().unwrap()
    );
    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    // First relay 0 drains (the page types through it); then relay 0 is
    // back and relay 1 drains (the page's lines go on through relay 0).
    let round = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let token = s["token"].as_str().unwrap().to_string();
    let stops = {
        let c = c.clone();
        serve_kills(2, move || {
            let (c, round, id, token) = (c.clone(), round.clone(), id.clone(), token.clone());
            async move {
                let mut c = c.lock().await;
                if round.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    c.relays[0].term();
                    let st = c.relays[0].wait().await;
                    assert!(st.success(), "the drained relay exited with {st}");
                } else {
                    let config = c.relay_ports[0].config.clone();
                    c.relays[0] = Proc::warren("relay", &["relay"], &config);
                    let port = c.relay_ports[0].http;
                    until("relay 0 answering again", WAIT, EVERY, || accepts(port)).await;
                    // And reaching the session (the worker's tunnel to it is
                    // back) before the other relay drains.
                    until_ok("relay 0 reaching the session", WAIT, EVERY, || {
                        answers(port, &id, &token)
                    })
                    .await;
                    c.relays[1].term();
                    let st = c.relays[1].wait().await;
                    assert!(st.success(), "the drained relay exited with {st}");
                }
            }
        })
        .await
    };
    let out = browser(&[
        &url,
        &stops.0,
        "0",
        "browser-relay-drain.png",
        "once",
        "typing",
    ])
    .await;
    eprintln!("{out}");
    assert_eq!(stops.1.await.unwrap(), 2);
}

/// Answers `n` requests on a local port, running `action` before each
/// answer: the browser script's way to ask for a relay crash. Returns the
/// URL and a task counting the requests served.
async fn serve_kills<F, Fut>(n: usize, action: F) -> (String, tokio::task::JoinHandle<usize>)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/kill", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut done = 0;
        while done < n {
            let Ok((mut sock, _)) = l.accept().await else {
                break;
            };
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            action().await;
            done += 1;
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone")
                .await;
        }
        done
    });
    (url, task)
}

/// Runs `web/e2e/relaykill.mjs` with `args` (URL, kill URL, token expiry,
/// screenshot file name, [`once`]); fails the test unless it passes. Its
/// report.
async fn browser(args: &[&str]) -> String {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (web, shot) = browser_dirs(&args[3]);
    args[3] = shot.display().to_string();
    let out = tokio::process::Command::new("node")
        .arg("e2e/relaykill.mjs")
        .args(&args)
        .current_dir(&web)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The web package's directory (its npm packages are installed by the
/// relay's build) and where the screenshot goes.
fn browser_dirs(name: &str) -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    (root.join("web"), artifacts.join(name))
}
