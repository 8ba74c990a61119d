//! The hostile test's groups, case by case under the same names.
use super::*;

#[test]
fn tokens_scopes_and_origins() {
    let host = format!("{S}.{DOMAIN}");
    let page = |hs: &[(&str, &str)]| req(&host, "GET", "/").with_all(hs).with(HTML.0, HTML.1);
    let mut cases = vec![("page without a token".to_string(), page(&[]), Status(401))];
    for (name, token, want) in [
        ("alg none", "alg-none", 401),
        ("HS256 signed with the JWKS", "hs256", 401),
        ("unknown kid", "unknown-kid", 401),
        ("wrong audience", "wrong-aud", 401),
        ("expired", "expired", 401),
        ("not yet valid", "not-yet-valid", 401),
        ("garbage", "garbage", 401),
        ("oversized", "oversized", 401),
        ("another session's token", "theirs", 403),
        ("another tenant's token", "evil-tenant", 403),
        ("preview-only token on the terminal", "preview-only", 403),
        ("no scope at all", "no-scope", 403),
    ] {
        let auth = format!("Bearer {token}");
        let hs = [("authorization", auth.as_str())];
        cases.push((format!("page, {name}"), page(&hs), Status(want)));
        let sock = ws(S, "").with_all(&hs);
        cases.push((format!("terminal socket, {name}"), sock, Status(want)));
    }
    let preview_host = format!("8080-{S}.{DOMAIN}");
    let r = req(&preview_host, "GET", "/").with("authorization", "Bearer terminal-only");
    cases.push(("preview, terminal-only token".into(), r, Status(403)));
    let r = req(&format!("nosuchsession000.{DOMAIN}"), "GET", "/")
        .with("authorization", "Bearer unknown-session");
    cases.push(("unknown session".into(), r, Status(404)));
    // The exchange and its cookie.
    let r = req(&host, "GET", "/?token=good&x=1").with(HTML.0, HTML.1);
    cases.push(("exchange".into(), r, Seen::Exchanged));
    let pair = "__Host-warren_token=good";
    cases.push((
        "page with the cookie".into(),
        page(&[("cookie", pair)]),
        Status(200),
    ));
    // A plain `warren_token` (what a sibling host could toss) is not read over HTTPS.
    cases.push((
        "plain warren_token cookie over HTTPS".into(),
        page(&[("cookie", "warren_token=good")]),
        Status(401),
    ));
    // Cross-site WebSocket hijack (review C3).
    let me = origin(&host);
    let preview_origin = origin(&format!("8080-{OTHER}.{DOMAIN}"));
    let other_origin = origin(&format!("{OTHER}.{DOMAIN}"));
    let http_origin = format!("http://{host}:{PORT}");
    let port_origin = format!("https://{host}:1");
    for (name, hs, want) in [
        ("cookie, no Origin", vec![("cookie", pair)], Status(403)),
        (
            "cookie, foreign Origin",
            vec![("cookie", pair), ("origin", "https://evil.example")],
            Status(403),
        ),
        (
            "cookie, a preview's Origin",
            vec![("cookie", pair), ("origin", &preview_origin)],
            Status(403),
        ),
        (
            "cookie, another session's Origin",
            vec![("cookie", pair), ("origin", &other_origin)],
            Status(403),
        ),
        (
            "cookie, http:// Origin",
            vec![("cookie", pair), ("origin", &http_origin)],
            Status(403),
        ),
        (
            "cookie, other port Origin",
            vec![("cookie", pair), ("origin", &port_origin)],
            Status(403),
        ),
        (
            "cookie, null Origin",
            vec![("cookie", pair), ("origin", "null")],
            Status(403),
        ),
        (
            "cookie, own Origin",
            vec![("cookie", pair), ("origin", &me)],
            TERMINAL,
        ),
        (
            "Bearer, no Origin",
            vec![("authorization", "Bearer good")],
            TERMINAL,
        ),
    ] {
        let name = format!("terminal socket, {name}");
        cases.push((name, ws(S, "").with_all(&hs), want));
    }
    for (name, q) in [
        ("mode=exec&command=", "mode=exec&command=id"),
        ("command= alone", "command=id"),
        ("mode=exec alone", "mode=exec"),
    ] {
        let r = ws(S, q).with("cookie", pair).with("origin", &me);
        let n = format!("terminal socket, {name} in the URL with the cookie");
        cases.push((n, r, Status(400)));
        let r = ws(S, &format!("{q}&token=good"));
        let n = format!("terminal socket, {name} in the URL with ?token=");
        cases.push((n, r, Status(400)));
    }
    let r = ws(S, "command=id").with("authorization", "Bearer good");
    cases.push((
        "terminal socket, command= with a Bearer header".into(),
        r,
        TERMINAL,
    ));
    table("tokens, scopes and origins", cases);
}

