//! The sandbox API end to end: control → relay (HTTPS, exec-scoped token)
//! → agent → the session's init, on the whole stack with real Docker. Exec
//! (output, stderr, exit code, stdin, environment, time limit with no
//! process left), files (50 MB both ways by SHA-256, listing, symlinks
//! resolved inside the session, magic links and /proc refused, a full
//! disk), the CLI (`warren exec`, `warren cp`), and the README's `curl`
//! run as written, also against `api.<domain>` through the relay.
#![allow(clippy::unwrap_used)]

mod common;
use common::call;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use warren::client::Client;
use warren_proto::sandbox::ExecRequest;
use warren_testkit::until;

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: Some(cmd.into()),
        ..Default::default()
    }
}

/// Bytes that do not compress and are the same on every run.
fn payload(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(b"warren sandbox test").to_vec();
    while out.len() < len {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

async fn download(c: &Client, id: &str, path: &str) -> Result<Vec<u8>, warren::client::Error> {
    let d = c.download(id, path).await?;
    let mut body = Box::pin(d.bytes());
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn api_code(e: &warren::client::Error) -> (u16, String) {
    match e {
        warren::client::Error::Api { status, code, .. } => (*status, code.clone()),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_files_through_the_edge() {
    let Some((run, st)) = common::stack("sandbox", "warren/session:mini", 128).await else {
        return;
    };
    let base = st.control_url.clone();
    let c = Client::new(&base, &st.admin_key, Duration::from_secs(120)).unwrap();
    let (s, a) = call(
        &base,
        "POST",
        "/v1/sessions",
        &st.admin_key,
        Some(json!({"disk_mb": 128})),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();

    // Exec: output on its own streams, the exit code, stdin, env, cwd.
    let r = c
        .exec(&id, &sh("echo out; echo err >&2; exit 3"))
        .await
        .unwrap();
    assert_eq!(
        (
            r.stdout.as_str(),
            r.stderr.as_str(),
            r.exit_code,
            r.timed_out
        ),
        ("out\n", "err\n", Some(3), false),
        "{r:?}"
    );
    let mut req = ExecRequest {
        argv: Some(vec!["sh".into(), "-c".into(), "pwd; echo $FOO; cat".into()]),
        cwd: Some("/tmp".into()),
        stdin: Some("from stdin".into()),
        ..Default::default()
    };
    req.env.insert("FOO".into(), "bar baz".into());
    let r = c.exec(&id, &req).await.unwrap();
    assert_eq!(r.stdout, "/tmp\nbar baz\nfrom stdin", "{r:?}");
    assert_eq!(r.exit_code, Some(0));
    // A command that never reads its (1 MiB) stdin still ends at once.
    let mut unread = sh("true");
    unread.stdin = Some("x".repeat(1 << 20));
    unread.timeout_seconds = Some(30);
    let r = c.exec(&id, &unread).await.unwrap();
    assert_eq!((r.exit_code, r.timed_out), (Some(0), false), "{r:?}");
    // Output past 1 MiB is cut and says so.
    let r = c
        .exec(&id, &sh("head -c 3000000 /dev/zero | tr '\\0' x"))
        .await
        .unwrap();
    assert!(
        r.truncated.stdout && r.stdout.len() == 1 << 20,
        "{}",
        r.stdout.len()
    );
    // A missing program and a missing directory are errors of their own.
    let e = c
        .exec(
            &id,
            &ExecRequest {
                argv: Some(vec!["/no/such/program".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&e).0, 422, "{e}");
    let e = c
        .exec(
            &id,
            &ExecRequest {
                command: Some("true".into()),
                cwd: Some("/no/such/dir".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), (404, "not_found".into()), "{e}");

    // The time limit kills the command with its process group: the
    // background child too.
    let mut slow = sh("sleep 1000 & sleep 1001");
    slow.timeout_seconds = Some(1);
    let r = c.exec(&id, &slow).await.unwrap();
    assert!(r.timed_out && r.exit_code.is_none(), "{r:?}");
    let left = sh("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c 'sleep 100[01]'");
    until(
        "the timed-out command's processes to be gone",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async { c.exec(&id, &left).await.unwrap().stdout.trim() == "0" },
    )
    .await;

    // Files: 50 MB up and down, byte for byte.
    let data = payload(50 << 20);
    let want = Sha256::digest(&data);
    c.upload(
        &id,
        "/root/big.bin",
        Some(0o640),
        Some(data.len() as u64),
        reqwest::Body::from(data.clone()),
    )
    .await
    .unwrap();
    let r = c
        .exec(
            &id,
            &sh("sha256sum /root/big.bin; stat -c '%a %u' /root/big.bin"),
        )
        .await
        .unwrap();
    assert!(
        r.stdout.starts_with(&hex(&want)) && r.stdout.contains("\n640 0"),
        "{r:?}"
    );
    let back = download(&c, &id, "/root/big.bin").await.unwrap();
    assert_eq!(Sha256::digest(&back), want, "download differs");
    let l = c.list(&id, "/root").await.unwrap();
    let e = l.entries.iter().find(|e| e.name == "big.bin").unwrap();
    assert_eq!((e.kind.as_str(), e.size, e.mode), ("file", 50 << 20, 0o640));

    // Paths resolve in the session: a symlink to / is the session's root,
    // a magic link (/proc/1/root) and the kernel's files are refused.
    c.exec(
        &id,
        &sh("ln -s / /root/up; ln -s /proc/1/root /root/magic; hostname > /etc/marker"),
    )
    .await
    .unwrap();
    let host = c.exec(&id, &sh("hostname")).await.unwrap().stdout;
    let via = download(&c, &id, "/root/up/etc/marker").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&via), host);
    let worker_host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert_ne!(host.trim(), worker_host.trim());
    for refused in [
        "/root/magic/etc/marker",
        "/proc/1/environ",
        "/proc/self/status",
    ] {
        let e = download(&c, &id, refused).await.unwrap_err();
        assert!(
            (400..500).contains(&api_code(&e).0),
            "{refused} was served: {e}"
        );
    }

    // Parents are made for an upload.
    c.upload(&id, "/root/deep/er/f.txt", None, None, "nested".into())
        .await
        .unwrap();
    let got = download(&c, &id, "/root/deep/er/f.txt").await.unwrap();
    assert_eq!(got, b"nested");

    // mkdir, delete (a non-empty directory only with recursive).
    c.mkdir(&id, "/root/a/b/c").await.unwrap();
    let e = c.remove(&id, "/root/a", false).await.unwrap_err();
    assert_eq!(api_code(&e), (409, "not_empty".into()), "{e}");
    c.remove(&id, "/root/a", true).await.unwrap();
    let e = c.list(&id, "/root/a").await.unwrap_err();
    assert_eq!(api_code(&e), (404, "not_found".into()), "{e}");
    let e = download(&c, &id, "relative").await.unwrap_err();
    assert_eq!(api_code(&e).0, 422, "{e}");

    // A full disk: the write fails whole and says why.
    c.remove(&id, "/root/big.bin", false).await.unwrap();
    c.exec(
        &id,
        &sh("dd if=/dev/zero of=/root/fill bs=1M count=400 2>/dev/null; sync"),
    )
    .await
    .unwrap();
    let small = payload(4 << 20);
    let e = c
        .upload(
            &id,
            "/root/x.bin",
            None,
            Some(small.len() as u64),
            small.into(),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), (507, "disk_full".into()), "{e}");
    let ls = c.exec(&id, &sh("ls -a /root")).await.unwrap().stdout;
    assert!(!ls.contains("x.bin"), "a failed upload left a file: {ls}");

    // Writes and deletes are audited.
    let (_, audit) = call(&base, "GET", "/v1/audit?limit=200", &st.admin_key, None).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == id.as_str())
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["files.write", "files.delete", "files.mkdir", "session.exec"] {
        assert!(actions.contains(&a), "no {a} in {actions:?}");
    }

    edge_rules(&st, &base, &id).await;
    cli(&st, &base, &id).await;
    drop(run);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The relay's side: the API path takes only a Bearer token of the exec
/// scope; other tenants see no session.
async fn edge_rules(st: &warren::stack::Stack, base: &str, id: &str) {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&st.ca_file).unwrap()).unwrap();
    let host = format!("{id}.warren.localhost");
    let edge = reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve(&host, st.https)
        .build()
        .unwrap();
    let url = format!(
        "https://{host}:{}{}",
        st.https.port(),
        warren_proto::sandbox::EXEC_PATH
    );
    let token = |scope: &'static str| async move {
        let (s, t) = call(
            base,
            "POST",
            &format!("/v1/sessions/{id}/token"),
            &st.admin_key,
            Some(json!({ "scope": scope })),
        )
        .await;
        assert_eq!(s, 200, "{t}");
        t["token"].as_str().unwrap().to_string()
    };
    let body = json!({"command": "echo edge"});
    let exec = token("exec").await;
    let r = edge
        .post(&url)
        .bearer_auth(&exec)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["stdout"], "edge\n");
    // In a link (query) it does nothing: links and cookies never reach exec.
    let r = edge
        .post(format!("{url}?token={exec}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The default token (terminal and preview) is not the exec scope.
    let both = token("terminal").await;
    let r = edge
        .post(&url)
        .bearer_auth(&both)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The streaming form: the terminal WebSocket's exec mode, with the
    // exec token as a Bearer header (stdout and the exit status apart).
    {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let tls =
            warren_testkit::tls_connect(st.https, &host, &std::fs::read(&st.ca_file).unwrap())
                .await;
        let mut req = format!(
            "wss://{host}:{}/_warren/terminal?v=1&mode=exec&command=echo%20streamed%3B%20exit%205",
            st.https.port()
        )
        .into_client_request()
        .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {exec}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        ws.send(Message::text(r#"{"type":"eof"}"#)).await.unwrap();
        let (mut out, mut code) = (Vec::new(), None);
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) if b.first() == Some(&1) => out.extend_from_slice(&b[1..]),
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "exit" {
                        code = v["code"].as_i64();
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        assert_eq!(
            (String::from_utf8_lossy(&out).as_ref(), code),
            ("streamed\n", Some(5))
        );
    }

    // Another tenant: the session does not exist for it.
    let rival = &common::tenant_key(base, &st.admin_key, "rival").await;
    let (s, _) = call(
        base,
        "POST",
        &format!("/v1/sessions/{id}/exec"),
        rival,
        Some(body),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        base,
        "GET",
        &format!("/v1/sessions/{id}/files?path=/etc/marker"),
        rival,
        None,
    )
    .await;
    assert_eq!(s, 404);
}

/// `warren exec` passes the exit code through; `warren cp` both ways.
async fn cli(st: &warren::stack::Stack, base: &str, id: &str) {
    let bin = env!("CARGO_BIN_EXE_warren");
    let warren = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(["--control-url", base, "--api-key", &st.admin_key])
            .args(args)
            .output()
            .unwrap()
    };
    let o = warren(&["exec", id, "--", "echo hi; exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    let o = warren(&["exec", "--timeout", "1s", id, "--", "sleep", "30"]);
    assert_eq!(o.status.code(), Some(124), "{o:?}");

    let dir = tempdir();
    let src = dir.join("src.txt");
    std::fs::write(&src, "copied through warren\n").unwrap();
    c_rm_fill(&warren, id);
    let o = warren(&["cp", src.to_str().unwrap(), &format!("{id}:/root/")]);
    assert!(o.status.success(), "{o:?}");
    let back = dir.join("back.txt");
    let o = warren(&["cp", &format!("{id}:/root/src.txt"), back.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        "copied through warren\n"
    );
    let o = warren(&["cp", &format!("{id}:/root/none"), back.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not_found"),
        "{o:?}"
    );
    // The old file stays when a download fails.
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        "copied through warren\n"
    );
}

/// Room on the session's disk again (the disk-full check filled it).
fn c_rm_fill(warren: &impl Fn(&[&str]) -> std::process::Output, id: &str) {
    let o = warren(&["exec", id, "--", "rm -f /root/fill"]);
    assert!(o.status.success(), "{o:?}");
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("warren-cp-{}", warren_testkit::unique_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The README's example exactly as written (its port swapped for the
/// test's), and the same API through the relay at `api.<domain>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_curl_works_direct_and_through_the_relay() {
    if !warren_testkit::required(
        "curl",
        std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok(),
        "apt-get install curl",
    ) {
        return;
    }
    let Some((_run, st)) = common::stack("readme", "warren/session:mini", 128).await else {
        return;
    };
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("curl ") && l.contains("/v1/sessions"))
        .expect("the README's curl example");
    let port = st.control_url.rsplit(':').next().unwrap();
    let direct = line.replace("127.0.0.1:7000", &format!("127.0.0.1:{port}"));
    let o = std::process::Command::new("sh")
        .args(["-c", &format!("{direct} -w '\\n%{{http_code}}'")])
        .env("KEY", &st.admin_key)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.ends_with("\n201"), "README curl: {out} {o:?}");
    let v: Value = serde_json::from_str(out.rsplit_once('\n').unwrap().0).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["memory_mb"].as_u64()),
        (Some("running"), Some(512)),
        "{v}"
    );
    let id = v["id"].as_str().unwrap().to_string();

    // Every curl example of docs/api.md, as written, on that session.
    let api_md =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    let examples: Vec<&str> = api_md.lines().filter(|l| l.starts_with("curl ")).collect();
    assert!(!examples.is_empty(), "docs/api.md has curl examples");
    for line in examples {
        let cmd = line.replace("127.0.0.1:7000", &format!("127.0.0.1:{port}"));
        let o = std::process::Command::new("sh")
            .args(["-c", &format!("{cmd} -w '\\n%{{http_code}}'")])
            .env("KEY", &st.admin_key)
            .env("ID", &id)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let code = out.rsplit('\n').next().unwrap_or("");
        assert!(code.starts_with('2'), "docs/api.md: {line}\n{out} {o:?}");
    }

    // The same through the relay's public API address.
    let https = st.https.port();
    let through = line.replace(
        "http://127.0.0.1:7000",
        &format!("https://api.warren.localhost:{https}"),
    );
    let curl = format!(
        "{through} --cacert {} --resolve api.warren.localhost:{https}:127.0.0.1 -w '\\n%{{http_code}}'",
        st.ca_file.display()
    );
    let o = std::process::Command::new("sh")
        .args(["-c", &curl])
        .env("KEY", &st.admin_key)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.ends_with("\n201"), "through the relay: {out} {o:?}");
    let o = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&st.ca_file)
        .args([
            "--resolve",
            &format!("api.warren.localhost:{https}:127.0.0.1"),
            &format!("https://api.warren.localhost:{https}/openapi.json"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "{o:?}");
}
