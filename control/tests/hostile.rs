//! What a hostile client sends control, and what it gets: malformed
//! bodies, values that would fail on a worker, names that forge text,
//! leaked links and their grants, a node that claims too much.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use serde_json::{Value, json};
use warren_config::Strategy;
use warren_proto::api::CreateSession;
use warren_proto::internal::{GrantRequest, GrantResponse, RefreshRequest, RefreshResponse};

const RELAY: &str = "test-relay-secret-0123456789";

/// A raw request with any body and content type: `(status, JSON body)`.
async fn raw(c: &TestControl, path: &str, key: &str, ctype: &str, body: &str) -> (u16, Value) {
    let r = c
        .http
        .post(format!("{}{path}", c.url))
        .bearer_auth(key)
        .header("content-type", ctype)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("not the JSON error shape ({status}): {text:?}"));
    (status, v)
}

fn token_in(url: &str) -> &str {
    url.split("?token=").nth(1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_bodies_get_4xx_in_the_json_shape() {
    let url = database(Db::Sqlite, "hostile-bodies").await;
    let c = TestControl::start(config(&url, Strategy::Spread)).await;
    let _agents = c.nodes("hb", &[4000]).await;

    // What the README shows, with curl's form content type: it works.
    let (s, v) = raw(
        &c,
        "/v1/sessions",
        ADMIN,
        "application/x-www-form-urlencoded",
        r#"{"memory_mb": 256}"#,
    )
    .await;
    assert_eq!(s, 201, "{v}");

    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "an array read by position",
            r#"["warren/session:mini", 256]"#,
            400,
            "JSON object",
        ),
        ("not JSON", "memory_mb=256", 400, "not valid JSON"),
        ("cut short", r#"{"memory_mb": 2"#, 400, "not complete"),
        ("a wrong type", r#"{"memory_mb": "lots"}"#, 400, "integer"),
        ("an unknown field", r#"{"imgae": "x"}"#, 400, "imgae"),
        (
            "a CPU share the engine cannot give",
            r#"{"cpus": 0.0001}"#,
            422,
            "cpus",
        ),
        (
            "an engine flag as image",
            r#"{"image": "--privileged"}"#,
            422,
            "image",
        ),
        ("an image with a space", r#"{"image": "a b"}"#, 422, "image"),
        ("4 TiB of disk", r#"{"disk_mb": 4194304}"#, 422, "disk_mb"),
        (
            "disk over the maximum",
            r#"{"disk_mb": 65537}"#,
            422,
            "sessions.max_disk_mb",
        ),
    ];
    for (what, body, want, says) in cases {
        let (s, v) = raw(&c, "/v1/sessions", ADMIN, "application/json", body).await;
        assert_eq!(s, *want, "{what}: {v}");
        let message = api_error(&v).message;
        assert!(message.contains(says), "{what}: {message}");
        assert!(
            !message.contains(" at line ") && !message.contains("Failed to deserialize"),
            "{what}: serde's words: {message}"
        );
    }

    // Names that forge log lines or read as other names.
    for name in [
        "a\u{0}b",
        "evil\r\nINFO admin logged in",
        "txt.\u{202E}exe",
        "  ",
    ] {
        let (s, v) = c
            .call("POST", "/v1/tenants", ADMIN, Some(json!({ "name": name })))
            .await;
        assert_eq!(s, 422, "{name:?}: {v}");
        api_error(&v);
    }
    let (s, v) = c
        .call(
            "POST",
            "/v1/tenants",
            ADMIN,
            Some(json!({"name": "Ünïcödé Ltd"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_are_scoped_and_grants_end() {
    let url = database(Db::Sqlite, "hostile-links").await;
    let c = TestControl::start(config(&url, Strategy::Spread)).await;
    let _agents = c.nodes("hl", &[4000]).await;
    let admin = c.client(ADMIN);
    let v = admin
        .create_session(&CreateSession {
            memory_mb: Some(256),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = v.id.clone();

    // Separate links: the preview link can never open a terminal.
    let links = v.links.as_ref().expect("a create answers with links");
    let (terminal, preview) = (links.terminal.as_str(), links.preview.as_str());
    assert_eq!(v.url, terminal);
    assert!(terminal.starts_with(&format!("https://{id}.warren.localhost:8443/?token=")));
    assert!(preview.starts_with(&format!(
        "https://{{port}}-{id}.warren.localhost:8443/?token="
    )));
    assert_eq!(scope_of(token_in(terminal)), "terminal");
    assert_eq!(scope_of(token_in(preview)), "preview");

    // A relay exchanges the terminal link's token for a grant, which renews.
    let relay = |path: &'static str, body: Value| {
        let c = &c;
        async move {
            let r = c
                .http
                .post(format!("{}{path}", c.url))
                .bearer_auth(RELAY)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let grant = |t: &str| {
        let body = GrantRequest { token: t.into() };
        relay(
            "/internal/v1/tokens/grant",
            serde_json::to_value(body).unwrap(),
        )
    };
    let granted = |s: u16, g: Value| -> GrantResponse {
        assert_eq!(s, 200, "{g}");
        serde_json::from_value(g).unwrap()
    };
    let (s, g) = grant(token_in(terminal)).await;
    let secret = granted(s, g).refresh_token;
    let refresh = |g: String| {
        let body = RefreshRequest {
            session: id.clone(),
            refresh_token: g,
        };
        relay(
            "/internal/v1/tokens/refresh",
            serde_json::to_value(body).unwrap(),
        )
    };
    let (s, r) = refresh(secret.clone()).await;
    assert_eq!(s, 200, "{r}");
    let r: RefreshResponse = serde_json::from_value(r).unwrap();
    assert_eq!(scope_of(&r.token), "terminal");

    // Revoked: every grant of the session renews nothing.
    let (s, _) = c
        .call("DELETE", &format!("/v1/sessions/{id}/grants"), ADMIN, None)
        .await;
    assert_eq!(s, 204);
    let (s, r) = refresh(secret).await;
    assert_eq!(s, 401, "a revoked grant renewed: {r}");
    // The token the link carried (still valid for minutes) mints no new
    // grant either: revoking ends what the link was exchanged for.
    let (s, g) = grant(token_in(terminal)).await;
    assert_eq!((s, api_error(&g).code.as_str()), (401, "revoked"), "{g}");
    let (_, audit) = c.call("GET", "/v1/audit", ADMIN, None).await;
    assert!(
        audit.to_string().contains("session.grants_revoke"),
        "{audit}"
    );

    // A grant ends with its session. A link minted after the revocation
    // (in a later second than it) gets a grant again.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let g = loop {
        let t = admin.token(&id, Some("terminal")).await.unwrap();
        let (s, g) = grant(&t.token).await;
        if s == 200 {
            break granted(s, g);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no grant after revocation: {g}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let secret = g.refresh_token;
    let (s, _) = c
        .call("DELETE", &format!("/v1/sessions/{id}"), ADMIN, None)
        .await;
    assert_eq!(s, 204);
    let (s, r) = refresh(secret).await;
    assert_eq!(s, 404, "{r}");
    let (s, _) = c
        .call("DELETE", &format!("/v1/sessions/{id}/grants"), ADMIN, None)
        .await;
    assert_eq!(s, 204, "revoking an ended session's grants is not an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cannot_claim_without_end() {
    let url = database(Db::Sqlite, "hostile-node").await;
    let c = TestControl::start(config(&url, Strategy::Spread)).await;
    let t = c.join_token().await;
    let agent = FakeAgent::join(&c.url, &t, "greedy", 1000).await.unwrap();
    // The same node, heartbeating an absurd capacity as a compromised
    // agent would.
    let r = c
        .http
        .post(format!("{}/internal/v1/heartbeat", c.url))
        .bearer_auth(format!("{}:{}", agent.node, agent.credential))
        .json(&json!({
            "allocatable_mb": 1_i64 << 50,
            "free_mb": 1_i64 << 52,
            "disk": {"capacity_mb": i64::MAX, "max_session_mb": i64::MAX},
            "sessions": []
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let nodes = c.listed_nodes().await;
    let node = &nodes[0];
    assert!(
        node["allocatable_mb"].as_i64().unwrap() <= 1 << 30,
        "unclamped: {node}"
    );
    assert!(node["free_mb"].as_i64().unwrap() <= node["allocatable_mb"].as_i64().unwrap());
}