#[test]
fn the_exchange_cookie_and_redirects() {
    let cookie = token_cookie("t", u64::MAX, true);
    assert!(
        cookie.starts_with("__Host-warren_token=")
            && ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"]
                .iter()
                .all(|a| cookie.contains(a))
            && !cookie.to_ascii_lowercase().contains("domain="),
        "cookie is __Host-, HttpOnly, Secure, SameSite, host-only: {cookie}"
    );
    assert_eq!(
        local_location("/", strip_token(Some("token=good&x=1"))),
        "/?x=1",
        "exchange location drops the token"
    );
    for (name, path) in [
        ("open redirect //", "//evil.example/"),
        ("open redirect /\\", "/\\evil.example/"),
        ("open redirect ///", "///evil.example/x"),
    ] {
        let loc = local_location(path, strip_token(Some("token=good")));
        assert!(
            loc.starts_with('/') && !loc.starts_with("//") && !loc.contains('\\'),
            "{name}: {loc}"
        );
    }
}

#[test]
fn pages_learn_why_a_terminal_socket_was_refused() {
    let me = origin(&format!("{S}.{DOMAIN}"));
    let own = [("origin", me.as_str())];
    let mut cases = Vec::new();
    for (name, query, want) in [
        ("expired token", "token=expired", Close(4401)),
        ("garbage token", "token=not.a.jwt", Close(4401)),
        ("no token", "", Close(4401)),
        ("another session's token", "token=theirs", Close(4403)),
        ("preview-only token", "token=preview-only", Close(4403)),
        ("valid token", "token=good", TERMINAL),
    ] {
        cases.push((
            format!("page socket, {name}"),
            ws(S, query).with_all(&own),
            want,
        ));
    }
    let r = ws(GONE, "token=gone").with("origin", &origin(&format!("{GONE}.{DOMAIN}")));
    cases.push(("page socket, deleted session".into(), r, Close(4404)));
    // Programs (no Origin) and other origins keep plain HTTP refusals.
    cases.push((
        "program socket, expired token".into(),
        ws(S, "token=expired"),
        Status(401),
    ));
    let foreign = origin(&format!("{OTHER}.{DOMAIN}"));
    cases.push((
        "other origin, expired token".into(),
        ws(S, "token=expired").with("origin", &foreign),
        Status(401),
    ));
    table("close codes", cases);
}

