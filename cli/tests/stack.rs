//! The whole stack as `warren up` wires it (control on SQLite, relay, a
//! real agent that joined with a token, real Docker), on 127.0.0.1:0.
#![allow(clippy::unwrap_used)]

mod common;
use common::call;
use warren_testkit::{until, until_ok};

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The session's terminal through the relay's plain-HTTP listener.
async fn shell(
    http: std::net::SocketAddr,
    id: &str,
    token: &str,
) -> Result<warren_testkit::Term<tokio::net::TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let url = format!(
        "ws://{id}.warren.localhost:{}/_warren/terminal?token={token}",
        http.port()
    );
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
    Ok(warren_testkit::Term::new(ws).await)
}

async fn http_get(addr: std::net::SocketAddr, host: &str, path: &str, bearer: &str) -> u16 {
    raw(
        addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bearer}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_to_shell_and_back() {
    let Some((_run, mut st)) = common::stack("stack", "warren/session:mini", 128).await else {
        return;
    };
    let base = st.control_url.clone();
    let http = st.http.unwrap();

    // Create through the API: it answers once the session runs.
    let (s, a) = call(
        &base,
        "POST",
        "/v1/sessions",
        &st.admin_key,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let token = a["token"].as_str().unwrap().to_string();
    assert!(
        a["url"]
            .as_str()
            .unwrap()
            .contains(&format!("{id}.warren.localhost"))
    );

    // The node says how it isolates sessions (after its first heartbeat,
    // which preceded the session's start).
    let (s, n) = call(&base, "GET", "/v1/nodes", &st.admin_key, None).await;
    assert_eq!(s, 200, "{n}");
    let profile = n["nodes"][0]["security_profile"].as_str().unwrap_or("");
    assert!(["dind", "default"].contains(&profile), "{n}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert_eq!(profile, "dind", "CI's engine remaps user namespaces: {n}");
    }
    assert!(n["nodes"][0]["disk_limits"].is_boolean(), "{n}");

    // Its shell, through the relay.
    let mut t = shell(http, &id, &token).await.unwrap();
    t.send("echo $((6*7))").await;
    t.expect_within("42\r\n", Duration::from_secs(30)).await;

    // Control restarts: meanwhile the relay keeps accepting the valid token
    // (cached), and afterwards every session is still there.
    st.control.task.abort();
    let _ = (&mut st.control.task).await;
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "control should be down"
    );
    let mut t2 = shell(http, &id, &token)
        .await
        .expect("relay refused a valid token while control was down");
    t2.send("echo $((7*7))").await;
    t2.expect_within("49\r\n", Duration::from_secs(30)).await;
    let l = tokio::net::TcpListener::bind(st.control_config.listen)
        .await
        .unwrap();
    let _control2 = warren_control::start(st.control_config.clone(), l, st.stop.clone())
        .await
        .unwrap();
    let (s, v) = call(
        &base,
        "GET",
        &format!("/v1/sessions/{id}"),
        &st.admin_key,
        None,
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("running")), "{v}");

    // A session past its TTL is stopped and its container removed.
    let (s, short) = call(
        &base,
        "POST",
        "/v1/sessions",
        &st.admin_key,
        Some(json!({"ttl_seconds": 10})),
    )
    .await;
    assert_eq!(s, 201, "{short}");
    let short_id = short["id"].as_str().unwrap().to_string();

    // Another tenant: 404 through the API, 403 with its token on A's host.
    let kb = &common::tenant_key(&base, &st.admin_key, "globex").await;
    assert_eq!(
        call(&base, "GET", &format!("/v1/sessions/{id}"), kb, None)
            .await
            .0,
        404
    );
    let (s, b) = call(&base, "POST", "/v1/sessions", kb, Some(json!({}))).await;
    assert_eq!(s, 201, "{b}");
    let tb = b["token"].as_str().unwrap();
    assert_eq!(
        http_get(
            http,
            &format!("{id}.warren.localhost"),
            "/_warren/terminal",
            tb
        )
        .await,
        403
    );
    assert_eq!(
        http_get(
            http,
            &format!("{id}.warren.localhost"),
            "/_warren/terminal",
            "garbage"
        )
        .await,
        401
    );

    // Delete: the container goes away.
    assert_eq!(
        call(
            &base,
            "DELETE",
            &format!("/v1/sessions/{id}"),
            &st.admin_key,
            None
        )
        .await
        .0,
        204
    );
    let every = Duration::from_millis(100);
    until(
        &format!("the container of {id} to go"),
        Duration::from_secs(30),
        every,
        || async { session_containers(&id).await.is_empty() },
    )
    .await;
    until_ok(
        "the session to stop",
        Duration::from_secs(30),
        every,
        || async {
            let status = session_status(&base, &st.admin_key, &id).await;
            match status.as_str() {
                "stopped" => Ok(()),
                _ => Err(format!("session stays {status}")),
            }
        },
    )
    .await;
    until_ok(
        "the TTL session to stop and its container to go",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let gone = session_containers(&short_id).await.is_empty();
            let status = session_status(&base, &st.admin_key, &short_id).await;
            match (gone, status.as_str()) {
                (true, "stopped") => Ok(()),
                _ => Err(format!("TTL session still {status} / container present")),
            }
        },
    )
    .await;
    st.stop.cancel();
}

