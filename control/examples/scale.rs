//! The control plane at scale: N fake agents (default 1,000) that join,
//! heartbeat every 2 s like the real agent (staggered), long-poll their
//! desired state and report what they are told to run, with S sessions
//! (default 20,000) of which 5% are typed into (their idleness resets each
//! heartbeat). Control runs in this process on a runtime of its own, so its
//! CPU time is read from its threads alone.
//!
//! ```sh
//! WARREN_TEST_POSTGRES_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres \
//!   cargo run --release -p warren-control --example scale [-- NODES SESSIONS]
//! ```
//!
//! Reports: control CPU (cores) and database transactions per second in the
//! steady state (PostgreSQL's own counter), and placement latency (a create
//! answered once the fake agent reports the session running) under that
//! load. Without PostgreSQL it runs on SQLite and reports no DB figure.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use warren_config::Strategy;

const HEARTBEAT: Duration = Duration::from_secs(2);
const STEADY: Duration = Duration::from_secs(30);

/// CPU seconds used by this process's threads whose name starts with `prefix`.
fn cpu_secs(prefix: &str) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the command name (which ends with ')').
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat: 12 and 13 here.
        if f.len() > 13 {
            total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 / tick
}

/// Committed + rolled-back transactions of the current database so far.
async fn pg_transactions(url: &str) -> Option<i64> {
    if !url.starts_with("postgres") {
        return None;
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.ok()?;
    let row = sqlx::query(
        "SELECT CAST(xact_commit + xact_rollback AS BIGINT) AS n FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .ok()?;
    use sqlx::Row;
    row.try_get::<i64, _>("n").ok()
}

struct Agent {
    url: String,
    auth: String,
    http: reqwest::Client,
    running: Mutex<BTreeSet<String>>,
    since: Mutex<HashMap<String, Instant>>,
}

impl Agent {
    async fn heartbeat(&self) {
        let now = Instant::now();
        let reports: Vec<Value> = {
            let running = self.running.lock().unwrap();
            let mut since = self.since.lock().unwrap();
            running
                .iter()
                .map(|id| {
                    // One session in twenty is being typed into.
                    let active = id.bytes().map(u64::from).sum::<u64>() % 20 == 0;
                    let first = *since.entry(id.clone()).or_insert(now);
                    let idle = if active {
                        0
                    } else {
                        now.duration_since(first).as_millis() as i64
                    };
                    json!({"id": id, "state": "running", "idle_ms": idle})
                })
                .collect()
        };
        let _ = self
            .http
            .post(format!("{}/internal/v1/heartbeat", self.url))
            .bearer_auth(&self.auth)
            .json(
                &json!({"allocatable_mb": 1i64 << 30, "free_mb": 1i64 << 30, "sessions": reports}),
            )
            .send()
            .await;
    }
}

fn main() {
    // Quiet logs (before the test helper's verbose default).
    let _ = tracing_subscriber::fmt().with_env_filter("warn").try_init();
    let nodes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let sessions: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    // Control's runtime: its threads are named, so their CPU time is its own.
    let control_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ctl-worker")
        .enable_all()
        .build()
        .unwrap();
    let agents_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fake-agent")
        .enable_all()
        .build()
        .unwrap();
    let db = if std::env::var("WARREN_TEST_POSTGRES_URL").is_ok() {
        Db::Postgres
    } else {
        Db::Sqlite
    };
    let url = agents_rt.block_on(database(db, "scale"));
    let mut cfg = config(&url, Strategy::Spread);
    cfg.sessions.tenant_max_sessions = 10_000_000;
    cfg.sessions.tenant_max_disk_mb = i64::MAX as u64 / 2;
    cfg.scheduler.heartbeat_timeout_secs = 10;
    cfg.scheduler.node_lost_grace_secs = 300;
    let c = Arc::new(control_rt.block_on(TestControl::start(cfg)));
    let ctl_url = c.url.clone();
    agents_rt.block_on(async move {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .build()
            .unwrap();
        // Join every node.
        let mut agents = Vec::new();
        for i in 0..nodes {
            let token = c.join_token().await;
            let node = format!("sim{i}");
            let r = http
                .post(format!("{ctl_url}/internal/v1/join"))
                // Each worker has its own address (join attempts are
                // limited per address; control believes loopback's XFF).
                .header("x-forwarded-for", format!("10.{}.{}.1", i / 250, i % 250))
                .json(&json!({"token": token, "node_id": node, "allocatable_mb": 1i64 << 30}))
                .send()
                .await
                .unwrap();
            let v: Value = r.json().await.unwrap();
            let cred = v["credential"].as_str().unwrap_or_else(|| panic!("join: {v}"));
            agents.push(Arc::new(Agent {
                url: ctl_url.clone(),
                auth: format!("{node}:{cred}"),
                http: http.clone(),
                running: Mutex::new(BTreeSet::new()),
                since: Mutex::new(HashMap::new()),
            }));
        }
        // Heartbeats, staggered over the interval, and watches.
        for (i, a) in agents.iter().enumerate() {
            let a2 = a.clone();
            let offset = HEARTBEAT.mul_f64(i as f64 / nodes as f64);
            tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut tick = tokio::time::interval(HEARTBEAT);
                loop {
                    tick.tick().await;
                    a2.heartbeat().await;
                }
            });
            let a3 = a.clone();
            tokio::spawn(async move {
                let mut index = 0i64;
                loop {
                    let r = a3
                        .http
                        .get(format!("{}/internal/v1/watch?index={index}", a3.url))
                        .bearer_auth(&a3.auth)
                        .send()
                        .await;
                    let Ok(r) = r else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let Ok(v) = r.json::<Value>().await else { continue };
                    index = v["index"].as_i64().unwrap_or(index);
                    let desired: BTreeSet<String> = v["sessions"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|s| s["id"].as_str().map(String::from)).collect())
                        .unwrap_or_default();
                    let new = {
                        let mut running = a3.running.lock().unwrap();
                        let new = desired.difference(&running).count() > 0;
                        *running = desired;
                        new
                    };
                    // A new session is reported at once, as the real agent does.
                    if new {
                        a3.heartbeat().await;
                    }
                }
            });
        }
        // Creates are limited per tenant (600 a minute): many tenants, as a
        // platform would have.
        let mut keys = Vec::new();
        for t in 0..(sessions + 200).div_ceil(500) {
            keys.push(c.tenant(&format!("sim{t}"), 1_000_000, 1i64 << 40).await.1);
        }
        let key = Arc::new(keys);
        let create = |n: usize, conc: usize| {
            let (c, key) = (c.clone(), key.clone());
            async move {
                let next = Arc::new(AtomicUsize::new(0));
                let mut js = tokio::task::JoinSet::new();
                for _ in 0..conc {
                    let (c, key, next) = (c.clone(), key.clone(), next.clone());
                    js.spawn(async move {
                        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            let t = Instant::now();
                            let (s, v) = c
                                .call("POST", "/v1/sessions", &key[i % key.len()], Some(json!({"memory_mb": 64, "ttl_seconds": 604800, "idle_timeout_seconds": 604800})))
                                .await;
                            assert_eq!(s, 201, "{v}");
                            h.record(t.elapsed().as_micros() as u64).unwrap();
                        }
                        h
                    });
                }
                let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                while let Some(h) = js.join_next().await {
                    all.add(h.unwrap()).unwrap();
                }
                all
            }
        };
        let t0 = Instant::now();
        let ramp = create(sessions, 32).await;
        let ramp_secs = t0.elapsed().as_secs_f64();
        // Steady state: heartbeats and watches only.
        let (cpu0, tx0, w0) = (cpu_secs("ctl-"), pg_transactions(&url).await, Instant::now());
        tokio::time::sleep(STEADY).await;
        let secs = w0.elapsed().as_secs_f64();
        let (cpu1, tx1) = (cpu_secs("ctl-"), pg_transactions(&url).await);
        // Placement under that load: 200 creates, 4 at a time.
        let placed = create(200, 4).await;
        let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!("\n## Control at scale: {nodes} nodes, {sessions} sessions ({db:?})\n");
        println!("| measure | value |\n|---|---|");
        println!("| ramp: {sessions} creates, 32 at a time | {:.0} s ({:.0} creates/s), p50 {:.1} ms, p99 {:.1} ms |", ramp_secs, sessions as f64 / ramp_secs, ms(&ramp, 0.5), ms(&ramp, 0.99));
        println!("| steady state: control CPU | {:.2} cores |", (cpu1 - cpu0) / secs);
        match (tx0, tx1) {
            (Some(a), Some(b)) => println!("| steady state: database transactions | {:.0} /s |", (b - a) as f64 / secs),
            _ => println!("| steady state: database transactions | (SQLite: not counted) |"),
        }
        println!("| steady state: heartbeats | {:.0} /s |", nodes as f64 / HEARTBEAT.as_secs_f64());
        println!("| placement under load (create → running), 200 creates | p50 {:.1} ms, p99 {:.1} ms |", ms(&placed, 0.5), ms(&placed, 0.99));
    });
    std::process::exit(0);
}
