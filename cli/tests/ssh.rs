//! SSH through the relay with Debian's OpenSSH client (`ssh`, `scp`,
//! `sftp`) against the whole stack: control on SQLite, the relay's russh
//! server, a real agent and a real DinD session container.
#![allow(clippy::unwrap_used)]

mod common;
use common::call;
use warren_testkit::until_ok;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;

const WAIT: Duration = warren_testkit::WAIT;
const EVERY: Duration = Duration::from_millis(100);

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public)
}

/// Options every OpenSSH command here shares: the relay's pinned host key,
/// no agent, no prompts.
struct Ssh {
    port: u16,
    known_hosts: PathBuf,
}

impl Ssh {
    /// OpenSSH to the stack's SSH listener, trusting only the relay's host
    /// key (a `known_hosts` file in `dir`).
    fn pinned(st: &warren::stack::Stack, dir: &Path) -> Ssh {
        let (host_key, _) = st.relay.ssh_host_key.clone().unwrap();
        let port = st.ssh.unwrap().port();
        let known_hosts = dir.join("known_hosts");
        std::fs::write(
            &known_hosts,
            warren::ssh::known_hosts_lines(&["127.0.0.1"], port, &host_key),
        )
        .unwrap();
        Ssh { port, known_hosts }
    }

    fn opts(&self, key: Option<&Path>) -> Vec<String> {
        let mut o = vec![
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "IdentityAgent=none".into(),
            "-o".into(),
            "ConnectTimeout=20".into(),
            "-F".into(),
            "/dev/null".into(),
        ];
        match key {
            Some(k) => o.extend([
                "-o".into(),
                "IdentitiesOnly=yes".into(),
                "-o".into(),
                "BatchMode=yes".into(),
                "-o".into(),
                "PasswordAuthentication=no".into(),
                "-i".into(),
                k.display().to_string(),
            ]),
            None => o.extend([
                "-o".into(),
                "PubkeyAuthentication=no".into(),
                "-o".into(),
                "NumberOfPasswordPrompts=1".into(),
            ]),
        }
        o
    }

    fn ssh(&self, key: Option<&Path>, session: &str) -> Command {
        self.ssh_with(key, session, &[])
    }

    fn ssh_with(&self, key: Option<&Path>, session: &str, flags: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.opts(key))
            .args(flags)
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{session}@127.0.0.1"))
            .stdin(Stdio::null());
        c
    }

    /// `ssh` with the session token as the password, fed by `warren`
    /// itself as SSH_ASKPASS (what `warren session ssh` does).
    fn ssh_password(&self, session: &str, token: &str) -> Command {
        let mut c = self.ssh(None, session);
        c.env("SSH_ASKPASS", env!("CARGO_BIN_EXE_warren"))
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("WARREN_SSH_ASKPASS_TOKEN", token);
        c
    }
}