/// The session's containers (`docker ps -aq`), stopped ones too.
async fn session_containers(session: &str) -> Vec<u8> {
    let o = tokio::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=warren.session={session}"),
        ])
        .output()
        .await
        .unwrap();
    o.stdout
}

/// The session's status as the API reports it (`""` if none).
async fn session_status(base: &str, key: &str, session: &str) -> String {
    call(base, "GET", &format!("/v1/sessions/{session}"), key, None)
        .await
        .1["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Runs `docker inspect -f FORMAT` on the session's container.
fn inspect(session: &str, format: &str) -> String {
    let id = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=warren.session={session}"),
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
    assert!(!id.is_empty(), "no container for session {session}");
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", format, &id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_config_file_keys_change_what_the_agent_does() {
    let Some((mut run, mut st)) = common::stack("agentcfg", "warren/session:mini", 128).await
    else {
        return;
    };
    let cfg_network = format!("{}-cfg", run.network);
    let node = format!("n{}", std::process::id());
    run.also_remove(format!("warren.test=x{}", run.id), &[&cfg_network]);
    run.also_remove(format!("warren.node={node}"), &[]);
    let base = st.control_url.clone();
    let key = st.admin_key.clone();
    // A second control replica on the same database, for failover.
    let mut cfg2 = st.control_config.clone();
    cfg2.listen = "127.0.0.1:0".parse().unwrap();
    let l2 = tokio::net::TcpListener::bind(cfg2.listen).await.unwrap();
    let base2 = format!("http://{}", l2.local_addr().unwrap());
    let _replica2 = warren_control::start(cfg2, l2, st.stop.clone())
        .await
        .unwrap();

    // The stack's own node takes no new sessions: they land on the agent
    // under test.
    let (s, n) = call(&base, "GET", "/v1/nodes", &key, None).await;
    assert_eq!(s, 200, "{n}");
    let own = n["nodes"][0]["id"].as_str().unwrap().to_string();
    let (s, b) = call(
        &base,
        "POST",
        &format!("/v1/nodes/{own}/cordon"),
        &key,
        None,
    )
    .await;
    assert!(s < 300, "{s} {b}");
    let (s, t) = call(
        &base,
        "POST",
        "/v1/nodes/join-tokens",
        &key,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let join = t["token"].as_str().unwrap().to_string();

    // Every key that changes what the agent does, set away from its default.
    let dir = run.dir.join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            r#"control_url = "{base},{base2}"
node_id = "{node}"
data_dir = "{data}"
memory_mb = 3000

[docker]
init_binary = "{init}"
network = "{cfg_network}"
security = "default"
default_image = "warren/session:mini"
pids_limit = 77
default_disk_mb = 0

[terminal]
detached_timeout_secs = 123
replay_bytes = 131072

[admin]
listen = "127.0.0.1:0"
"#,
            data = dir.join("data").display(),
            init = std::fs::canonicalize(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/x86_64-unknown-linux-gnu/release/warren-init"
            ))
            .unwrap()
            .display()
        ),
    )
    .unwrap();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["agent", "--config"])
        .arg(&file)
        .args(["--join", &join])
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The node joins with the config's id and memory and reports its profile.
    let every = Duration::from_millis(200);
    let me = until_ok(
        "the node to report",
        Duration::from_secs(60),
        every,
        || async {
            let (_, n) = call(&base, "GET", "/v1/nodes", &key, None).await;
            n["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["id"] == node.as_str() && x["security_profile"] != "")
                .cloned()
                .ok_or_else(|| format!("node {node} never reported: {n}"))
        },
    )
    .await;
    assert_eq!(me["allocatable_mb"], 3000, "memory_mb: {me}");
    assert_eq!(me["security_profile"], "default", "docker.security: {me}");
    assert!(dir.join("data/node.json").is_file(), "data_dir");
    let metrics_addr = me["metrics_addr"]
        .as_str()
        .expect("admin.listen: the node names its metrics address")
        .to_string();

    let (s, a) = call(&base, "POST", "/v1/sessions", &key, Some(json!({}))).await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    assert_eq!(a["node"], node.as_str(), "{a}");
    assert_eq!(
        inspect(&id, "{{.HostConfig.PidsLimit}}"),
        "77",
        "docker.pids_limit"
    );
    assert_eq!(
        inspect(&id, "{{.HostConfig.NetworkMode}}"),
        cfg_network,
        "docker.network"
    );
    assert!(
        inspect(&id, "{{json .HostConfig.CapDrop}}").contains("NET_RAW"),
        "docker.security = default drops NET_RAW"
    );
    let args = inspect(&id, "{{json .Args}}");
    assert!(
        args.contains(r#""--detached-timeout","123""#),
        "terminal.detached_timeout_secs: {args}"
    );
    assert!(
        args.contains(r#""--replay-bytes","131072""#),
        "terminal.replay_bytes: {args}"
    );
    // And it serves: a shell through the relay.
    let token = a["token"].as_str().unwrap();
    let mut t = shell(st.http.unwrap(), &id, token).await.unwrap();
    t.send("echo cfg-$((3*3))").await;
    t.expect_within("cfg-9", Duration::from_secs(30)).await;

    // Its metrics, as Prometheus would scrape them.
    let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        "warren_agent_sessions 1",
        "warren_agent_terminals_open 1",
        "warren_agent_relays_connected 1",
        "warren_agent_heartbeats_total{outcome=\"ok\"}",
        "warren_agent_terminal_bytes_total{direction=\"out\"}",
    ] {
        assert!(text.contains(want), "no {want} in:\n{text}");
    }

    // The replica it joined through goes away: heartbeats move to the other.
    st.control.task.abort();
    let _ = (&mut st.control.task).await;
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let me = until_ok(
        "a heartbeat at the surviving replica",
        Duration::from_secs(60),
        every,
        || async {
            let (s, n) = call(&base2, "GET", "/v1/nodes", &key, None).await;
            assert_eq!(s, 200, "{n}");
            let me = n["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["id"] == node.as_str())
                .cloned()
                .unwrap();
            match me["last_heartbeat_ms"].as_i64().unwrap() > killed {
                true => Ok(me),
                false => Err(format!("no heartbeat reached the surviving replica: {me}")),
            }
        },
    )
    .await;
    assert_eq!(me["state"], "ready", "{me}");

    // SIGTERM: the agent stops its tasks and exits on its own.
    let pid = agent.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("the agent did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// One raw HTTP/1.1 request; `(status, headers, body)`.
async fn raw(addr: std::net::SocketAddr, req: String) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn set_cookie(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_renews_its_token_until_the_session_ends() {
    let Some((_run, st)) = common::stack("refresh", "warren/session:mini", 128).await else {
        return;
    };
    let base = st.control_url.clone();
    let http = st.http.unwrap();
    let create = || {
        call(
            &base,
            "POST",
            "/v1/sessions",
            &st.admin_key,
            Some(json!({})),
        )
    };
    let (s, a) = create().await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = create().await;
    assert_eq!(s, 201, "{b}");
    let id = a["id"].as_str().unwrap().to_string();
    let other = b["id"].as_str().unwrap().to_string();
    let host = format!("{id}.warren.localhost:{}", http.port());
    let origin = format!("http://{host}");

    // The link's token is exchanged for a cookie and a refresh grant.
    let (s, head, _) = raw(
        http,
        format!(
            "GET /?token={} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            a["token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(s, 303, "{head}");
    let grant = set_cookie(&head, "warren_refresh").expect("a refresh grant cookie");
    assert!(head.contains("SameSite=Strict"), "{head}");
    let refresh = |origin: Option<String>, host: String, grant: String| async move {
        let o = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        raw(
            http,
            format!(
                "POST /_warren/refresh HTTP/1.1\r\nHost: {host}\r\n{o}Cookie: warren_refresh={grant}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .await
    };

    // The page renews: a new token cookie that opens the terminal.
    let (s, head, _) = refresh(Some(origin.clone()), host.clone(), grant.clone()).await;
    assert_eq!(s, 204, "{head}");
    // (Minted in the same second as the link's token it is byte-for-byte
    // the same JWT: Ed25519 signatures are deterministic. What matters is
    // that the renewal hands out a valid token cookie.)
    let fresh = set_cookie(&head, "warren_token").expect("a new token cookie");
    assert!(head.contains("Max-Age="), "{head}");
    let mut t = shell(http, &id, &fresh).await.unwrap();
    t.send("echo renewed-$((2+3))").await;
    t.expect_within("renewed-5", Duration::from_secs(30)).await;

    // Only the page itself, only with its own grant.
    let (s, _, _) = refresh(None, host.clone(), grant.clone()).await;
    assert_eq!(s, 403, "no Origin");
    let (s, _, _) = refresh(
        Some(format!("http://{other}.warren.localhost:{}", http.port())),
        host.clone(),
        grant.clone(),
    )
    .await;
    assert_eq!(s, 403, "another session's origin");
    let other_host = format!("{other}.warren.localhost:{}", http.port());
    let (s, _, _) = refresh(
        Some(format!("http://{other_host}")),
        other_host.clone(),
        grant.clone(),
    )
    .await;
    assert_eq!(s, 401, "a grant opens only its own session");
    let forged = format!("wr_{}", "A".repeat(40));
    let (s, _, _) = refresh(Some(origin.clone()), host.clone(), forged).await;
    assert_eq!(s, 401, "an unknown grant");

    // Deleting the session ends its grants: the page learns it has ended.
    let (s, _) = call(
        &base,
        "DELETE",
        &format!("/v1/sessions/{id}"),
        &st.admin_key,
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, head, _) = refresh(Some(origin.clone()), host.clone(), grant).await;
    assert_eq!(s, 404, "{head}");

    // One address cannot make the relay ask control without end: after a
    // minute's worth of renewals it gets 429 and Retry-After, unchecked.
    let mut first_limited = None;
    for i in 0..80 {
        let forged = format!("wr_{:0>40}", i);
        let (s, head, _) = refresh(
            Some(format!("http://{other_host}")),
            other_host.clone(),
            forged,
        )
        .await;
        if s == 429 {
            assert!(
                head.to_ascii_lowercase().contains("retry-after: 60"),
                "{head}"
            );
            first_limited = Some(i);
            break;
        }
        assert_eq!(s, 401, "{head}");
    }
    let n = first_limited.expect("80 renewals from one address in a minute were all checked");
    assert!(n >= 50, "limited after only {n} renewals");
}