#[test]
fn previews_cannot_touch_warren_credentials() {
    let host = format!("8080-{S}.{DOMAIN}");
    let preview = Proxied(StreamKind::Port(8080));
    let pair = "__Host-warren_token=good";
    let mut cases = vec![(
        "preview exchange sets the __Host- cookie".to_string(),
        req(&host, "GET", "/?token=good"),
        Seen::Exchanged,
    )];
    // An absolute-form target is routed by Host, never by the target.
    let abs = format!("https://{OTHER}.{DOMAIN}:{PORT}/cgi-bin/echo?y=1");
    let r = req(&host, "GET", &abs).with("authorization", "Bearer good");
    cases.push((
        "absolute-form target naming another session refused".into(),
        r,
        preview,
    ));
    let other_origin = origin(&format!("8080-{OTHER}.{DOMAIN}"));
    let own = origin(&host);
    for (name, hs, want) in [
        (
            "POST with the cookie from another session's preview",
            vec![("cookie", pair), ("origin", other_origin.as_str())],
            Status(403),
        ),
        (
            "POST with the cookie, Sec-Fetch-Site same-site, no Origin",
            vec![("cookie", pair), ("sec-fetch-site", "same-site")],
            Status(403),
        ),
        (
            "POST with the cookie from its own origin",
            vec![("cookie", pair), ("origin", own.as_str())],
            preview,
        ),
    ] {
        let r = req(&host, "POST", "/cgi-bin/echo").with_all(&hs);
        cases.push((name.into(), r, want));
    }
    table("previews", cases);
    // What the app is sent and may set.
    assert_eq!(
        strip_cookie(&format!("{pair}; app=7")).as_deref(),
        Some("app=7"),
        "app never sees our cookie"
    );
    assert_eq!(
        strip_token(Some("x=1&token=good")).as_deref(),
        Some("x=1"),
        "app never sees our token in the query"
    );
    for c in [
        "warren_token=tossed; Domain=warren.localhost; Path=/_warren/terminal; Max-Age=99999",
        "__Host-warren_token=tossed; Path=/; Secure",
    ] {
        assert_eq!(
            filter_set_cookie(c),
            None,
            "app's warren_token cookies dropped"
        );
    }
    let app = filter_set_cookie("app=1; Domain=warren.localhost; Path=/; HttpOnly").unwrap();
    assert!(
        app.starts_with("app=1") && !app.to_ascii_lowercase().contains("domain"),
        "app's Domain= cookie made host-only: {app}"
    );
    assert_eq!(
        filter_set_cookie("plain=2; Path=/").as_deref(),
        Some("plain=2; Path=/"),
        "app's own host cookie kept"
    );
    let f = req(&host, "GET", "/")
        .with("authorization", "Bearer good")
        .facts();
    assert!(f.bearer.is_some(), "app never sees our Authorization");
}

#[test]
fn routing_and_the_api_edge() {
    let host = format!("{S}.{DOMAIN}");
    let mut cases = vec![(
        "SNI names another host".to_string(),
        req(&host, "GET", "/").sni(&format!("x{host}")),
        Status(421),
    )];
    for (name, h, want) in [
        ("foreign host", "evil.example".to_string(), 404),
        ("IP literal", "127.0.0.1".to_string(), 404),
        ("underscore label", format!("s_x.{DOMAIN}"), 400),
        ("64-char label", format!("{}.{DOMAIN}", "a".repeat(64)), 400),
        ("sub-subdomain", format!("x.{S}.{DOMAIN}"), 404),
        ("port 0 preview", format!("0-{S}.{DOMAIN}"), 404),
        ("port 65536 preview", format!("65536-{S}.{DOMAIN}"), 404),
        ("leading-zero port", format!("08080-{S}.{DOMAIN}"), 404),
    ] {
        // SNI is a name the TLS client accepts; the Host header lies. The
        // hostile test accepts 400, 404 or 421 for these.
        let r = req(&h, "GET", "/").sni(&host);
        let got = r.seen();
        let ok = match (want, got) {
            (404, Status(s)) => matches!(s, 400 | 404 | 421),
            (_, Status(s)) => matches!(s, 400 | 421),
            _ => false,
        };
        assert!(ok, "{name}: {got:?}");
        cases.push((name.into(), r, got));
    }
    let upper = format!("{}.WARREN.LOCALHOST.", S.to_uppercase());
    cases.push((
        "upper case and trailing dot route as the session".into(),
        req(&upper, "GET", "/").sni(&host),
        Status(401),
    ));
    let api = format!("api.{DOMAIN}");
    for (path, want) in [
        ("/internal/v1/join", Status(404)),
        ("/internal/v1/routes/x", Status(404)),
        ("/metrics", Status(404)),
        ("/v1/sessions", Seen::Control),
        ("/.well-known/jwks.json", Seen::Control),
        ("/healthz", Seen::Control),
    ] {
        cases.push((format!("api {path}"), req(&api, "GET", path), want));
    }
    cases.push((
        "api POST /internal/v1/join".into(),
        req(&api, "POST", "/internal/v1/join"),
        Status(404),
    ));
    table("routing and the API edge", cases);
    // Without a control plane behind it, the API is not found.
    let d = decide(
        &req(&api, "GET", "/healthz").facts(),
        &Policy {
            control: None,
            ..policy(None)
        },
    );
    assert!(matches!(d.action, Action::Answer(a) if a.status == 404));
}

