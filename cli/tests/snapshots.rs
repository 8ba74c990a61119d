//! Snapshots end to end on the whole stack with real Docker: a session's
//! files saved, a new session started from the snapshot has them, another
//! tenant cannot start it by any name, the count quota holds, and a
//! deleted snapshot's image leaves the worker.
#![allow(clippy::unwrap_used)]

mod common;
use common::call;

use std::time::Duration;

use serde_json::{Value, json};
use warren::client::Client;
use warren_proto::sandbox::ExecRequest;
use warren_testkit::until;

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: Some(cmd.into()),
        ..Default::default()
    }
}

fn engine_has(image: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_start_sessions_for_their_tenant_only() {
    // The agent's warnings (a failed commit says why) in the test's output.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_test_writer()
        .try_init();
    let Some((_run, st)) = common::stack("snapshots", "warren/session:mini", 128).await else {
        return;
    };
    let base = st.control_url.clone();
    let admin = st.admin_key.clone();
    let c = Client::new(&base, &admin, Duration::from_secs(120)).unwrap();
    let create = |body: Value| {
        let (base, admin) = (base.clone(), admin.clone());
        async move { call(&base, "POST", "/v1/sessions", &admin, Some(body)).await }
    };
    let (s, a) = create(json!({})).await;
    assert_eq!(s, 201, "{a}");
    let a = a["id"].as_str().unwrap().to_string();
    let r = c
        .exec(
            &a,
            &sh("mkdir -p /opt/app && echo keep-me > /opt/app/state.txt"),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0), "{r:?}");

    // Names are checked; the snapshot is listed once made.
    let snap = |body: Option<Value>| {
        let (base, admin, a) = (base.clone(), admin.clone(), a.clone());
        async move {
            call(
                &base,
                "POST",
                &format!("/v1/sessions/{a}/snapshot"),
                &admin,
                body,
            )
            .await
        }
    };
    let (s, v) = snap(Some(json!({"name": "Bad/Name"}))).await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = snap(Some(json!({"name": "env1"}))).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["image"], "warren-snapshot/env1");
    assert!(v["size_bytes"].as_i64().unwrap() > 0, "{v}");
    let (s, v) = snap(Some(json!({"name": "env1"}))).await;
    assert_eq!(s, 409, "a taken name: {v}");
    let (s, l) = call(&base, "GET", "/v1/snapshots", &admin, None).await;
    assert_eq!(s, 200);
    assert_eq!(l["snapshots"].as_array().unwrap().len(), 1, "{l}");

    // The CLI: create, list, remove.
    let warren = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["--control-url", &base, "--api-key", &admin])
            .args(args)
            .output()
            .unwrap()
    };
    let o = warren(&["snapshot", "create", &a, "--name", "env2"]);
    assert!(o.status.success(), "{o:?}");
    let o = warren(&["snapshot", "ls"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("warren-snapshot/env1") && out.contains("warren-snapshot/env2"),
        "{out}"
    );
    let o = warren(&["snapshot", "rm", "env2"]);
    assert!(o.status.success(), "{o:?}");

    // A new session from it has the file, and its shell works as before.
    let (s, b) = create(json!({"image": "warren-snapshot/env1"})).await;
    assert_eq!(s, 201, "{b}");
    let engine_image = b["image"].as_str().unwrap().to_string();
    let b = b["id"].as_str().unwrap().to_string();
    let r = c
        .exec(&b, &sh("cat /opt/app/state.txt; echo $((6*7))"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "keep-me\n42\n", "{r:?}");
    assert!(engine_has(&engine_image));

    // Another tenant: neither the name nor the engine's name starts it.
    let rival = &common::tenant_key(&base, &admin, "rival").await;
    for image in [
        "warren-snapshot/env1",
        engine_image.as_str(),
        "docker.io/warren-snapshot/env1",
    ] {
        let (s, v) = call(
            &base,
            "POST",
            "/v1/sessions",
            rival,
            Some(json!({"image": image})),
        )
        .await;
        assert_eq!(s, 404, "{image}: {v}");
    }
    let (_, l) = call(&base, "GET", "/v1/snapshots", rival, None).await;
    assert_eq!(l["snapshots"].as_array().unwrap().len(), 0, "{l}");
    let (s, _) = call(&base, "DELETE", "/v1/snapshots/env1", rival, None).await;
    assert_eq!(s, 404);
    // Nor can it commit one through the relay with a token of its own.
    let (s, v) = call(
        &base,
        "POST",
        &format!("/v1/sessions/{a}/token"),
        &admin,
        Some(json!({"scope": "snapshot"})),
    )
    .await;
    assert_eq!(s, 422, "the snapshot scope is control's own: {v}");

    // Deleted: gone from the list at once, and from the worker once no
    // session runs from it.
    let (s, _) = call(&base, "DELETE", "/v1/snapshots/env1", &admin, None).await;
    assert_eq!(s, 204);
    let (s, v) = create(json!({"image": "warren-snapshot/env1"})).await;
    assert_eq!(s, 404, "{v}");
    c.delete_session(&b).await.unwrap();
    until(
        "the deleted snapshot's image to leave the worker",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async { !engine_has(&engine_image) },
    )
    .await;

    // The audit log names both steps.
    let (_, audit) = call(&base, "GET", "/v1/audit?limit=100", &admin, None).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"snapshot.create") && actions.contains(&"snapshot.delete"));
}