async fn output(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn refused(o: &Output) -> bool {
    o.status.code() == Some(255)
        && o.stdout.is_empty()
        && String::from_utf8_lossy(&o.stderr).contains("Permission denied")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_through_the_relay() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let Some((run, st)) = common::stack("ssh", "warren/session:dind", 512).await else {
        return;
    };
    let data = run.dir.clone();
    let base = st.control_url.clone();
    let admin = st.admin_key.clone();
    let ssh_port = st.ssh.unwrap().port();

    // The relay's host key, as the API publishes it, pinned for OpenSSH.
    let (host_key, fp) = st.relay.ssh_host_key.clone().unwrap();
    let v = until_ok("the host key published", WAIT, EVERY, || async {
        let (s, v) = call(&base, "GET", "/v1/ssh/host-keys", "", None).await;
        assert_eq!(s, 200);
        match v["host_keys"][0]["fingerprint"] == fp.as_str() {
            true => Ok(v),
            false => Err(format!("host key never published: {v}")),
        }
    })
    .await;
    assert_eq!(v["host_keys"][0]["public_key"], host_key.as_str());
    let ssh = Ssh::pinned(&st, &data);

    // Two tenants, each with a registered key; a third key nobody registered.
    let mut tenant_keys = Vec::new();
    for name in ["acme", "globex"] {
        tenant_keys.push(common::tenant_key(&base, &admin, name).await);
    }
    let (ka, kb) = (&tenant_keys[0], &tenant_keys[1]);
    let (key_a, pub_a) = keygen(&data, "alice");
    let (key_b, pub_b) = keygen(&data, "bob");
    let (key_x, _) = keygen(&data, "mallory");
    let (s, v) = call(
        &base,
        "POST",
        "/v1/users/me/ssh-keys",
        ka,
        Some(json!({"public_key": pub_a})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(v["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    let (s, _) = call(
        &base,
        "POST",
        "/v1/users/me/ssh-keys",
        kb,
        Some(json!({"public_key": pub_b})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, v) = call(
        &base,
        "POST",
        "/v1/users/me/ssh-keys",
        ka,
        Some(json!({"public_key": pub_a})),
    )
    .await;
    assert_eq!(s, 409, "the same key twice: {v}");
    let (s, v) = call(
        &base,
        "POST",
        "/v1/users/me/ssh-keys",
        ka,
        Some(json!({"public_key": "-----BEGIN OPENSSH PRIVATE KEY-----"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid")),
        "{v}"
    );

    let (s, a) = call(&base, "POST", "/v1/sessions", ka, Some(json!({}))).await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let token = a["token"].as_str().unwrap().to_string();
    assert_eq!(
        a["ssh"].as_str().unwrap(),
        format!("ssh -p {ssh_port} {id}@localhost")
    );

    // exec: exit status, stdout and stderr apart.
    let mut c = ssh.ssh(Some(&key_a), &id);
    c.arg("echo out-$((6*7)); echo err-$((7*7)) >&2; exit 7");
    let o = output(c).await;
    assert_eq!(
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).as_ref(),
            String::from_utf8_lossy(&o.stderr).as_ref()
        ),
        (Some(7), "out-42\n", "err-49\n")
    );

    // `ssh -A` (agent forwarding, common in users' configs, here with a
    // real agent): refused, and the command still runs.
    let fwd = ssh.ssh_with(Some(&key_a), &id, &["-A", "-o", "ForwardAgent=yes"]);
    let mut c = Command::new("ssh-agent");
    c.arg(fwd.get_program())
        .args(fwd.get_args())
        .arg("echo forwarded-$((3*3))")
        .stdin(Stdio::null());
    let o = output(c).await;
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stdout).as_ref()),
        (Some(0), "forwarded-9\n"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An unknown subsystem gets a failure answer (never a hang).
    let mut c = ssh.ssh_with(Some(&key_a), &id, &["-s"]);
    c.arg("no-such-subsystem");
    let o = tokio::time::timeout(WAIT, output(c))
        .await
        .expect("an unknown subsystem left ssh waiting");
    assert_ne!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("subsystem"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The session token as the password opens it too.
    let mut c = ssh.ssh_password(&id, &token);
    c.arg("echo via-token");
    let o = output(c).await;
    assert_eq!(String::from_utf8_lossy(&o.stdout), "via-token\n", "{o:?}");

    // An interactive shell on a real PTY: `ssh -tt`, typed input, then a
    // window change that `stty size` sees.
    let ssh_log = data.join("ssh-tt.log");
    let log_arg = ssh_log.display().to_string();
    let mut cmd = ssh.ssh_with(Some(&key_a), &id, &["-tt", "-v", "-E", &log_arg]);
    let shell = tokio::task::spawn_blocking(move || {
        let mut p = warren_agent::testing::spawn_on_pty(&mut cmd);
        drop(cmd); // it holds copies of the PTY's slave end
        p.master.write_all(b"echo $((6*7))\r").unwrap();
        p.wait_for(b"42\r\n");
        rustix::termios::tcsetwinsize(
            &p.master,
            rustix::termios::Winsize {
                ws_row: 50,
                ws_col: 132,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .unwrap();
        // ssh is not this PTY's session leader: tell it as the kernel would.
        let pid = rustix::process::Pid::from_raw(p.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::WINCH).unwrap();
        // ssh sends the window change when its loop next looks, which may
        // come after it forwarded the next keystrokes: the shell waits for
        // the new size to arrive (a test that never sees it times out).
        p.master
            .write_all(
                b"while [ \"$(stty size)\" != \"$((25*2)) $((66*2))\" ]; do sleep 0.05; done; \
                  echo size-$(stty size | tr ' ' x)\r",
            )
            .unwrap();
        p.wait_for(b"size-50x132");
        p.master.write_all(b"exit 3\r").unwrap();
        let code = p.child.wait().unwrap().code();
        // What the user saw after `exit 3`, for the message below.
        let mut rest = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = p.master.read(&mut buf) {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        (code, String::from_utf8_lossy(&rest).into_owned())
    });
    let (code, seen) = tokio::time::timeout(WAIT, shell)
        .await
        .expect("interactive shell hung")
        .unwrap();
    assert_eq!(
        code,
        Some(3),
        "{seen}\n{}",
        std::fs::read_to_string(&ssh_log).unwrap_or_default()
    );

    // scp (SFTP underneath, as OpenSSH 9 does) up and down, and sftp, 50 MB.
    let big = data.join("big.bin");
    {
        let mut f = std::fs::File::create(&big).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..50 {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&chunk).unwrap();
        }
    }
    let want = sha256_file(&big);
    let scp = |args: Vec<String>| {
        let mut c = Command::new("scp");
        c.args(ssh.opts(Some(&key_a)))
            .arg("-P")
            .arg(ssh_port.to_string())
            .args(args)
            .stdin(Stdio::null());
        c
    };
    let o = output(scp(vec![
        big.display().to_string(),
        format!("{id}@127.0.0.1:/root/big.bin"),
    ]))
    .await;
    assert!(o.status.success(), "scp up: {o:?}");
    let mut c = ssh.ssh(Some(&key_a), &id);
    c.arg("sha256sum /root/big.bin");
    let o = output(c).await;
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with(&want),
        "{o:?}"
    );
    let down = data.join("down.bin");
    let o = output(scp(vec![
        format!("{id}@127.0.0.1:/root/big.bin"),
        down.display().to_string(),
    ]))
    .await;
    assert!(o.status.success(), "scp down: {o:?}");
    assert_eq!(sha256_file(&down), want);

    let batch = data.join("sftp.batch");
    let back = data.join("back.bin");
    std::fs::write(
        &batch,
        format!(
            "put {} /tmp/put.bin\nget /tmp/put.bin {}\n",
            big.display(),
            back.display()
        ),
    )
    .unwrap();
    let mut c = Command::new("sftp");
    c.args(ssh.opts(Some(&key_a)))
        .arg("-P")
        .arg(ssh_port.to_string())
        .arg("-b")
        .arg(&batch)
        .arg(format!("{id}@127.0.0.1"))
        .stdin(Stdio::null());
    let o = output(c).await;
    assert!(o.status.success(), "sftp: {o:?}");
    assert_eq!(sha256_file(&back), want);

    // ssh -L: an HTTP server in the session answers on a local port.
    let mut c = ssh.ssh(Some(&key_a), &id);
    c.arg("mkdir -p /tmp/www && echo hello-from-warren > /tmp/www/index.html && busybox httpd -p 8080 -h /tmp/www");
    let o = output(c).await;
    assert!(o.status.success(), "httpd: {o:?}");
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = local.local_addr().unwrap().port();
    drop(local);
    let spec = format!("127.0.0.1:{lport}:localhost:8080");
    let mut fwd = ssh.ssh_with(
        Some(&key_a),
        &id,
        &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec],
    );
    let mut fwd = fwd.spawn().unwrap();
    let body = until_ok("the forwarded port answering", WAIT, EVERY, || {
        let exited = fwd.try_wait().unwrap();
        async move {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{lport}/")).await
                && r.status().is_success()
            {
                return Ok(r.text().await.unwrap());
            }
            assert!(exited.is_none(), "ssh -L exited");
            Err("the forwarded port never answered")
        }
    })
    .await;
    let _ = fwd.kill();
    let _ = fwd.wait();
    assert_eq!(body, "hello-from-warren\n");

    // Refused, each with no shell: a key nobody registered, another
    // tenant's key, an expired token, an unknown session.
    for (what, c) in [
        ("unregistered key", ssh.ssh(Some(&key_x), &id)),
        ("other tenant's key", ssh.ssh(Some(&key_b), &id)),
        (
            "unknown session",
            ssh.ssh(Some(&key_a), "zzzzzzzzzzzzzzzzzzzz"),
        ),
    ] {
        let mut c = c;
        c.arg("echo opened");
        let o = output(c).await;
        assert!(refused(&o), "{what}: {o:?}");
    }
    let expired = {
        let (kid, pem) = st.control.control.store.signing_key().await.unwrap();
        warren_jwt::install();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(kid);
        let now = warren_control::store::now_ms() / 1000;
        let claims = json!({"sub": "t", "sid": id, "tenant": a["tenant"], "scope": "terminal",
            "aud": "warren", "exp": now - 600, "nbf": now - 900, "iat": now - 900});
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let mut c = ssh.ssh_password(&id, &expired);
    c.arg("echo opened");
    let o = output(c).await;
    assert!(refused(&o), "expired token: {o:?}");
    // The tenant sees the refusals in its audit log.
    let (_, log) = call(&base, "GET", "/v1/audit?limit=200", ka, None).await;
    let failures = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "ssh.login_failed" && e["target"] == id.as_str())
        .count();
    assert!(failures >= 3, "{log}");

    // `warren session ssh` (a fresh token via askpass, the host key from the API).
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.current_dir(&data)
        .env("WARREN_CONTROL_URL", &base)
        .env("WARREN_API_KEY", ka)
        .args([
            "session",
            "ssh",
            &id,
            "--",
            "-o",
            "PubkeyAuthentication=no",
            "echo",
            "cli-$((2*21))",
        ])
        .stdin(Stdio::null());
    let o = output(c).await;
    assert_eq!(String::from_utf8_lossy(&o.stdout), "cli-42\n", "{o:?}");

    // Pre-auth bounds: silent connections from one address hold at most
    // ten slots; the eleventh is closed before the server says a word,
    // and once they go, logins work again.
    async fn banner(port: u16) -> Option<(tokio::net::TcpStream, String)> {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        (n > 0).then(|| (s, String::from_utf8_lossy(&buf[..n]).to_string()))
    }
    let mut silent = Vec::new();
    for i in 0..10 {
        let (s, b) = banner(ssh_port)
            .await
            .unwrap_or_else(|| panic!("silent connection {i} refused"));
        assert!(b.starts_with("SSH-2.0-"), "{b}");
        silent.push(s);
    }
    assert!(
        banner(ssh_port).await.is_none(),
        "an 11th unauthenticated connection from one address was served"
    );
    drop(silent);
    until_ok(
        "logins working again",
        WAIT,
        Duration::from_millis(200),
        || async {
            let mut c = ssh.ssh(Some(&key_a), &id);
            c.args(["echo", "after-$((3*14))"]);
            let o = output(c).await;
            match String::from_utf8_lossy(&o.stdout) == "after-42\n" {
                true => Ok(()),
                false => Err(format!(
                    "logins never worked again after the silent connections left: {o:?}"
                )),
            }
        },
    )
    .await;

    // A deleted session refuses logins; a key removed stops working.
    let (s, _) = call(&base, "DELETE", &format!("/v1/sessions/{id}"), ka, None).await;
    assert_eq!(s, 204);
    let mut c = ssh.ssh(Some(&key_a), &id);
    c.arg("echo opened");
    let o = output(c).await;
    assert!(refused(&o), "deleted session: {o:?}");

    st.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_shell_survives_its_tunnel_dropping() {
    use tokio::io::AsyncBufReadExt;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warren_relay=info,warren_tunnel=info")
        .with_test_writer()
        .try_init();
    let Some((run, st)) = common::stack("sshresume", "warren/session:mini", 128).await else {
        return;
    };
    let ssh = Ssh::pinned(&st, &run.dir);
    let (s, a) = call(
        &st.control_url,
        "POST",
        "/v1/sessions",
        &st.admin_key,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let node = a["node"].as_str().unwrap().to_string();

    // A PTY command that prints a numbered line every 100 ms.
    let mut c = ssh.ssh_password(&id, a["token"].as_str().unwrap());
    c.args([
        "-tt",
        "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo L$i-$((i*0)); sleep 0.1; done",
    ]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(c)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Read to L5-0, drop the relay's tunnel to the node, read on.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let l = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("no L5-0 in time")
            .unwrap()
            .expect("ssh ended early");
        let l = l.trim_end_matches('\r').to_string();
        let done = l == "L5-0";
        seen.push(l);
        if done {
            break;
        }
    }
    st.relay
        .registry
        .connection(&node)
        .expect("the node's tunnel")
        .close(0u32.into(), b"test drops the tunnel");
    while let Some(l) = tokio::time::timeout_at(deadline, lines.next_line())
        .await
        .expect("ssh did not finish in time")
        .unwrap()
    {
        seen.push(l.trim_end_matches('\r').to_string());
    }
    let status = child.wait().await.unwrap();
    let mut err = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    for i in 1..=40 {
        let n = seen.iter().filter(|l| **l == format!("L{i}-0")).count();
        assert_eq!(
            n, 1,
            "line L{i} seen {n} times across the drop: {seen:?}\n{err}"
        );
    }
    assert!(status.success(), "{status} {err}");
}

/// `ssh -t … attach N` joins the terminal a WebSocket client (the browser's
/// protocol) has open: each sees what the other types, and the same output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_and_the_browser_share_one_terminal() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let Some((run, st)) = common::stack("sshattach", "warren/session:mini", 128).await else {
        return;
    };
    let ssh = Ssh::pinned(&st, &run.dir);
    let (s, a) = call(
        &st.control_url,
        "POST",
        "/v1/sessions",
        &st.admin_key,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let token = a["token"].as_str().unwrap().to_string();
    // The browser's side: the terminal WebSocket through the relay.
    let http = st.http.unwrap();
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let url = format!(
        "ws://{id}.warren.localhost:{}/_warren/terminal?token={token}",
        http.port()
    );
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let mut web = warren_testkit::Term::new(ws).await;
    web.run("echo web-$((20+1))", "web-21").await;
    let n = web.terminal.unwrap();

    let mut c = ssh.ssh_password(&id, &token);
    c.args(["-tt", &format!("attach {n}")]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(c)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut read_until = async |needle: &str| {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let l = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("ssh never showed {needle}: {seen:?}"))
                .unwrap()
                .expect("ssh ended early");
            let l = l.trim_end_matches('\r').to_string();
            if l.contains(needle) {
                return;
            }
            seen.push(l);
        }
    };
    // SSH joins with the recent screen, then sees the browser's typing...
    read_until("web-21").await;
    web.run("echo both-$((40+2))", "both-42").await;
    read_until("both-42").await;
    // ...and the browser sees what SSH types, in the same shell.
    stdin.write_all(b"echo ssh-$((3+4))\n").await.unwrap();
    web.expect("ssh-7").await;
    read_until("ssh-7").await;
    drop(stdin);
    let _ = child.kill().await;
}

/// Keys typed over SSH while the relay's tunnel to the node drops reach
/// the terminal exactly once: the bridge keeps what the terminal has not
/// acknowledged and sends it again from where the terminal stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_typing_survives_its_tunnel_dropping() {
    use tokio::io::AsyncWriteExt;
    let Some((run, st)) = common::stack("sshtyping", "warren/session:mini", 128).await else {
        return;
    };
    let ssh = Ssh::pinned(&st, &run.dir);
    let (s, a) = call(
        &st.control_url,
        "POST",
        "/v1/sessions",
        &st.admin_key,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let node = a["node"].as_str().unwrap().to_string();
    let token = a["token"].as_str().unwrap().to_string();

    let mut c = ssh.ssh_password(&id, &token);
    c.args(["-tt", "stty -echo; cat > /tmp/typed"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(c)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut typed = String::new();
    for i in 0..60 {
        let line = format!("line-{i}-{}\n", i * 7919 % 1000);
        for b in line.bytes() {
            stdin.write_all(&[b]).await.unwrap();
            stdin.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        typed.push_str(&line);
        // Twice mid-way, the relay's tunnel to the node goes.
        if i == 20 || i == 40 {
            st.relay
                .registry
                .connection(&node)
                .expect("the node's tunnel")
                .close(0u32.into(), b"test drops the tunnel");
        }
    }
    // The end of input (Ctrl-D at a line's start), then the file.
    stdin.write_all(&[4]).await.unwrap();
    stdin.flush().await.unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("ssh did not end")
        .unwrap();
    assert!(status.success(), "{status}");
    let c = warren::client::Client::new(&st.control_url, &st.admin_key, WAIT).unwrap();
    let r = c
        .exec(
            &id,
            &warren_proto::sandbox::ExecRequest {
                command: Some("cat /tmp/typed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r.stdout, typed,
        "what reached the file is not what was typed"
    );
}
