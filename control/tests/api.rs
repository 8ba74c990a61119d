//! The control plane's API, scheduling and lifecycle on SQLite and on
//! PostgreSQL, with fake agents (the real-Docker path is tested end to end
//! in the CLI's tests).
#![allow(clippy::unwrap_used)]
mod common;

use std::sync::atomic::Ordering;

use common::*;
use serde_json::json;
use warren_config::Strategy;
use warren_proto::api::{CreateSession, Session, SessionStatus};
use warren_testkit::until;

async fn three_nodes(c: &TestControl, tag: &str) -> Vec<FakeAgent> {
    c.nodes(tag, &[1000, 2000, 3000]).await
}

/// `POST /v1/sessions` with `memory_mb`, as `key`.
async fn create(c: &TestControl, key: &str, mem: i64) -> warren_client::Result<Session> {
    c.client(key)
        .create_session(&CreateSession {
            memory_mb: Some(mem),
            ..Default::default()
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placements_follow_headroom() {
    for db in backends() {
        for strategy in [Strategy::Spread, Strategy::Binpack] {
            let url = database(db, "place").await;
            let c = TestControl::start(config(&url, strategy)).await;
            let _agents = three_nodes(&c, "p").await;
            let mut placed = Vec::new();
            for _ in 0..3 {
                let v = create(&c, ADMIN, 600)
                    .await
                    .unwrap_or_else(|e| panic!("{db:?}: {e}"));
                assert_eq!(v.status, SessionStatus::Running);
                assert!(
                    v.url
                        .starts_with(&format!("https://{}.warren.localhost:8443/?token=", v.id))
                );
                assert!(v.ssh.contains(&v.id));
                placed.push(v.node);
            }
            match strategy {
                // Most headroom first: n2 (3000), n2 again (2400 > 2000), then n1 (2000 > 1800).
                Strategy::Spread => assert_eq!(placed, ["p-n2", "p-n2", "p-n1"], "{db:?}"),
                // Least headroom that fits: n0 (1000), then n1 (n0 has 400 left), n1 again (1400).
                Strategy::Binpack => assert_eq!(placed, ["p-n0", "p-n1", "p-n1"], "{db:?}"),
            }
            // Nothing fits: 503 no_capacity, with a message.
            let (s, e) = refused(create(&c, ADMIN, 4000).await);
            assert_eq!(s, 503, "{e:?}");
            assert_eq!(e.code, "no_capacity");
            assert!(e.message.contains("4000 MB"), "{e:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_creates_never_overcommit() {
    for db in backends() {
        let url = database(db, "burst").await;
        let c = TestControl::start(config(&url, Strategy::Spread)).await;
        let _agents = three_nodes(&c, "b").await;
        // 6000 MB in all; 50 × 300 MB = 15000 MB asked.
        let c = std::sync::Arc::new(c);
        let mut js = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let c = c.clone();
            js.spawn(async move { create(&c, ADMIN, 300).await });
        }
        let mut ok = 0;
        while let Some(r) = js.join_next().await {
            match r.unwrap() {
                Ok(_) => ok += 1,
                Err(warren_client::Error::Api {
                    status: 503, code, ..
                }) => assert_eq!(code, "no_capacity"),
                Err(e) => panic!("{db:?}: unexpected {e}"),
            }
        }
        // Per node: 1000/300 = 3, 2000/300 = 6, 3000/300 = 10.
        assert_eq!(
            ok, 19,
            "{db:?}: every node filled as far as it fits, and no further"
        );
        for node in c.listed_nodes().await {
            assert!(
                node["reserved_mb"].as_i64().unwrap() <= node["allocatable_mb"].as_i64().unwrap(),
                "{db:?}: over-committed {node}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_are_isolated_and_quotas_hold() {
    for db in backends() {
        let url = database(db, "tenants").await;
        let c = TestControl::start(config(&url, Strategy::Spread)).await;
        let _agents = three_nodes(&c, "t").await;
        let (ta, ka) = c.tenant("acme", 2, 1000).await;
        let (_tb, kb) = c.tenant("globex", 5, 5000).await;
        let (a_client, b_client) = (c.client(&ka), c.client(&kb));
        let a = create(&c, &ka, 400).await.unwrap();
        assert_eq!(a.tenant, ta);
        let id = a.id.as_str();
        assert!(
            id.len() >= 12
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        // B sees nothing of A's.
        assert_eq!(refused(b_client.session(id).await).0, 404, "GET");
        // (Raw: the client's delete takes a 404 as "already gone".)
        let (s, v) = c
            .call("DELETE", &format!("/v1/sessions/{id}"), &kb, None)
            .await;
        assert_eq!(s, 404, "DELETE: {v}");
        assert_eq!(refused(b_client.token(id, None).await).0, 404, "token");
        assert!(b_client.sessions().await.unwrap().is_empty());
        // Tenant keys cannot do operators' work.
        assert_eq!(c.call("GET", "/v1/nodes", &kb, None).await.0, 403);
        assert_eq!(
            c.call("POST", "/v1/tenants", &kb, Some(json!({"name": "x"})))
                .await
                .0,
            403
        );
        // Memory quota: 400 + 700 > 1000.
        let (s, e) = refused(create(&c, &ka, 700).await);
        assert_eq!(s, 429, "{e:?}");
        assert_eq!(e.code, "quota_exceeded");
        // Session-count quota: 2. (Raw once: a create answers exactly 201.)
        assert_eq!(
            c.call("POST", "/v1/sessions", &ka, Some(json!({"memory_mb": 100})))
                .await
                .0,
            201
        );
        let (s, e) = refused(create(&c, &ka, 100).await);
        assert_eq!(s, 429, "{e:?}");
        // Nothing was started for the refused ones.
        assert_eq!(a_client.sessions().await.unwrap().len(), 2);
        // Bad input: clear errors, never a 500.
        let (s, e) = refused(create(&c, &ka, -5).await);
        assert_eq!(s, 422, "{e:?}");
        // (Raw: no typed body has an unknown field.)
        let (s, v) = c
            .call("POST", "/v1/sessions", &ka, Some(json!({"bogus": 1})))
            .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(api_error(&v).code, "bad_request");
        assert_eq!(refused(c.client("wk_wrong").sessions().await).0, 401);
        // Audit: A sees its own events only.
        let (_, au) = c.call("GET", "/v1/audit", &ka, None).await;
        let entries = au["entries"].as_array().unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e["action"] == "session.create" && e["outcome"] == "refused")
        );
        assert!(entries.iter().all(|e| e["tenant"] == ta.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_tokens_lost_nodes_and_delete() {
    for db in backends() {
        let url = database(db, "nodes").await;
        let c = TestControl::start(config(&url, Strategy::Spread)).await;
        let agents = three_nodes(&c, "j").await;
        // A used token is refused; so is an expired one.
        let t = c.join_token().await;
        let extra = FakeAgent::join(&c.url, &t, "j-extra", 1000).await.unwrap();
        let (s, v) = FakeAgent::join(&c.url, &t, "j-again", 1000)
            .await
            .err()
            .unwrap();
        assert_eq!(s, 403, "{v}");
        // Node-id takeover: a fresh token with an existing node's id is
        // refused with 409, the token is not spent, and the node keeps its
        // credential (its heartbeats still count).
        let t = c.join_token().await;
        let (s, v) = FakeAgent::join(&c.url, &t, "j-extra", 1000)
            .await
            .err()
            .unwrap();
        assert_eq!(s, 409, "{v}");
        let e = api_error(&v);
        assert_eq!(e.code, "node_exists", "{v}");
        assert!(e.message.contains("warren node rm j-extra"), "{v}");
        FakeAgent::join(&c.url, &t, "j-other", 1000).await.unwrap();
        assert!(
            c.running
                .control
                .store
                .verify_node("j-extra", &extra.credential)
                .await
                .unwrap(),
            "the real node lost its credential"
        );
        let expired = c
            .running
            .control
            .store
            .create_join_token(-1000)
            .await
            .unwrap();
        assert_eq!(
            FakeAgent::join(&c.url, &expired, "j-late", 1000)
                .await
                .err()
                .unwrap()
                .0,
            403
        );

        let admin = c.client(ADMIN);
        let v = create(&c, ADMIN, 2500).await.unwrap(); // only the 3000 MB node fits
        assert_eq!(v.node, "j-n2");
        let id = v.id;
        // Kill the agent: its node becomes unreachable first, while its
        // session stays running (a control hiccup must not kill shells)…
        agents[2].alive.store(false, Ordering::Relaxed);
        until("node unreachable", WAIT, EVERY, || async {
            c.listed_nodes()
                .await
                .iter()
                .any(|n| n["id"] == "j-n2" && n["state"] == "unreachable")
        })
        .await;
        let s = admin.session(&id).await.unwrap();
        assert_eq!(s.status, SessionStatus::Running, "{s:?}");
        // …then, after the grace, lost with its session.
        until("node lost", WAIT, EVERY, || async {
            c.listed_nodes()
                .await
                .iter()
                .any(|n| n["id"] == "j-n2" && n["state"] == "lost")
        })
        .await;
        let s = admin.session(&id).await.unwrap();
        assert_eq!(s.status, SessionStatus::Lost, "{s:?}");
        // New sessions go elsewhere.
        let v = create(&c, ADMIN, 500).await.unwrap();
        assert_ne!(v.node, "j-n2");
        // Drain stops a node's sessions and takes no new ones.
        let v = create(&c, ADMIN, 1500).await.unwrap();
        assert_eq!(
            c.call("POST", &format!("/v1/nodes/{}/drain", v.node), ADMIN, None)
                .await
                .0,
            204
        );
        until_status(
            &admin,
            "drained session stopped",
            &v.id,
            SessionStatus::Stopped,
        )
        .await;
        // DELETE stops at once: the agent stops running it, then it is stopped.
        // (Raw: the answer is exactly 204.)
        let sid = create(&c, ADMIN, 100).await.unwrap().id;
        assert_eq!(
            c.call("DELETE", &format!("/v1/sessions/{sid}"), ADMIN, None)
                .await
                .0,
            204
        );
        until_status(
            &admin,
            "deleted session stopped",
            &sid,
            SessionStatus::Stopped,
        )
        .await;
        assert_eq!(
            c.call("POST", "/v1/nodes/nosuch/cordon", ADMIN, None)
                .await
                .0,
            404
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ttl_and_idle_timeouts_stop_sessions() {
    for db in backends() {
        let url = database(db, "ttl").await;
        let c = TestControl::start(config(&url, Strategy::Spread)).await;
        let agents = three_nodes(&c, "x").await;
        let admin = c.client(ADMIN);
        let short = CreateSession {
            ttl_seconds: Some(10),
            memory_mb: Some(64),
            ..Default::default()
        };
        let idling = CreateSession {
            idle_timeout_seconds: Some(10),
            memory_mb: Some(64),
            ..Default::default()
        };
        let short = admin.create_session(&short).await.unwrap();
        let idle = admin.create_session(&idling).await.unwrap();
        let active = admin.create_session(&idling).await.unwrap();
        // Agents report `idle` as idle for a minute; `active` as just used.
        for a in &agents {
            a.idle_ms.lock().unwrap().insert(idle.id.clone(), 60_000);
        }
        until_status(&admin, "ttl expiry", &short.id, SessionStatus::Stopped).await;
        until_status(&admin, "idle expiry", &idle.id, SessionStatus::Stopped).await;
        let a = admin.session(&active.id).await.unwrap();
        assert_eq!(
            a.status,
            SessionStatus::Running,
            "an active session must stay: {a:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_loses_nothing_and_jwks_stays() {
    for db in backends() {
        let url = database(db, "restart").await;
        let cfg = config(&url, Strategy::Spread);
        let c = TestControl::start(cfg.clone()).await;
        let _agents = three_nodes(&c, "r").await;
        let id = create(&c, ADMIN, 100).await.unwrap().id;
        let (_, jwks1) = c.call("GET", "/.well-known/jwks.json", ADMIN, None).await;
        drop(c);
        let c = TestControl::start(cfg).await;
        let admin = c.client(ADMIN);
        let v = admin.session(&id).await.unwrap();
        assert_eq!(v.status, SessionStatus::Running);
        let (_, jwks2) = c.call("GET", "/.well-known/jwks.json", ADMIN, None).await;
        assert_eq!(jwks1, jwks2, "signing key must survive a restart");
        let t = admin.token(&id, None).await.unwrap();
        assert_eq!(scope_of(&t.token), "terminal preview");
        // Scoped tokens: a preview token carries only `preview`.
        for want in ["preview", "terminal"] {
            let t = admin.token(&id, Some(want)).await.unwrap();
            assert_eq!(t.scope, want);
            assert_eq!(scope_of(&t.token), want);
        }
        let (s, e) = refused(admin.token(&id, Some("root")).await);
        assert_eq!(s, 422, "{e:?}");
        assert!(e.message.contains("root"), "{e:?}");
        // (Raw: no typed body has an unknown field.)
        let (s, t) = c
            .call(
                "POST",
                &format!("/v1/sessions/{id}/token"),
                ADMIN,
                Some(json!({"scopes": "preview"})),
            )
            .await;
        assert_eq!(s, 400, "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_never_overcommit() {
    if !backends().iter().any(|d| matches!(d, Db::Postgres)) {
        return;
    }
    let url = database(Db::Postgres, "replicas").await;
    // Started together, as a cluster's replicas are: both store the same
    // admin key and the default tenant at once.
    let (a, b) = tokio::join!(
        TestControl::start(config(&url, Strategy::Spread)),
        TestControl::start(config(&url, Strategy::Spread))
    );
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    let _agents = three_nodes(&a, "rep").await;
    let mut js = tokio::task::JoinSet::new();
    for i in 0..50 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        js.spawn(async move { create(&c, ADMIN, 300).await });
    }
    let mut ok = 0;
    while let Some(r) = js.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.status(), Some(503), "unexpected {e}"),
        }
    }
    assert_eq!(ok, 19);
    for node in b.listed_nodes().await {
        assert!(
            node["reserved_mb"].as_i64().unwrap() <= node["allocatable_mb"].as_i64().unwrap(),
            "over-committed {node}"
        );
    }
}

/// Guessing from one address: 30 failed sign-ins, then 429 without a
/// database query; junk joins stop at 20 a minute; the answers name why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guessing_addresses_are_rate_limited() {
    let url = database(Db::Sqlite, "limits").await;
    let c = TestControl::start(config(&url, Strategy::Spread)).await;
    let wrong = c.client("wa_wrong_key");
    let mut statuses = Vec::new();
    for _ in 0..32 {
        statuses.push(refused(wrong.sessions().await).0);
    }
    assert!(statuses[..30].iter().all(|s| *s == 401), "{statuses:?}");
    let (s, e) = refused(wrong.sessions().await);
    assert_eq!(s, 429, "{e:?}");
    assert_eq!(e.code, "rate_limited");
    assert!(e.message.contains("sign-ins"), "{e:?}");

    let c = TestControl::start(config(
        &database(Db::Sqlite, "limits2").await,
        Strategy::Spread,
    ))
    .await;
    let mut last = 0;
    for i in 0..21 {
        let r = FakeAgent::join(&c.url, "junk-token", &format!("junk-{i}"), 1000).await;
        last = r.err().unwrap().0;
        if i < 20 {
            assert_eq!(last, 403, "join {i}");
        }
    }
    assert_eq!(last, 429);
}

/// Images that would make a worker's engine reach a registry the operator
/// did not list (an internal address, say) are refused before placement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_from_unlisted_registries_are_refused() {
    let url = database(Db::Sqlite, "images").await;
    let c = TestControl::start(config(&url, Strategy::Spread)).await;
    let admin = c.client(ADMIN);
    let with_image = |image: &str| CreateSession {
        image: Some(image.into()),
        ..Default::default()
    };
    for image in [
        "10.0.0.5:5000/x",
        "localhost/x",
        "registry.internal.example/team/app:1",
        "169.254.169.254/latest",
    ] {
        let (s, e) = refused(admin.create_session(&with_image(image)).await);
        assert_eq!(s, 422, "{image}: {e:?}");
        assert_eq!(e.code, "registry_not_allowed", "{image}: {e:?}");
    }
    for image in ["a b", "x\\ny", "img$(id)", ""] {
        let (s, e) = refused(admin.create_session(&with_image(image)).await);
        assert_eq!(s, 422, "{image:?}: {e:?}");
        assert_eq!(e.code, "invalid", "{image:?}: {e:?}");
    }
    assert_eq!(
        warren_control::api::image_registry("warren/session:mini"),
        None
    );
    assert_eq!(
        warren_control::api::image_registry("docker.io/library/busybox"),
        Some("docker.io")
    );
    assert_eq!(warren_control::api::image_registry("busybox"), None);
}

/// A client that sends a request head slowly, or nothing at all, is cut
/// off after the header-read timeout instead of holding its connection
/// (and its slot) for ever; others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_silent_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = TestControl::start(config(
        &database(Db::Sqlite, "slowloris").await,
        Strategy::Spread,
    ))
    .await;
    let addr = c.url.trim_start_matches("http://").to_owned();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A whole request is answered while those two hang.
    assert_eq!(refused(c.client("wa_wrong_key").sessions().await).0, 401);
    let deadline = warren_control::tls::HEADER_READ_TIMEOUT * 3;
    for (what, conn) in [("silent", &mut silent), ("slow", &mut slow)] {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(deadline, async {
            loop {
                // Keep trickling a header line now and then, as a slowloris
                // client does; the server must close all the same.
                let mut chunk = [0u8; 512];
                match tokio::time::timeout(std::time::Duration::from_secs(1), conn.read(&mut chunk))
                    .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => {
                        if what == "slow" {
                            let _ = conn.write_all(b"X-Slow: 1\r\n").await;
                        }
                    }
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the {what} client still holds its connection after {deadline:?}"
        );
        // Nothing but possibly an error status came back, never a response
        // to the unfinished request.
        let text = String::from_utf8_lossy(&buf);
        assert!(!text.contains("200 OK"), "{what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_must_match_the_operators_patterns() {
    let url = database(Db::Sqlite, "images").await;
    let mut cfg = config(&url, Strategy::Spread);
    cfg.sessions.allowed_images = vec!["warren/session:*".into(), "docker.io/library/*".into()];
    let c = TestControl::start(cfg).await;
    let _agents = c.nodes("i", &[2000]).await;
    let with = |image: &str| CreateSession {
        image: Some(image.into()),
        memory_mb: Some(128),
        ..Default::default()
    };
    let admin = c.client(ADMIN);
    let (s, e) = refused(admin.create_session(&with("evil/miner:1")).await);
    assert_eq!((s, e.code.as_str()), (422, "image_not_allowed"), "{e:?}");
    assert!(
        e.message
            .contains("sessions.allowed_images (warren/session:*, docker.io/library/*)"),
        "{e:?}"
    );
    // The registry rule still comes first.
    let (s, e) = refused(admin.create_session(&with("ghcr.io/acme/x:1")).await);
    assert_eq!((s, e.code.as_str()), (422, "registry_not_allowed"), "{e:?}");
    // As written or as pulled: `ubuntu:24.04` is docker.io/library/ubuntu.
    for ok in ["ubuntu:24.04", "warren/session:dind"] {
        let s = admin.create_session(&with(ok)).await.unwrap();
        assert_eq!(s.image, ok);
    }
    // The default image (warren/session:mini) is checked like any other.
    admin
        .create_session(&CreateSession {
            memory_mb: Some(128),
            ..Default::default()
        })
        .await
        .unwrap();
}
