//! Egress per session at control's edge: what `POST /v1/sessions` takes in
//! `"egress"`, what it refuses (and how it says so), what `GET` shows, and
//! what the session's agent is told, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use serde_json::{Value, json};
use warren_config::Strategy;

/// `POST /v1/sessions` with `egress`: `(status, body)`.
async fn create(c: &TestControl, egress: Value) -> (u16, Value) {
    c.call(
        "POST",
        "/v1/sessions",
        ADMIN,
        Some(json!({"memory_mb": 64, "egress": egress})),
    )
    .await
}

/// What the node's watch hands its agent for `session`.
async fn desired(c: &TestControl, node: &FakeAgent, session: &str) -> Value {
    let v: Value = c
        .http
        .get(format!("{}/internal/v1/watch?index=0", c.url))
        .bearer_auth(format!("{}:{}", node.node, node.credential))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == session)
        .cloned()
        .unwrap_or_else(|| panic!("{session} not in the watch: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn egress_is_checked_stored_shown_and_handed_to_the_agent() {
    for db in backends() {
        let url = database(db, "egress").await;
        let c = TestControl::start(config(&url, Strategy::Spread)).await;
        let agents = c.nodes("eg", &[4000]).await;

        // Listed CIDRs, in their one spelling.
        let (s, v) = create(&c, json!(["192.168.0.0/16", "10.0.0.0/8", "10.0.0.0/8"])).await;
        assert_eq!(s, 201, "{db:?}: {v}");
        let id = v["id"].as_str().unwrap().to_string();
        assert_eq!(v["egress"], json!(["10.0.0.0/8", "192.168.0.0/16"]));
        let (s, got) = c
            .call("GET", &format!("/v1/sessions/{id}"), ADMIN, None)
            .await;
        assert_eq!(s, 200, "{got}");
        assert_eq!(got["egress"], json!(["10.0.0.0/8", "192.168.0.0/16"]));
        assert_eq!(
            desired(&c, &agents[0], &id).await["egress"],
            json!(["10.0.0.0/8", "192.168.0.0/16"]),
            "{db:?}"
        );

        // No egress: as before, and the agent's spec does not mention it.
        for none in [json!("none"), Value::Null] {
            let (s, v) = create(&c, none).await;
            assert_eq!(s, 201, "{v}");
            assert_eq!(v["egress"], "none");
            let d = desired(&c, &agents[0], v["id"].as_str().unwrap()).await;
            assert!(d.get("egress").is_none(), "{d}");
        }

        // Refusals: 422 naming what is wrong, no session made.
        let many: Vec<String> = (0..33).map(|i| format!("10.{i}.0.0/16")).collect();
        let cases = [
            (json!(["10.0.0.1/8"]), "invalid", "did you mean 10.0.0.0/8?"),
            (json!(["10.0.0.0/33"]), "invalid", "prefix length"),
            (json!(["lan"]), "invalid", "not an IPv4 CIDR"),
            (json!(["fd00::/8"]), "invalid", "IPv6"),
            (json!(many), "invalid", "at most 32"),
            (json!(["169.254.169.254"]), "invalid", "never reachable"),
            (
                json!("internet"),
                "egress_not_allowed",
                "sessions.allow_internet_egress",
            ),
            (
                json!(["0.0.0.0/0"]),
                "egress_not_allowed",
                "sessions.allow_internet_egress",
            ),
            (
                json!(["10.0.0.0/8", "8.8.8.8"]),
                "egress_not_allowed",
                "8.8.8.8/32",
            ),
        ];
        let before = c.call("GET", "/v1/sessions", ADMIN, None).await.1["sessions"]
            .as_array()
            .unwrap()
            .len();
        for (egress, code, says) in cases {
            let (s, v) = create(&c, egress.clone()).await;
            assert_eq!(s, 422, "{egress}: {v}");
            let e = api_error(&v);
            assert_eq!(e.code, code, "{egress}: {v}");
            assert!(e.message.contains(says), "{egress}: {}", e.message);
        }
        // Not a policy at all: 400, naming the field.
        for shape in [json!("everything"), json!(42), json!({"cidrs": []})] {
            let (s, v) = create(&c, shape.clone()).await;
            assert_eq!(s, 400, "{shape}: {v}");
            assert!(api_error(&v).message.contains("egress"), "{shape}: {v}");
        }
        let after = c.call("GET", "/v1/sessions", ADMIN, None).await.1["sessions"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(before, after, "a refused create made a session");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_may_allow_the_internet() {
    let url = database(Db::Sqlite, "egress-internet").await;
    let mut cfg = config(&url, Strategy::Spread);
    cfg.sessions.allow_internet_egress = true;
    let c = TestControl::start(cfg).await;
    let agents = c.nodes("ei", &[4000]).await;
    let (s, v) = create(&c, json!("internet")).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["egress"], "internet");
    let d = desired(&c, &agents[0], v["id"].as_str().unwrap()).await;
    assert_eq!(d["egress"], "internet");
    let (s, v) = create(&c, json!(["0.0.0.0/0", "8.8.8.8"])).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["egress"], json!(["0.0.0.0/0", "8.8.8.8/32"]));
    // What no session reaches stays refused.
    let (s, v) = create(&c, json!(["127.0.0.1"])).await;
    assert_eq!(s, 422, "{v}");
    assert!(api_error(&v).message.contains("loopback"), "{v}");
}
