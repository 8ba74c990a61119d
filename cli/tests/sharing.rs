//! Share links and recordings end to end on the whole stack (real Docker,
//! the relay's edge, the agent, the session's init): a read link sees the
//! owner's output live and its keys never reach the shell (checked in the
//! session, not only on the wire); a write link types; everyone attached is
//! counted; a revoked link and an expired one are cut mid-connection; a
//! share token opens no shell, runs no command and gets no refresh grant;
//! the terminal's recording is asciicast v2 holding what was typed.
#![allow(clippy::unwrap_used)]

mod common;
use common::call;

use std::time::Duration;

use serde_json::{Value, json};
use warren::client::Client;
use warren_proto::sandbox::ExecRequest;
use warren_testkit::{Term, until};

type Ws = Term<tokio::net::TcpStream>;

/// A terminal WebSocket through the relay's plain-HTTP listener.
/// `Err` carries the close code of a connection refused after the
/// handshake (`None` for one refused before it).
async fn connect(http: std::net::SocketAddr, id: &str, query: &str) -> Result<Ws, Option<u16>> {
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let url = format!(
        "ws://{id}.warren.localhost:{}/_warren/terminal?{query}",
        http.port()
    );
    match tokio_tungstenite::client_async(url, tcp).await {
        Ok((ws, _)) => Term::try_new(ws).await,
        Err(_) => Err(None),
    }
}

