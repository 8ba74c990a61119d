//! Create throughput of the control plane alone: fake agents that run every
//! session at once (no Docker), on SQLite and on PostgreSQL.
//!
//! ```sh
//! cargo run --release -p warren-control --example creates [CONCURRENCY…]
//! WARREN_TEST_POSTGRES_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres \
//!   cargo run --release -p warren-control --example creates
//! ```
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use serde_json::json;
use warren_config::Strategy;

const CREATES: usize = 2000;
/// Creates in flight at once, unless given on the command line.
const CONCURRENCY: &[usize] = &[16, 64];

#[tokio::main]
async fn main() {
    println!(
        "| store | creates | concurrency | creates/s | create p50 | create p99 |\n|---|---|---|---|---|---|"
    );
    let levels: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("concurrency levels are numbers"))
        .collect();
    let levels = if levels.is_empty() {
        CONCURRENCY.to_vec()
    } else {
        levels
    };
    for db in backends() {
        for &concurrency in &levels {
            let url = database(db, &format!("bench{concurrency}")).await;
            let mut cfg = config(&url, Strategy::Spread);
            cfg.sessions.tenant_max_sessions = 100_000;
            cfg.sessions.tenant_max_disk_mb = i64::MAX as u64 / 2;
            let c = Arc::new(TestControl::start(cfg).await);
            let agents = c.nodes("bench", &[1 << 24; 3]).await;
            // Tenants of 400 creates each: a tenant may create 600 a minute.
            let mut keys = Vec::new();
            for i in 0..CREATES.div_ceil(400) {
                let (_, t) = c
                    .call(
                        "POST",
                        "/v1/tenants",
                        ADMIN,
                        Some(json!({"name": format!("bench{i}"), "max_sessions": 100000, "max_memory_mb": 1i64 << 40})),
                    )
                    .await;
                let (_, k) = c
                    .call(
                        "POST",
                        &format!("/v1/tenants/{}/api-keys", t["id"].as_str().unwrap()),
                        ADMIN,
                        None,
                    )
                    .await;
                keys.push(k["key"].as_str().unwrap().to_string());
            }
            let keys = Arc::new(keys);
            let start = Instant::now();
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut js = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let (c, keys, next) = (c.clone(), keys.clone(), next.clone());
                js.spawn(async move {
                    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= CREATES {
                            break;
                        }
                        let key = &keys[n % keys.len()];
                        let t = Instant::now();
                        let (s, v) = c
                            .call("POST", "/v1/sessions", key, Some(json!({"memory_mb": 64})))
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
            let secs = start.elapsed().as_secs_f64();
            println!(
                "| {db:?} | {CREATES} | {concurrency} | {:.0} | {:.1} ms | {:.1} ms |",
                CREATES as f64 / secs,
                all.value_at_quantile(0.5) as f64 / 1000.0,
                all.value_at_quantile(0.99) as f64 / 1000.0
            );
            drop(agents);
        }
    }
}
