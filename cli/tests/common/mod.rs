//! Shared by the CLI crate's end-to-end tests.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use warren_testkit::{TEST_LABEL, TestRun};

/// The whole stack as `warren up` wires it, on loopback, for the test
/// `name`: containers labelled with the run's label, on the run's network,
/// data under the run's directory; everything is removed when the run is
/// dropped. `None` (the test skips) without Docker.
#[allow(dead_code)] // each test binary uses part of this module
pub async fn stack(
    name: &str,
    image: &str,
    session_memory_mb: u64,
) -> Option<(TestRun, warren::stack::Stack)> {
    stack_with(name, image, session_memory_mb, |_| {}).await
}

/// [`stack`], with its options changed by `f` first.
#[allow(dead_code)] // each test binary uses part of this module
pub async fn stack_with(
    name: &str,
    image: &str,
    session_memory_mb: u64,
    f: impl FnOnce(&mut warren::stack::StackOptions),
) -> Option<(TestRun, warren::stack::Stack)> {
    if !warren_testkit::docker_or_skip() {
        return None;
    }
    let run = TestRun::new(name);
    let mut opts =
        warren::stack::StackOptions::loopback(TEST_LABEL, &run.id, image, 4096, session_memory_mb);
    // `loopback` names its directory and network as the run does.
    assert_eq!((&opts.data_dir, &opts.network), (&run.dir, &run.network));
    opts.data_dir = run.dir.join("stack");
    f(&mut opts);
    let st = warren::stack::start(opts).await.unwrap();
    Some((run, st))
}

/// A free loopback TCP port (for configs that must name their ports).
#[allow(dead_code)] // each test binary uses part of this module
pub fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free loopback UDP port (a relay's tunnel listener).
#[allow(dead_code)] // each test binary uses part of this module
pub fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One control API call: its status and JSON body (`null` if none).
#[allow(dead_code)] // each test binary uses part of this module
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_with(&reqwest::Client::new(), base, method, path, key, body).await
}

/// A new tenant called `name` and an API key of it, made with the admin key.
#[allow(dead_code)] // each test binary uses part of this module
pub async fn tenant_key(base: &str, admin: &str, name: &str) -> String {
    let (s, t) = call(
        base,
        "POST",
        "/v1/tenants",
        admin,
        Some(serde_json::json!({ "name": name })),
    )
    .await;
    assert_eq!(s, 201, "tenant {name}: {t}");
    let (s, k) = call(
        base,
        "POST",
        &format!("/v1/tenants/{}/api-keys", t["id"].as_str().unwrap()),
        admin,
        None,
    )
    .await;
    assert_eq!(s, 201, "key of {name}: {k}");
    k["key"].as_str().unwrap().to_string()
}

/// [`call`] with a client of the test's own (one that trusts a private CA).
pub async fn call_with(
    c: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{base}{path}"),
        )
        .bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

/// `warren loadtest` flags written as one line, parsed as the command line
/// parses them, with the report going to `out` and no progress bar.
#[allow(dead_code)] // each test binary uses part of this module
pub fn loadtest_args(line: &str, out: &std::path::Path) -> warren_loadtest::Args {
    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        args: warren_loadtest::Args,
    }
    let mut v = vec!["loadtest".to_string()];
    v.extend(line.split_whitespace().map(String::from));
    v.extend(["--out".into(), out.display().to_string(), "--quiet".into()]);
    <Cmd as clap::Parser>::parse_from(v).args
}