async fn share(base: &str, key: &str, id: &str, body: Value) -> Value {
    let (s, v) = call(
        base,
        "POST",
        &format!("/v1/sessions/{id}/share"),
        key,
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    v
}

async fn exec(c: &Client, id: &str, cmd: &str) -> String {
    let r = c
        .exec(
            id,
            &ExecRequest {
                command: Some(cmd.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    r.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_links_watch_type_and_end() {
    let Some((_run, st)) = common::stack("sharing", "warren/session:mini", 128).await else {
        return;
    };
    let base = st.control_url.clone();
    let http = st.http.unwrap();
    let key = common::tenant_key(&base, &st.admin_key, "sharers").await;
    let c = Client::new(&base, &key, Duration::from_secs(60)).unwrap();
    let (s, a) = call(&base, "POST", "/v1/sessions", &key, Some(json!({}))).await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let token = a["token"].as_str().unwrap().to_string();

    // A read link before any terminal is open has nothing to show.
    let read = share(&base, &key, &id, json!({"mode": "read", "name": "alice"})).await;
    let read_token = read["token"].as_str().unwrap().to_string();
    assert!(
        read["url"].as_str().unwrap().contains(&format!("{id}.")),
        "{read}"
    );
    let early = connect(http, &id, &format!("token={read_token}")).await;
    assert_eq!(early.err(), Some(Some(4404)));

    // The owner's shell, then a reader on the same terminal.
    let mut owner = connect(http, &id, &format!("token={token}")).await.unwrap();
    owner.run("echo owner-$((40+2))", "owner-42").await;
    let mut reader = connect(http, &id, &format!("token={read_token}"))
        .await
        .unwrap();
    reader.wait_viewers(2).await;
    assert_eq!(reader.access.as_deref(), Some("read"));
    assert_eq!(reader.terminal, owner.terminal);
    assert_eq!(owner.wait_viewers(2).await, vec!["alice".to_string()]);
    // The reader sees what the owner types, live.
    owner.run("echo live-$((2+3))", "live-5").await;
    reader.expect("live-5").await;
    // Its keys and resizes reach nothing: no file, no echo, same size.
    reader.send("echo typed > /tmp/by-reader").await;
    reader.resize(33, 11).await;
    owner.run("stty size; echo mark-$((7*6))", "mark-42").await;
    assert!(!owner.out.contains("typed"));
    assert_eq!(
        exec(&c, &id, "test -e /tmp/by-reader && echo yes || echo no").await,
        "no\n"
    );
    // A read link runs no command and opens no shell of its own.
    let r = connect(
        http,
        &id,
        &format!("token={read_token}&mode=exec&command=id"),
    )
    .await;
    assert!(r.is_err(), "a command with a share token from a link");
    // It gets no refresh grant: the page exchange sets no refresh cookie.
    let (status, head) = page_exchange(http, &id, &read_token).await;
    assert_eq!(status, 303, "{head}");
    assert!(!head.contains("warren_refresh"), "{head}");

    // A write link types into the owner's terminal.
    let write = share(
        &base,
        &key,
        &id,
        json!({"mode": "write", "ttl_seconds": 600}),
    )
    .await;
    let mut writer = connect(
        http,
        &id,
        &format!("token={}", write["token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    writer.wait_viewers(3).await;
    assert_eq!(writer.access.as_deref(), Some("write"));
    writer
        .run(
            "echo w-$((1+1)) > /tmp/by-writer; echo done-$((3+3))",
            "done-6",
        )
        .await;
    owner.expect("done-6").await;
    assert_eq!(exec(&c, &id, "cat /tmp/by-writer").await, "w-2\n");
    owner.wait_viewers(3).await;

    // Listed, then revoked: the reader is cut mid-connection.
    let (s, l) = call(
        &base,
        "GET",
        &format!("/v1/sessions/{id}/shares"),
        &key,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(l["shares"].as_array().unwrap().len(), 2, "{l}");
    assert!(
        l["shares"][0].get("token").is_none(),
        "listing shows no token"
    );
    let rid = read["id"].as_str().unwrap();
    let t0 = std::time::Instant::now();
    let (s, _) = call(
        &base,
        "DELETE",
        &format!("/v1/sessions/{id}/shares/{rid}"),
        &key,
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(reader.wait_close(Duration::from_secs(10)).await, Some(4403));
    println!("revoked link cut after {:?}", t0.elapsed());
    // And it opens nothing any more.
    let again = connect(http, &id, &format!("token={read_token}")).await;
    assert_eq!(again.err(), Some(Some(4403)));
    owner.wait_viewers(2).await;

    // An expiring link is cut when it expires.
    let brief = share(&base, &key, &id, json!({"mode": "read", "ttl_seconds": 2})).await;
    let mut watcher = connect(
        http,
        &id,
        &format!("token={}", brief["token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(
        watcher.wait_close(Duration::from_secs(15)).await,
        Some(4401)
    );

    // Another tenant cannot share or list this session.
    let other = common::tenant_key(&base, &st.admin_key, "strangers").await;
    let (s, _) = call(
        &base,
        "POST",
        &format!("/v1/sessions/{id}/share"),
        &other,
        Some(json!({"mode": "read"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &base,
        "GET",
        &format!("/v1/sessions/{id}/recordings"),
        &other,
        None,
    )
    .await;
    assert_eq!(s, 404);
    // Bad input is named.
    let (s, v) = call(
        &base,
        "POST",
        &format!("/v1/sessions/{id}/share"),
        &key,
        Some(json!({"mode": "admin"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        &base,
        "POST",
        &format!("/v1/sessions/{id}/share"),
        &key,
        Some(json!({"mode": "read", "ttl_seconds": 0})),
    )
    .await;
    assert_eq!(s, 422, "{v}");

    // The recording of the owner's terminal: asciicast v2 with what was typed.
    owner.resize(100, 30).await;
    owner.run("echo rec-$((100+23))", "rec-123").await;
    let terminal = owner.terminal.unwrap();
    let cast: String = warren_testkit::until_ok(
        "the recording holds the typed command's output",
        Duration::from_secs(20),
        Duration::from_millis(300),
        || {
            let (base, key, id) = (base.clone(), key.clone(), id.clone());
            async move {
                let (s, l) = call(
                    &base,
                    "GET",
                    &format!("/v1/sessions/{id}/recordings"),
                    &key,
                    None,
                )
                .await;
                if s != 200 {
                    return Err(format!("{s} {l}"));
                }
                let url = l["recordings"]
                    .as_array()
                    .and_then(|a| a.iter().find(|r| r["terminal"] == terminal))
                    .and_then(|r| r["url"].as_str())
                    .ok_or(format!("not listed yet: {l}"))?
                    .to_string();
                let r = reqwest::Client::new()
                    .get(format!("{base}{url}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let ct = r.headers()["content-type"].to_str().unwrap().to_string();
                assert_eq!(ct, "application/x-asciicast");
                let text = r.text().await.map_err(|e| e.to_string())?;
                if text.contains("rec-123") && text.contains("100x30") {
                    Ok(text)
                } else {
                    Err("not there yet".to_string())
                }
            }
        },
    )
    .await;
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{header}");
    assert!(header["width"].as_u64().unwrap() > 0);
    let mut last = 0.0;
    let mut output = String::new();
    for l in lines {
        let ev: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        let t = ev[0].as_f64().unwrap();
        assert!(t >= last, "times never go back");
        last = t;
        assert!(matches!(ev[1].as_str(), Some("o" | "r")), "{l}");
        if ev[1] == "o" {
            output.push_str(ev[2].as_str().unwrap());
        }
    }
    assert!(
        output.contains("owner-42") && output.contains("live-5"),
        "{output}"
    );
    // The reader's keys are in no recording either.
    assert!(!output.contains("by-reader"), "{output}");
    if let Some(printed) = asciinema_cat(&cast) {
        assert!(printed.contains("rec-123"), "{printed}");
    }
    // Recording downloads are audited.
    until(
        "the download is audited",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let (base, key) = (base.clone(), key.clone());
            async move {
                let (_, a) = call(&base, "GET", "/v1/audit", &key, None).await;
                a.to_string().contains("recording.download") && a.to_string().contains("share.join")
            }
        },
    )
    .await;
    // The page's drag-and-drop upload: with the owner's cookie from its own
    // origin the file lands in /root; a share link's cookie cannot.
    let (_, head) = page_exchange(http, &id, &token).await;
    let cookie = session_cookie(&head);
    let origin = format!("http://{id}.warren.localhost:{}", http.port());
    let put = |cookie: String, origin: String| {
        let url = format!(
            "http://127.0.0.1:{}/_warren/upload?name=dropped%20file.txt",
            http.port()
        );
        let host = format!("{id}.warren.localhost:{}", http.port());
        async move {
            reqwest::Client::new()
                .put(url)
                .header("host", host)
                .header("cookie", cookie)
                .header("origin", origin)
                .body("dropped bytes\n")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(put(cookie.clone(), origin.clone()).await, 204);
    assert_eq!(
        exec(&c, &id, "cat '/root/dropped file.txt'").await,
        "dropped bytes\n"
    );
    let evil = format!("http://8080-{id}.warren.localhost:{}", http.port());
    assert_eq!(put(cookie, evil).await, 403, "from the session's preview");
    let (_, head) = page_exchange(http, &id, write["token"].as_str().unwrap()).await;
    assert_eq!(
        put(session_cookie(&head), origin).await,
        403,
        "a write link"
    );
    drop(writer);
}

/// The token cookie a `?token=` exchange set, as a `Cookie` header value.
fn session_cookie(head: &str) -> String {
    head.lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .find(|c| c.starts_with("warren_token="))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no token cookie in {head}"))
        .to_string()
}

/// `GET /?token=` on the session host: the status and the answer's head.
async fn page_exchange(http: std::net::SocketAddr, id: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let req = format!(
        "GET /?token={token} HTTP/1.1\r\nHost: {id}.warren.localhost:{}\r\nConnection: close\r\n\r\n",
        http.port()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    (status, head)
}

/// What `asciinema cat` prints for the recording, when asciinema is
/// installed (CI installs it; under CI its absence is a failure).
fn asciinema_cat(cast: &str) -> Option<String> {
    let path = std::env::temp_dir().join(format!("warren-test-{}.cast", std::process::id()));
    std::fs::write(&path, cast).unwrap();
    // asciinema 2 reads its controls from /dev/tty: `script` gives it one.
    let out = if which("asciinema") {
        std::process::Command::new("script")
            .arg("-qec")
            .arg(format!("asciinema cat {}", path.display()))
            .arg("/dev/null")
            .stdin(std::process::Stdio::null())
            .output()
    } else {
        Err(std::io::Error::other("asciinema is not installed"))
    };
    let _ = std::fs::remove_file(&path);
    match out {
        Ok(o) => {
            assert!(
                o.status.success(),
                "asciinema cat: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(String::from_utf8_lossy(&o.stdout).into_owned())
        }
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("asciinema is not installed (scripts/setup-host.sh installs it)")
        }
        Err(_) => {
            eprintln!("asciinema not installed: its check is skipped");
            None
        }
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The dashboard and a read-only link in Chromium (web/e2e/dashboard.mjs):
/// sign in, create, open, share, watch from a phone, play the recording,
/// delete; screenshots in artifacts/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_a_read_only_link_in_a_real_browser() {
    if !warren_testkit::chromium_or_skip() {
        return;
    }
    let Some((_run, st)) = common::stack("dashboard", "warren/session:mini", 128).await else {
        return;
    };
    let http = st.http.unwrap();
    let key = common::tenant_key(&st.control_url, &st.admin_key, "dashboard").await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = tokio::process::Command::new("node")
        .arg("e2e/dashboard.mjs")
        .arg(format!("http://warren.localhost:{}/", http.port()))
        .arg(&key)
        .arg(&artifacts)
        .current_dir(root.join("web"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let id = v["id"].as_str().unwrap();
    // Deleted from the dashboard.
    let (s, a) = call(
        &st.control_url,
        "GET",
        &format!("/v1/sessions/{id}"),
        &key,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        matches!(a["status"].as_str(), Some("stopping" | "stopped")),
        "{a}"
    );
}
