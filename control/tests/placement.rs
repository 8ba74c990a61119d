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
