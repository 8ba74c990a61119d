//! The edge end to end: TLS, routing by Host and SNI, session tokens, the
//! terminal WebSocket and port previews over the QUIC tunnel, real Docker.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::{Duration, Instant};

use common::{DOMAIN, Stack, TENANT, docker_or_skip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_relay::auth::Claims;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_over_tls_websocket() {
    if !docker_or_skip().await {
        return;
    }
    let st = Stack::start("ws").await;
    let s = st.session().await;
    let token = st.token(&s.id);
    // Bearer header (programs)...
    let mut t = st
        .ws(
            &s.id,
            "cols=100&rows=30",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
        .unwrap();
    t.run("echo $((6*7))", "42").await;
    t.run("stty size", "30 100").await;
    // ...and ?token= in the URL.
    let mut t2 = st.ws(&s.id, &format!("token={token}"), &[]).await.unwrap();
    t2.run("echo $((7*6))-again", "42-again").await;
    assert!(st.metric("warren_relay_tunnel_streams_opened_total") >= 2.0);
    assert!(
        st.metric("warren_relay_jwt_cache_hits_total") >= 1.0,
        "second use of a token should hit the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_token_exchange_and_assets() {
    if !docker_or_skip().await {
        return;
    }
    let st = Stack::start("page").await;
    let s = st.session().await;
    let host = format!("{}.{DOMAIN}", s.id);
    let token = st.token(&s.id);

    let r = st
        .request(
            &host,
            "GET",
            &format!("/?token={token}&x=1"),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/?x=1"));
    let cookie = r.header("set-cookie").unwrap().to_string();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "cookie lacks {attr}: {cookie}");
    }
    assert!(
        !cookie.to_ascii_lowercase().contains("domain="),
        "cookie must be host-only: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();

    let r = st
        .request(
            &host,
            "GET",
            "/?x=1",
            &[("cookie", &pair), ("accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("/_warren/assets/app.js"), "{}", r.body);
    let r = st
        .request(&host, "GET", "/_warren/assets/app.js", &[])
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(r.body.len() > 10_000);
    // Without the cookie: a page that says what to do.
    let r = st
        .request(&host, "GET", "/", &[("accept", "text/html")])
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("session link"), "{}", r.body);
    // The cookie works for the WebSocket too, from the page's own origin.
    let origin = format!("https://{host}:{}", st.https.port());
    let mut t = st
        .ws(&s.id, "", &[("cookie", &pair), ("origin", &origin)])
        .await
        .unwrap();
    t.run("echo cookie-$((1+1))", "cookie-2").await;

    // HTTPS answers carry Strict-Transport-Security.
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    // Exchanges are limited per address, before anything is verified or
    // written: the first 30 a minute pass (one above), then 429.
    let exchange = |t: String| {
        let (st, host) = (&st, &host);
        async move {
            st.request(host, "GET", &format!("/?token={t}"), &[])
                .await
                .status
        }
    };
    for _ in 1..warren_relay::http::EXCHANGE_LIMIT {
        assert_eq!(exchange(token.clone()).await, 303);
    }
    assert_eq!(exchange(token.clone()).await, 429);
    assert_eq!(exchange("not-even-a-token".into()).await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_previews_http_and_upgrade() {
    if !docker_or_skip().await {
        return;
    }
    let st = Stack::start("preview").await;
    let s = st.session().await;
    let token = st.token(&s.id);
    let auth = format!("Bearer {token}");
    // An upgrade server inside the session: answers 101, then echoes bytes.
    let script = std::env::temp_dir().join(format!("ws-{}.sh", s.id));
    std::fs::write(
        &script,
        "#!/bin/sh\nwhile read -r l; do l=$(printf '%s' \"$l\" | tr -d '\\r'); [ -z \"$l\" ] && break; done\n\
         printf 'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\\r\\n\\r\\n'\nexec cat\n",
    )
    .unwrap();
    warren_testkit::copy_into(&s.container_id, &script, "/tmp/ws.sh");
    let _ = std::fs::remove_file(&script);
    let mut t = st.ws(&s.id, "", &[("authorization", &auth)]).await.unwrap();
    t.run(
        "chmod +x /tmp/ws.sh; httpd -p 8080 -h /www; nc -ll -p 8081 -e /tmp/ws.sh & echo up-$((2+2))",
        "up-4",
    )
    .await;

    let host = format!("8080-{}.{DOMAIN}", s.id);
    let deadline = Instant::now() + common::WAIT;
    let r = loop {
        let r = st
            .request(&host, "GET", "/index.html", &[("authorization", &auth)])
            .await;
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("warren mini session"));

    // Upgrade through the preview host: 101, then bytes both ways.
    let host = format!("8081-{}.{DOMAIN}", s.id);
    let mut tls = st.tls(&host).await;
    let req = format!(
        "GET /echo HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"ping-1234").await.unwrap();
    let mut back = [0u8; 9];
    tokio::time::timeout(common::WAIT, tls.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping-1234");

    // A port with nothing behind it: 502 with the agent's reason.
    let r = st
        .request(
            &format!("9999-{}.{DOMAIN}", s.id),
            "GET",
            "/",
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("port 9999"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_cases_never_reach_the_agent() {
    if !docker_or_skip().await {
        return;
    }
    let st = Stack::start("auth").await;
    let a = st.session().await;
    let b = st.session().await;
    let host = |sid: &str| format!("{sid}.{DOMAIN}");
    let bearer = |t: &str| format!("Bearer {t}");
    let opened = st.metric("warren_relay_tunnel_streams_opened_total");
    let json = ("accept", "application/json");

    let get = |sid: String, auth: Option<String>| {
        let st = &st;
        async move {
            let mut h = vec![json];
            let a;
            if let Some(x) = auth {
                a = x;
                h.push(("authorization", a.as_str()));
            }
            st.request(&host(&sid), "GET", "/_warren/terminal", &h)
                .await
        }
    };

    // No token.
    let r = get(a.id.clone(), None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.body.contains("\"unauthorized\""), "{}", r.body);
    // Expired.
    let r = get(
        a.id.clone(),
        Some(bearer(&st.signer.token(&a.id, TENANT, -120))),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("expired"), "{}", r.body);
    // Bad signature.
    let other = warren_relay::auth::testing::Signer::generate("test-key");
    let r = get(a.id.clone(), Some(bearer(&other.token(&a.id, TENANT, 300)))).await;
    assert_eq!(r.status, 401);
    // alg: none.
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT","kid":"test-key"}"#),
        b64(&format!(
            r#"{{"sid":"{}","tenant":"{TENANT}","aud":"warren","exp":{exp},"scope":"terminal"}}"#,
            a.id
        ))
    );
    let r = get(a.id.clone(), Some(bearer(&none))).await;
    assert_eq!(r.status, 401);
    // A's token on B's host.
    let r = get(b.id.clone(), Some(bearer(&st.token(&a.id)))).await;
    assert_eq!(r.status, 403, "{r:?}");
    // Another tenant's token for A.
    let r = get(
        a.id.clone(),
        Some(bearer(&st.signer.token(&a.id, "globex", 300))),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("another tenant"), "{}", r.body);
    // Unknown session (a valid token for it, but no such session).
    let r = get(
        "nosuchsession1".into(),
        Some(bearer(&st.token("nosuchsession1"))),
    )
    .await;
    assert_eq!(r.status, 404);
    // A token without the terminal scope.
    let c = Claims {
        scope: "preview".into(),
        ..st.relay
            .verifier
            .verify(&st.token(&a.id))
            .await
            .unwrap()
            .as_ref()
            .clone()
    };
    let r = get(a.id.clone(), Some(bearer(&st.signer.sign(&c)))).await;
    assert_eq!(r.status, 403);
    // The session's node is not connected: 503, fast.
    st.routes.insert("ghostsession1", "ghost-node", TENANT);
    let t0 = Instant::now();
    let r = get(
        "ghostsession1".into(),
        Some(bearer(&st.token("ghostsession1"))),
    )
    .await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    // Spoofed Host: the TLS connection was opened for A, the request names B.
    let r = st
        .request_sni(
            &host(&a.id),
            &host(&b.id),
            "GET",
            "/_warren/terminal",
            &[json, ("authorization", &bearer(&st.token(&b.id)))],
        )
        .await;
    assert_eq!(r.status, 421);
    // The bare domain is the dashboard; any other path there is a 404 that
    // says what to do.
    let r = st.request(DOMAIN, "GET", "/", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Sign in"), "{}", r.body);
    let r = st.request(DOMAIN, "GET", "/elsewhere", &[json]).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("session link"), "{}", r.body);

    assert_eq!(
        st.metric("warren_relay_tunnel_streams_opened_total"),
        opened,
        "a refused request reached an agent"
    );

    // A WebSocket attempt without credentials is refused at the handshake.
    assert!(st.ws(&a.id, "", &[]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_disconnected_mid_life_answers_fast() {
    if !docker_or_skip().await {
        return;
    }
    let st = Stack::start("gone").await;
    let s = st.session().await;
    let auth = format!("Bearer {}", st.token(&s.id));
    let mut t = st.ws(&s.id, "", &[("authorization", &auth)]).await.unwrap();
    t.run("echo alive-$((1+2))", "alive-3").await;
    st.stop_agent();
    let node = st.node.clone();
    assert!(
        st.relay
            .registry
            .wait_until(common::WAIT, |n| !n.contains(&node))
            .await
    );
    let t0 = Instant::now();
    let r = st
        .request(
            &format!("{}.{DOMAIN}", s.id),
            "GET",
            "/_warren/terminal",
            &[("authorization", &auth), ("accept", "text/html")],
        )
        .await;
    assert!(r.status == 502 || r.status == 503, "{r:?}");
    assert!(r.body.contains("not connected"), "{}", r.body);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_terminal_outlives_default_timeouts() {
    if !docker_or_skip().await {
        return;
    }
    let st = Stack::start("idle").await;
    let s = st.session().await;
    let auth = format!("Bearer {}", st.token(&s.id));
    let mut t = st.ws(&s.id, "", &[("authorization", &auth)]).await.unwrap();
    t.run("echo before-$((1+1))", "before-2").await;
    // Longer than Pingora's 60 s read timeout and quinn's 30 s idle timeout.
    tokio::time::sleep(Duration::from_secs(75)).await;
    t.run("echo after-$((2+2))", "after-4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_browser_types_into_the_terminal() {
    if !docker_or_skip().await {
        return;
    }
    if !common::chromium_or_skip() {
        return;
    }
    let st = Stack::start("browser").await;
    let s = st.session().await;
    let url = format!(
        "https://{}.{DOMAIN}:{}/?token={}",
        s.id,
        st.https.port(),
        st.token(&s.id)
    );
    let (web, shot) = common::browser_dirs("browser-terminal.png");
    let out = tokio::process::Command::new("node")
        .arg("e2e/terminal.mjs")
        .arg(&url)
        .arg(&shot)
        .current_dir(&web)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shot.exists(), "no screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_browser_resumes_after_a_drop_and_shows_signed_out() {
    if !docker_or_skip().await {
        return;
    }
    if !common::chromium_or_skip() {
        return;
    }
    let st = Stack::start("states").await;
    let s = st.session().await;
    let cutter = common::Cutter::start(st.https).await;
    let ttl = 30;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + ttl;
    let url = format!(
        "https://{}.{DOMAIN}:{}/?token={}",
        s.id,
        cutter.addr.port(),
        st.signer.token(&s.id, TENANT, ttl as i64)
    );
    let (web, shot) = common::browser_dirs("browser-states.png");
    let out = tokio::process::Command::new("node")
        .arg("e2e/states.mjs")
        .arg(&url)
        .arg(format!("http://{}/cut", cutter.control))
        .arg(expires.to_string())
        .arg(&shot)
        .current_dir(&web)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
}
