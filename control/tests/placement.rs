//! Batched placement: creates that arrive together are placed in one
//! transaction, each seeing the quotas and headroom the ones before it in
//! the batch took. A burst from two tenants: the one with a quota of 3 gets
//! exactly 3 (the rest `429 quota_exceeded`, naming the quota), the other
//! gets every session, nothing is over-committed, and every create is
//! audited once.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use warren_config::Strategy;
use warren_proto::api::CreateSession;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_two_tenants_keeps_each_quota_and_the_headroom() {
    for db in backends() {
        let url = database(db, "batch").await;
        let c = std::sync::Arc::new(TestControl::start(config(&url, Strategy::Binpack)).await);
        let _agents = c.nodes("p", &[1000, 1000]).await;
        let (_ta, ka) = c.tenant("small", 3, 100_000).await;
        let (_tb, kb) = c.tenant("big", 100, 100_000).await;
        let mut js = tokio::task::JoinSet::new();
        for i in 0..24 {
            let (c, key) = (c.clone(), if i % 2 == 0 { ka.clone() } else { kb.clone() });
            js.spawn(async move {
                let r = c
                    .client(&key)
                    .create_session(&CreateSession {
                        memory_mb: Some(100),
                        ..Default::default()
                    })
                    .await;
                (i % 2 == 0, r)
            });
        }
        let (mut small_ok, mut big_ok) = (0, 0);
        while let Some(r) = js.join_next().await {
            match r.unwrap() {
                (true, Ok(_)) => small_ok += 1,
                (false, Ok(_)) => big_ok += 1,
                (small, Err(e)) => {
                    let (status, d) = refused::<()>(Err(e));
                    assert!(small, "{db:?}: the big tenant was refused: {d:?}");
                    assert_eq!((status, d.code.as_str()), (429, "quota_exceeded"), "{db:?}");
                    assert!(d.message.contains("may run 3 sessions"), "{d:?}");
                }
            }
        }
        assert_eq!((small_ok, big_ok), (3, 12), "{db:?}");
        for node in c.listed_nodes().await {
            assert!(
                node["reserved_mb"].as_i64().unwrap() <= node["allocatable_mb"].as_i64().unwrap(),
                "{db:?}: over-committed {node}"
            );
        }
        let (s, log) = c.call("GET", "/v1/audit?limit=500", ADMIN, None).await;
        assert_eq!(s, 200, "{log}");
        let scheduled = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "session.create" && e["outcome"] == "scheduled")
            .count();
        assert_eq!(scheduled, 15, "{db:?}: one audit row per session placed");
    }
}

/// A worker's warm report counts only for pools control lists, and at most
/// each pool's size: a node cannot draw sessions with made-up or inflated
/// pools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_warm_report_is_bounded_by_the_configured_pools() {
    let url = database(Db::Sqlite, "warmreport").await;
    let mut cfg = config(&url, Strategy::Spread);
    cfg.pools = vec![warren_config::PoolConfig {
        image: Some("warren/session:mini".into()),
        memory_mb: Some(256),
        cpus: Some(1.0),
        disk_mb: Some(0),
        size: 2,
    }];
    let c = TestControl::start(cfg).await;
    // A node joined by hand (no fake agent's heartbeats in between).
    let token = c.join_token().await;
    let joined: serde_json::Value = c
        .http
        .post(format!("{}/internal/v1/join", c.url))
        .json(&serde_json::json!({"token": token, "node_id": "w1", "allocatable_mb": 4096}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = format!("w1:{}", joined["credential"].as_str().unwrap());
    let pool = "warren/session:mini 256m 1000mcpu 0d";
    let r = c
        .http
        .post(format!("{}/internal/v1/heartbeat", c.url))
        .bearer_auth(&auth)
        .json(&serde_json::json!({
            "allocatable_mb": 4096, "free_mb": 4096, "sessions": [],
            "warm": [{"pool": pool, "ready": 64}, {"pool": "made up 1m 1mcpu 0d", "ready": 5}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let nodes = c.listed_nodes().await;
    let w1 = nodes.iter().find(|n| n["id"] == "w1").unwrap();
    assert_eq!(w1["warm"], serde_json::json!({ pool: 2 }), "{w1}");
    // Too many pools in one report: refused, named.
    let many: Vec<_> = (0..17)
        .map(|i| serde_json::json!({"pool": format!("p{i}"), "ready": 1}))
        .collect();
    let r = c
        .http
        .post(format!("{}/internal/v1/heartbeat", c.url))
        .bearer_auth(&auth)
        .json(&serde_json::json!({"allocatable_mb": 4096, "free_mb": 4096, "sessions": [], "warm": many}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(r.text().await.unwrap().contains("warm pool report"));
}
