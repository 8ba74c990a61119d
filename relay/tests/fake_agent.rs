//! The edge without Docker: the real relay (Pingora, TLS, tokens, cookies,
//! origins) and the real QUIC tunnel, with a fake agent behind them
//! (`warren_testkit::FakeAgent`: terminals echo, ports answer a tiny HTTP
//! page). Runs on any machine; nothing here skips.
#![allow(clippy::unwrap_used)]
mod common;

use common::{DOMAIN, Stack};

/// The status of a WebSocket handshake to the terminal (101 on success).
async fn ws_status(st: &Stack, sid: &str, query: &str, headers: &[(&str, &str)]) -> u16 {
    match st.ws(sid, query, headers).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("handshake failed without a status: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_opens_a_terminal_through_relay_and_tunnel() {
    let st = Stack::start_fake("fake-ws").await;
    let sid = st.fake_session();
    let token = st.token(&sid);
    // Bearer header (programs)...
    let mut t = st
        .ws(
            &sid,
            "cols=100&rows=30",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
        .unwrap();
    assert_eq!(t.terminal, Some(warren_testkit::FAKE_TERMINAL));
    t.run("typed through the edge", "typed through the edge")
        .await;
    // ...and ?token= in the URL.
    let mut t2 = st.ws(&sid, &format!("token={token}"), &[]).await.unwrap();
    t2.run("and again", "and again").await;
    assert_eq!(st.fake_streams(), 2);
    assert!(st.metric("warren_relay_tunnel_streams_opened_total") >= 2.0);

    // No token, another session's token, an unknown session: refused at
    // the edge, never a stream to the agent.
    assert_eq!(ws_status(&st, &sid, "", &[]).await, 401);
    let other = st.fake_session();
    let theirs = format!("Bearer {}", st.token(&other));
    assert_eq!(
        ws_status(&st, &sid, "", &[("authorization", &theirs)]).await,
        403
    );
    let unknown = "nosuchsession000";
    let r = st
        .request(
            &format!("{unknown}.{DOMAIN}"),
            "GET",
            "/",
            &[("authorization", &format!("Bearer {}", st.token(unknown)))],
        )
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(st.fake_streams(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_upgrade_from_a_wrong_origin_is_refused() {
    let st = Stack::start_fake("fake-origin").await;
    let sid = st.fake_session();
    let host = format!("{sid}.{DOMAIN}");
    let r = st
        .request(
            &host,
            "GET",
            &format!("/?token={}", st.token(&sid)),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(cookie.starts_with("__Host-warren_token="), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let own = format!("https://{host}:{}", st.https.port());
    let other_session = format!("https://{}.{DOMAIN}:{}", st.fake_session(), st.https.port());
    for (name, origin) in [
        ("foreign", Some("https://evil.example")),
        ("another session's", Some(other_session.as_str())),
        ("null", Some("null")),
        ("no", None),
    ] {
        let mut headers = vec![("cookie", pair.as_str())];
        headers.extend(origin.map(|o| ("origin", o)));
        assert_eq!(
            ws_status(&st, &sid, "", &headers).await,
            403,
            "cookie with {name} Origin"
        );
    }
    assert_eq!(st.fake_streams(), 0, "a refused upgrade reached the agent");
    // From the page's own origin the cookie opens the terminal.
    let mut t = st
        .ws(&sid, "", &[("cookie", &pair), ("origin", &own)])
        .await
        .unwrap();
    t.run("own origin", "own origin").await;
    assert_eq!(st.fake_streams(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_reach_the_fake_agents_port() {
    let st = Stack::start_fake("fake-preview").await;
    let sid = st.fake_session();
    let host = format!("8080-{sid}.{DOMAIN}");
    let auth = format!("Bearer {}", st.token(&sid));
    let r = st
        .request(&host, "GET", "/hello?x=1", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        format!("fake agent: session {sid}, port 8080: GET /hello?x=1 HTTP/1.1\n")
    );
    assert_eq!(st.fake_streams(), 1);
    // Without credentials the preview is refused at the edge.
    let r = st
        .request(&host, "GET", "/", &[("accept", "application/json")])
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(st.fake_streams(), 1);
}

/// After its upgrade a terminal's connection is the relay's own bridge
/// (relay/src/http/bridge.rs), no longer Pingora's proxy loop: it counts as
/// open while it lives, its bytes are counted, and it is let go when the
/// client leaves. An upgrade that carries a body is refused before any
/// stream is opened (its bytes would have been lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_terminal_is_counted_and_an_upgrade_with_a_body_is_refused() {
    let st = Stack::start_fake("fake-bridge").await;
    let sid = st.fake_session();
    let bearer = format!("Bearer {}", st.token(&sid));
    let mut t = st
        .ws(&sid, "", &[("authorization", &bearer)])
        .await
        .unwrap();
    t.run("through the bridge", "through the bridge").await;
    assert_eq!(st.metric("warren_relay_open_upgrades"), 1.0);
    assert!(st.metric("warren_relay_bytes_total") > 0.0);
    drop(t);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while st.metric("warren_relay_open_upgrades") != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge outlived its client"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let streams = st.fake_streams();
    let r = st
        .request(
            &format!("{sid}.{DOMAIN}"),
            "GET",
            "/_warren/terminal",
            &[
                ("authorization", &bearer),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
                ("content-length", "5"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("carries no body"), "{r:?}");
    assert_eq!(
        st.fake_streams(),
        streams,
        "no stream for a refused upgrade"
    );
}