#[test]
fn browser_preview_page_cannot_open_another_sessions_terminal() {
    // The victim's cookie rides along; the Origin is the attacker's preview.
    let attacker = origin(&format!("8080-{OTHER}.{DOMAIN}"));
    let hs = [
        ("cookie", "__Host-warren_token=good"),
        ("origin", attacker.as_str()),
    ];
    table(
        "browser hijack",
        vec![
            ("plain".into(), ws(S, "").with_all(&hs), Status(403)),
            (
                "command in the URL".into(),
                ws(S, "mode=exec&command=id").with_all(&hs),
                Status(400),
            ),
        ],
    );
}

#[test]
fn previews_on_their_own_domain() {
    let b = ("authorization", "Bearer good");
    let preview = format!("8080-{S}.{PD}");
    let cases = vec![
        (
            "preview on the preview domain".to_string(),
            req(&preview, "GET", "/index.html").with(b.0, b.1),
            Proxied(StreamKind::Port(8080)),
        ),
        (
            "preview exchange sets a host-only cookie on the preview host".into(),
            req(&preview, "GET", "/?token=good"),
            Seen::Exchanged,
        ),
        (
            "preview under the main domain".into(),
            req(&format!("8080-{S}.{DOMAIN}"), "GET", "/index.html").with(b.0, b.1),
            Status(404),
        ),
        (
            "terminal on the preview domain".into(),
            req(&format!("{S}.{PD}"), "GET", "/").with(b.0, b.1),
            Status(404),
        ),
        (
            "api on the preview domain".into(),
            req(&format!("api.{PD}"), "GET", "/").with(b.0, b.1),
            Status(404),
        ),
        (
            "preview domain apex".into(),
            req(PD, "GET", "/").with(b.0, b.1),
            Status(404),
        ),
        (
            "terminal page on the main domain".into(),
            req(&format!("{S}.{DOMAIN}"), "GET", "/")
                .with(b.0, b.1)
                .with(HTML.0, HTML.1),
            Status(200),
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(n, r, w)| (n, r.on_preview_domain(), w))
        .collect();
    table("preview domain", cases);
    let d = decide(
        &req(&format!("8080-{S}.{DOMAIN}"), "GET", "/").facts(),
        &policy(Some(PD)),
    );
    assert!(
        matches!(&d.action, Action::Answer(a) if a.code == "preview_elsewhere"),
        "preview under the main domain says where previews are"
    );
}

#[test]
fn the_page_its_assets_and_renewal() {
    let host = format!("{S}.{DOMAIN}");
    let me = origin(&host);
    table(
        "page",
        vec![
            (
                "assets need no token".into(),
                req(&host, "GET", "/_warren/assets/app.js"),
                Seen::Asset,
            ),
            (
                "renewal from the page".into(),
                req(&host, "POST", "/_warren/refresh").with("origin", &me),
                Seen::Refresh,
            ),
            (
                "renewal without Origin".into(),
                req(&host, "POST", "/_warren/refresh"),
                Status(403),
            ),
            (
                "renewal by GET".into(),
                req(&host, "GET", "/_warren/refresh").with("origin", &me),
                Status(403),
            ),
            (
                "other paths of the page host".into(),
                req(&host, "GET", "/x").with("authorization", "Bearer good"),
                Status(404),
            ),
            (
                "TLS without SNI".into(),
                Req {
                    sni: None,
                    ..req(&host, "GET", "/")
                },
                Status(421),
            ),
            // The apex is the dashboard: its page, its files, the public
            // API at the same origin; nothing else, and never a session's.
            (
                "the apex is the dashboard".into(),
                req(DOMAIN, "GET", "/"),
                Seen::Asset,
            ),
            (
                "the apex's other paths".into(),
                req(DOMAIN, "GET", "/_warren/terminal"),
                Status(404),
            ),
            (
                "no dashboard by POST".into(),
                req(DOMAIN, "POST", "/"),
                Status(404),
            ),
            (
                "a preview WebSocket with ?token= is not an exchange".into(),
                Req {
                    upgrade: true,
                    ..req(&format!("8080-{S}.{DOMAIN}"), "GET", "/?token=good")
                },
                Proxied(StreamKind::Port(8080)),
            ),
        ],
    );
}

#[test]
fn the_sandbox_api_takes_a_bearer_token_of_its_scope() {
    let host = format!("{S}.{DOMAIN}");
    let api = Proxied(StreamKind::Api);
    let bearer = |path: &str, t: &str| {
        req(&host, "POST", path).with("authorization", &format!("Bearer {t}"))
    };
    let mut cases = Vec::new();
    for path in ["/_warren/api/exec", "/_warren/api/files?path=/x"] {
        cases.push((format!("{path}, exec token"), bearer(path, "exec"), api));
        cases.push((
            format!("{path}, default token"),
            bearer(path, "good"),
            Status(403),
        ));
        cases.push((
            format!("{path}, another session's exec token"),
            bearer(path, "exec-theirs"),
            Status(403),
        ));
        cases.push((
            format!("{path}, snapshot token"),
            bearer(path, "snapshot"),
            Status(403),
        ));
        // A link or a cookie never drives the API (no cross-site use).
        let q = if path.contains('?') { "&" } else { "?" };
        cases.push((
            format!("{path}, exec token in the query"),
            req(&host, "POST", &format!("{path}{q}token=exec")),
            Status(401),
        ));
        cases.push((
            format!("{path}, exec token as a cookie"),
            req(&host, "POST", path).with("cookie", "__Host-warren_token=exec"),
            Status(401),
        ));
    }
    // The snapshot path takes control's own scope only.
    cases.push((
        "snapshot, exec token".into(),
        bearer("/_warren/api/snapshot", "exec"),
        Status(403),
    ));
    cases.push((
        "snapshot, snapshot token".into(),
        bearer("/_warren/api/snapshot", "snapshot"),
        Proxied(StreamKind::Snapshot),
    ));
    // Other spellings are not found, never passed on under a weaker scope.
    for path in [
        "/_warren/api/%73napshot",
        "/_warren/api//snapshot",
        "/_warren/api/exec/../snapshot",
        "/_warren/api/exec/",
        "/_warren/api/",
    ] {
        cases.push((
            format!("{path}, exec token"),
            bearer(path, "exec"),
            Status(404),
        ));
    }
    table("the sandbox API", cases);
}

#[test]
fn the_page_upload_comes_from_the_page() {
    let host = format!("{S}.{DOMAIN}");
    let me = origin(&host);
    let other = origin(&format!("{OTHER}.{DOMAIN}"));
    let preview = origin(&format!("8080-{S}.{DOMAIN}"));
    let cookie = ("cookie", "__Host-warren_token=good");
    let put = |q: &str| req(&host, "PUT", &format!("/_warren/upload?{q}"));
    table(
        "upload",
        vec![
            (
                "the page's own PUT".into(),
                put("name=a.txt").with_all(&[cookie, ("origin", &me)]),
                Seen::Upload,
            ),
            (
                "a Bearer token".into(),
                put("name=a.txt").with("authorization", "Bearer good"),
                Seen::Upload,
            ),
            (
                "another session's page".into(),
                put("name=a.txt").with_all(&[cookie, ("origin", &other)]),
                Status(403),
            ),
            (
                "the session's own preview".into(),
                put("name=a.txt").with_all(&[cookie, ("origin", &preview)]),
                Status(403),
            ),
            (
                "a token in the URL".into(),
                put("name=a.txt&token=good"),
                Status(401),
            ),
            (
                "no credential".into(),
                put("name=a.txt").with("origin", &me),
                Status(401),
            ),
            (
                "GET".into(),
                req(&host, "GET", "/_warren/upload?name=a").with_all(&[cookie, ("origin", &me)]),
                Status(405),
            ),
            (
                "a path, not a name".into(),
                put("name=..%2Fetc%2Fpasswd").with_all(&[cookie, ("origin", &me)]),
                Status(400),
            ),
            (
                "dot-dot".into(),
                put("name=..").with_all(&[cookie, ("origin", &me)]),
                Status(400),
            ),
            (
                "no name".into(),
                put("").with_all(&[cookie, ("origin", &me)]),
                Status(400),
            ),
            (
                "a preview-only token".into(),
                put("name=a").with("authorization", "Bearer preview-only"),
                Status(403),
            ),
        ]
        .into_iter()
        .map(|(n, r, w): (String, Req, Seen)| (n, r, w))
        .collect(),
    );
}
