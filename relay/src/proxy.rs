//! The Pingora layer, kept thin: each callback calls plain functions
//! (host → route, token → claims) and turns their answers into responses.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use warren_tunnel::proto::{StreamHeader, StreamKind};
use warren_tunnel::server::{OpenError, Registry};

use crate::auth::{AuthError, Claims, Scope, Verifier};
use crate::connector::TunnelConnector;
use crate::host::{self, HostError, Route};
use crate::metrics::Metrics;
use crate::pages::Answer;
use crate::routes::{ControlPlane, Refreshed, RouteCache};
use tracing::warn;

/// The cookie holding the session token on a session's host over plain
/// HTTP (`warren up`'s loopback listener).
pub const COOKIE: &str = "warren_token";
/// The same over HTTPS: a `__Host-` cookie is host-only, Secure and Path=/
/// by the browser's rules, so no sibling host (a preview of another session)
/// can set or shadow it.
pub const HOST_COOKIE: &str = "__Host-warren_token";
/// The refresh grant's cookie (plain HTTP, loopback only) and over HTTPS.
pub const REFRESH_COOKIE: &str = "warren_refresh";
pub const HOST_REFRESH_COOKIE: &str = "__Host-warren_refresh";
/// The page renews its token here (POST, from its own origin).
pub const REFRESH_PATH: &str = "/_warren/refresh";
/// At most this many of our cookies are tried per request.
const MAX_COOKIE_CANDIDATES: usize = 4;
pub use warren_proto::terminal::PATH as TERMINAL_PATH;
/// The policy on every page the relay serves itself. `connect-src 'self'`
/// covers the page's own WebSocket (same host and port).
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'none'; object-src 'none'";
/// Paths of the control API that `api.<domain>` forwards; everything else
/// (`/internal/*` for agents and relays, `/metrics`) stays off the edge.
fn public_api_path(path: &str) -> bool {
    path.starts_with("/v1/")
        || matches!(
            path,
            "/.well-known/jwks.json" | "/healthz" | "/readyz" | "/openapi.json"
        )
}
const ASSET_PREFIX: &str = "/_warren/assets/";

/// TLS server name, captured after the handshake.
pub struct Sni(pub String);

pub struct RelayProxy {
    pub domain: String,
    /// Previews' own domain, when they have one.
    pub preview_domain: Option<String>,
    pub verifier: Arc<Verifier>,
    pub routes: Arc<RouteCache>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub control_upstream: Option<SocketAddr>,
    /// Refresh grants and renewed tokens.
    pub control: Arc<dyn ControlPlane>,
    /// Renewals asked of control per client address ([`REFRESH_LIMIT`]).
    pub refresh_limiter: crate::ssh::FailureLimiter,
}

/// Renewals one client address may ask for per minute. A tab renews once
/// per token lifetime (minutes); this bounds what a client costs control.
pub const REFRESH_LIMIT: u32 = 60;

enum Upstream {
    Tunnel {
        node: String,
        kind: StreamKind,
        session: String,
    },
    Control(SocketAddr),
}

/// Where a request's credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    None,
    Bearer,
    Cookie,
    Query,
}

pub struct Ctx {
    route: &'static str,
    cred: Cred,
    /// A preview: upstream `Set-Cookie` is filtered.
    preview: bool,
    upstream: Option<Upstream>,
    upgrade: bool,
    host: String,
    tls: bool,
    /// The Authorization header carried our token: do not pass it on.
    strip_authorization: bool,
    failure: Arc<Mutex<Option<OpenError>>>,
    upgraded: bool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn wants_html(req: &RequestHeader) -> bool {
    header(req, "accept").is_some_and(|a| a.contains("text/html"))
}

/// The `token` query parameter, if any.
pub fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// The query without `token`, for the redirect and for upstream requests.
pub fn strip_token(query: Option<&str>) -> Option<String> {
    let q = query?;
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k != "token")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish(),
    )
}

/// Our token from a `Cookie` header (the first, for tests and tools).
pub fn cookie_token(cookie_header: Option<&str>) -> Option<String> {
    cookie_tokens(cookie_header, COOKIE).into_iter().next()
}

/// Every value of cookie `name` (a sibling host may have planted others
/// beside ours over plain HTTP; each is tried, the first that opens this
/// session wins).
pub fn cookie_tokens(cookie_header: Option<&str>, name: &str) -> Vec<String> {
    let Some(h) = cookie_header else {
        return Vec::new();
    };
    h.split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .take(MAX_COOKIE_CANDIDATES)
        .collect()
}

fn is_our_cookie(name: &str) -> bool {
    name == COOKIE || name == HOST_COOKIE || name == REFRESH_COOKIE || name == HOST_REFRESH_COOKIE
}

/// The `Cookie` header without ours (upstream apps never see the token).
pub fn strip_cookie(cookie_header: &str) -> Option<String> {
    let kept: Vec<&str> = cookie_header
        .split(';')
        .map(str::trim)
        .filter(|kv| {
            !kv.is_empty()
                && kv
                    .split_once('=')
                    .is_none_or(|(k, _)| !is_our_cookie(k.trim()))
        })
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("; "))
    }
}

/// An upstream `Set-Cookie` as it may reach the browser: ours are dropped
/// (`None`) and a `Domain` attribute is removed, so an app's cookie stays on
/// its own preview host and can neither cover Warren's hosts nor another
/// session's (cookie tossing).
pub fn filter_set_cookie(v: &str) -> Option<String> {
    let mut parts = v.split(';');
    let first = parts.next()?.trim();
    let name = first
        .split_once('=')
        .map(|(k, _)| k.trim())
        .unwrap_or(first);
    let lower = name.to_ascii_lowercase();
    if is_our_cookie(name) || lower.contains("warren_token") || lower.contains("warren_refresh") {
        return None;
    }
    let mut out = first.to_string();
    for attr in parts {
        let a = attr.trim();
        let key = a.split_once('=').map(|(k, _)| k.trim()).unwrap_or(a);
        if key.eq_ignore_ascii_case("domain") || a.is_empty() {
            continue;
        }
        out.push_str("; ");
        out.push_str(a);
    }
    Some(out)
}

/// The URL query names a command (`mode=exec`, `command=`): never taken
/// from a browser's URL (a link could otherwise run code in the session).
pub fn names_command(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "command" || k == "mode")
    })
}

/// Whether `origin` is exactly this request's own origin: same scheme,
/// same host (by the routing rules) and same port as the Host header.
pub fn same_origin(
    origin: &str,
    host_header: &str,
    tls: bool,
    domain: &str,
    preview_domain: Option<&str>,
) -> bool {
    let Ok(u) = url::Url::parse(origin) else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    if u.scheme() != scheme || !u.username().is_empty() || u.path() != "/" {
        return false;
    }
    let Some(ohost) = u.host_str() else {
        return false;
    };
    let (Ok(a), Ok(b)) = (
        host::route_in(ohost, None, domain, preview_domain),
        host::route_in(host_header, None, domain, preview_domain),
    ) else {
        return false;
    };
    let default = if tls { 443 } else { 80 };
    let hport = host_header
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(default);
    a == b && u.port_or_known_default() == Some(hport)
}

/// A redirect target on our own host: leading slashes and backslashes
/// collapse to one, so `//evil.example/` never becomes a protocol-relative
/// URL to another site.
pub fn local_location(path: &str, query: Option<String>) -> String {
    let rest = path.trim_start_matches(['/', '\\']);
    match query {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    }
}

/// Our cookie's values across every `Cookie` header of the request.
fn all_cookie_tokens(req: &RequestHeader, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for v in req.headers.get_all("cookie") {
        let v = String::from_utf8_lossy(v.as_bytes());
        out.extend(cookie_tokens(Some(&v), name));
    }
    out.truncate(MAX_COOKIE_CANDIDATES);
    out
}

fn bearer(req: &RequestHeader) -> Option<String> {
    header(req, "authorization")?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
}

fn host_error(e: &HostError) -> Answer {
    match e {
        HostError::Missing => Answer::new(400, "bad_host", "Bad request", e.to_string()),
        HostError::Invalid(_) => Answer::new(400, "bad_host", "Bad request", e.to_string()),
        HostError::Foreign => Answer::new(
            404,
            "unknown_host",
            "Not found",
            "This relay does not serve that host.",
        ),
        HostError::Misdirected => {
            Answer::new(421, "misdirected", "Misdirected request", e.to_string())
        }
        HostError::PreviewElsewhere => {
            Answer::new(404, "preview_elsewhere", "Not found", e.to_string())
        }
    }
}

fn auth_error(e: &AuthError) -> Answer {
    match e {
        AuthError::MissingScope(_) => Answer::new(403, "forbidden", "Not allowed", e.to_string()),
        _ => Answer::new(401, "unauthorized", "Sign-in needed", e.to_string()),
    }
}

impl RelayProxy {
    /// Checks credentials for `session` with `scope`; returns the node to
    /// reach. Every refusal is decided here, before anything reaches an agent.
    async fn authorize(
        &self,
        token: Option<&str>,
        session: &str,
        scope: Scope,
    ) -> Result<(Arc<Claims>, String), Answer> {
        let token = token.ok_or_else(|| auth_error(&AuthError::Missing))?;
        let claims = self
            .verifier
            .verify(token)
            .await
            .map_err(|e| auth_error(&e))?;
        if !claims.has_scope(scope) {
            return Err(auth_error(&AuthError::MissingScope(scope)));
        }
        if claims.sid != session {
            return Err(Answer::new(
                403,
                "forbidden",
                "Not your session",
                "This token opens another session.",
            ));
        }
        let route = self
            .routes
            .resolve(session)
            .await
            .map_err(|e| {
                Answer::new(
                    503,
                    "unavailable",
                    "Try again",
                    format!("Sessions cannot be looked up right now ({e})."),
                )
            })?
            .ok_or_else(|| {
                Answer::new(
                    404,
                    "session_not_found",
                    "No such session",
                    "This session does not exist or has ended.",
                )
            })?;
        if route.tenant != claims.tenant {
            return Err(Answer::new(
                403,
                "forbidden",
                "Not your session",
                "This session belongs to another tenant.",
            ));
        }
        if !self.registry.is_connected(&route.node) {
            return Err(Answer::new(
                503,
                "node_unavailable",
                "Session unreachable",
                "The machine running this session is not connected right now. Try again in a moment.",
            ));
        }
        Ok((claims, route.node))
    }

    /// [`Self::authorize`] over each candidate token in turn; the first
    /// that opens the session wins, else the first refusal is the answer.
    async fn authorize_any(
        &self,
        tokens: &[String],
        session: &str,
        scope: Scope,
    ) -> Result<(Arc<Claims>, String), Answer> {
        let mut first_err = None;
        for t in tokens {
            match self.authorize(Some(t), session, scope).await {
                Ok(ok) => return Ok(ok),
                Err(a) => {
                    first_err.get_or_insert(a);
                }
            }
        }
        match first_err {
            Some(a) => Err(a),
            None => self.authorize(None, session, scope).await,
        }
    }

    async fn send(
        &self,
        session: &mut Session,
        status: u16,
        headers: &[(&str, String)],
        ctype: &str,
        body: Bytes,
    ) -> pingora::Result<bool> {
        let mut resp = ResponseHeader::build(status, Some(headers.len() + 9))?;
        resp.insert_header("content-type", ctype)?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        // Everything the relay answers itself (the terminal page, its
        // assets, error pages): never framed (clickjacking from a preview),
        // no Referer (session ids in URLs), scripts and connections only to
        // this host.
        resp.insert_header("content-security-policy", PAGE_CSP)?;
        resp.insert_header("x-frame-options", "DENY")?;
        resp.insert_header("referrer-policy", "no-referrer")?;
        resp.insert_header("x-content-type-options", "nosniff")?;
        resp.insert_header("cross-origin-opener-policy", "same-origin")?;
        for (k, v) in headers {
            resp.append_header(k.to_string(), v.as_str())?;
        }
        let head_only = session.req_header().method == pingora::http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    /// Accepts a WebSocket handshake only to close it at once with the
    /// close code that stands for `a` (4401, 4403, 4404, ...), so a browser
    /// page can tell "signed out" from "network down".
    async fn close_upgrade(&self, session: &mut Session, a: &Answer) -> pingora::Result<bool> {
        let key = session
            .req_header()
            .headers
            .get("sec-websocket-key")
            .map(|k| k.as_bytes().to_vec());
        let Some(key) = key.filter(|k| !k.is_empty() && k.len() <= 64) else {
            return self.answer(session, a.clone()).await;
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        let mut resp = ResponseHeader::build(101, Some(4))?;
        resp.insert_header("upgrade", "websocket")?;
        resp.insert_header("connection", "Upgrade")?;
        resp.insert_header("sec-websocket-accept", accept)?;
        session.write_response_header(Box::new(resp), false).await?;
        let frame = close_frame(close_code_for(a.status), &a.message);
        session.write_response_body(Some(frame), true).await?;
        Ok(true)
    }

    /// `POST /_warren/refresh`: a new token cookie for the page's refresh
    /// grant. 204 with the cookie; 401 when the grant is unknown (sign in
    /// again); 404 when the session has ended.
    async fn refresh(
        &self,
        session: &mut Session,
        sid: &str,
        tls: bool,
        own_origin: bool,
    ) -> pingora::Result<bool> {
        if !own_origin || session.req_header().method != pingora::http::Method::POST {
            return self
                .answer(
                    session,
                    Answer::new(
                        403,
                        "cross_origin",
                        "Not allowed",
                        "Tokens are renewed only by the session's own page (POST from its origin).",
                    ),
                )
                .await;
        }
        let name = if tls {
            HOST_REFRESH_COOKIE
        } else {
            REFRESH_COOKIE
        };
        let grants = all_cookie_tokens(session.req_header(), name);
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(ip) = peer {
            if self.refresh_limiter.limited(ip) {
                return self
                    .answer(
                        session,
                        Answer::new(
                            429,
                            "rate_limited",
                            "Too many renewals",
                            "Too many token renewals from this address; try again in a minute.",
                        ),
                    )
                    .await;
            }
            self.refresh_limiter.fail(ip);
        }
        let mut outcome = Refreshed::Invalid;
        // Only what control hands out (`wr_` and 40 letters or digits)
        // goes on to control.
        let well_formed = |g: &&String| {
            g.len() == 43
                && g.starts_with("wr_")
                && g[3..].bytes().all(|b| b.is_ascii_alphanumeric())
        };
        for g in grants.iter().filter(well_formed).take(2) {
            match self.control.refresh(sid, g).await {
                Ok(Refreshed::Invalid) => continue,
                Ok(other) => {
                    outcome = other;
                    break;
                }
                Err(e) => {
                    warn!(session = %sid, "refresh failed: {e}");
                    return self
                        .answer(
                            session,
                            Answer::new(
                                503,
                                "unavailable",
                                "Try again",
                                "Tokens cannot be renewed right now.",
                            ),
                        )
                        .await;
                }
            }
        }
        match outcome {
            Refreshed::Token(t, exp) => {
                let headers = [("set-cookie", token_cookie(&t, exp.max(0) as u64, tls))];
                self.send(
                    session,
                    204,
                    &headers,
                    "text/plain; charset=utf-8",
                    Bytes::new(),
                )
                .await
            }
            Refreshed::Invalid => {
                self.answer(
                    session,
                    Answer::new(
                        401,
                        "unauthorized",
                        "Signed out",
                        "Open the session link again to sign in.",
                    ),
                )
                .await
            }
            Refreshed::Gone => {
                self.answer(
                    session,
                    Answer::new(
                        404,
                        "session_not_found",
                        "Session ended",
                        "This session has ended.",
                    ),
                )
                .await
            }
        }
    }

    async fn answer(&self, session: &mut Session, a: Answer) -> pingora::Result<bool> {
        let html = wants_html(session.req_header());
        let (ctype, body) = a.render(html);
        let mut headers = Vec::new();
        if a.status == 401 {
            headers.push(("www-authenticate", "Bearer realm=\"warren\"".to_string()));
        }
        if a.status == 429 {
            headers.push(("retry-after", "60".to_string()));
        }
        self.send(session, a.status, &headers, ctype, body).await
    }

    async fn asset(&self, session: &mut Session, name: &str) -> pingora::Result<bool> {
        match crate::assets::get(name) {
            Some((ctype, bytes)) => {
                self.send(session, 200, &[], ctype, Bytes::from_static(bytes))
                    .await
            }
            None => {
                self.answer(
                    session,
                    Answer::new(404, "not_found", "Not found", "No such file."),
                )
                .await
            }
        }
    }

    /// `?token=` on a page visit: verify, set a host-only cookie, and
    /// redirect to the same URL without the token.
    async fn exchange(
        &self,
        session: &mut Session,
        token: &str,
        sid: &str,
        scope: Scope,
        tls: bool,
    ) -> pingora::Result<bool> {
        match self.authorize(Some(token), sid, scope).await {
            Ok((claims, _)) => {
                let req = session.req_header();
                let location = local_location(req.uri.path(), strip_token(req.uri.query()));
                let mut headers = vec![
                    ("location", location),
                    ("set-cookie", token_cookie(token, claims.exp, tls)),
                ];
                // The terminal page gets a refresh grant too, so the tab
                // outlives its token (for the session's lifetime).
                if scope == Scope::Terminal {
                    match self.control.grant(token).await {
                        Ok(Some((grant, exp))) => {
                            headers.push(("set-cookie", refresh_cookie(&grant, exp, tls)))
                        }
                        Ok(None) => {}
                        Err(e) => warn!(session = %sid, "no refresh grant: {e}"),
                    }
                }
                self.send(
                    session,
                    303,
                    &headers,
                    "text/plain; charset=utf-8",
                    Bytes::from_static(b"See the session page.\n"),
                )
                .await
            }
            Err(a) => self.answer(session, a).await,
        }
    }
}

#[async_trait]
impl ProxyHttp for RelayProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            route: "none",
            cred: Cred::None,
            preview: false,
            upstream: None,
            upgrade: false,
            host: String::new(),
            tls: false,
            strip_authorization: false,
            failure: Arc::new(Mutex::new(None)),
            upgraded: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let req = session.req_header();
        let host_header = header(req, "host")
            .map(str::to_string)
            .or_else(|| req.uri.authority().map(|a| a.to_string()));
        let ssl = session.digest().and_then(|d| d.ssl_digest.clone());
        ctx.tls = ssl.is_some();
        let sni = ssl
            .as_ref()
            .and_then(|s| s.extension.get::<Sni>().map(|s| s.0.clone()));
        // Browsers always name the host in TLS; a client that does not
        // could otherwise pick any session's Host on a shared connection.
        if ctx.tls && sni.is_none() {
            ctx.route = "invalid";
            return self
                .answer(
                    session,
                    Answer::new(
                        421,
                        "misdirected",
                        "Misdirected request",
                        "TLS connections must name the host (SNI).",
                    ),
                )
                .await;
        }
        let route = match host::route_in(
            host_header.as_deref().unwrap_or(""),
            sni.as_deref(),
            &self.domain,
            self.preview_domain.as_deref(),
        ) {
            Ok(r) => r,
            Err(e) => {
                ctx.route = "invalid";
                return self.answer(session, host_error(&e)).await;
            }
        };
        ctx.host = host_header.unwrap_or_default();
        ctx.upgrade = session.is_upgrade_req();
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let is_get =
            req.method == pingora::http::Method::GET || req.method == pingora::http::Method::HEAD;
        let q_token = query_token(req.uri.query());
        let b_token = bearer(req);
        // HTTPS reads only the `__Host-` cookie (no sibling host can set
        // it); plain HTTP (loopback) reads every `warren_token` value.
        let cookie_name = if ctx.tls { HOST_COOKIE } else { COOKIE };
        let c_tokens = all_cookie_tokens(req, cookie_name);
        ctx.strip_authorization = b_token.is_some();
        let origin = header(req, "origin").map(str::to_string);
        let fetch_site = header(req, "sec-fetch-site").map(str::to_ascii_lowercase);
        let unsafe_method = !matches!(
            req.method,
            pingora::http::Method::GET
                | pingora::http::Method::HEAD
                | pingora::http::Method::OPTIONS
        );
        let query_has_command = names_command(req.uri.query());
        let (cred, tokens): (Cred, Vec<String>) = if let Some(b) = b_token {
            (Cred::Bearer, vec![b])
        } else if !c_tokens.is_empty() {
            (Cred::Cookie, c_tokens)
        } else if let Some(q) = q_token.clone() {
            (Cred::Query, vec![q])
        } else {
            (Cred::None, Vec::new())
        };
        ctx.cred = cred;
        let own_origin = origin.as_deref().is_some_and(|o| {
            same_origin(
                o,
                &ctx.host,
                ctx.tls,
                &self.domain,
                self.preview_domain.as_deref(),
            )
        });
        // A cookie rides along on requests other sites start (every session
        // and preview host is the same site): such requests must come from
        // this very origin when they can change something.
        let cookie_refused = |upgrade: bool| -> Option<Answer> {
            if cred != Cred::Cookie {
                return None;
            }
            let foreign = match &origin {
                Some(_) => !own_origin,
                // Browsers always send Origin on WebSocket handshakes and on
                // cross-origin POSTs; without one, trust only a navigation.
                None => {
                    upgrade
                        || fetch_site
                            .as_deref()
                            .is_some_and(|f| f != "same-origin" && f != "none")
                }
            };
            (foreign && (upgrade || unsafe_method)).then(|| {
                Answer::new(
                    403,
                    "cross_origin",
                    "Not allowed",
                    "This request came from another site or session; it needs this page's own origin.",
                )
            })
        };

        match route {
            Route::Apex => {
                ctx.route = "apex";
                self.answer(
                    session,
                    Answer::new(
                        404,
                        "no_session",
                        "Warren",
                        "Open a session link to reach a terminal.",
                    ),
                )
                .await
            }
            Route::Api => {
                ctx.route = "api";
                if !public_api_path(&path) {
                    return self
                        .answer(
                            session,
                            Answer::new(404, "not_found", "Not found", "No such API path."),
                        )
                        .await;
                }
                match self.control_upstream {
                    Some(addr) => {
                        ctx.upstream = Some(Upstream::Control(addr));
                        Ok(false)
                    }
                    None => {
                        self.answer(
                            session,
                            Answer::new(
                                404,
                                "not_found",
                                "Not found",
                                "No control plane behind this relay.",
                            ),
                        )
                        .await
                    }
                }
            }
            Route::Terminal { session: sid } => {
                if let Some(name) = path.strip_prefix(ASSET_PREFIX) {
                    ctx.route = "asset";
                    return self.asset(session, name).await;
                }
                if path == REFRESH_PATH {
                    ctx.route = "refresh";
                    return self.refresh(session, &sid, ctx.tls, own_origin).await;
                }
                if path == TERMINAL_PATH {
                    ctx.route = "terminal";
                    // A browser can put a command in a link (or a page's
                    // WebSocket URL) but cannot set an Authorization header
                    // on a WebSocket: commands come only with a Bearer token.
                    if query_has_command && cred != Cred::Bearer {
                        return self
                            .answer(
                                session,
                                Answer::new(
                                    400,
                                    "command_in_url",
                                    "Bad request",
                                    "Commands are taken only with an Authorization: Bearer token, never from a link or a cookie.",
                                ),
                            )
                            .await;
                    }
                    if let Some(a) = cookie_refused(true) {
                        return self.answer(session, a).await;
                    }
                    return match self.authorize_any(&tokens, &sid, Scope::Terminal).await {
                        Ok((_, node)) => {
                            if ctx.upgrade {
                                // Idle terminals stay open for hours; QUIC and
                                // WebSocket keepalives watch the connection.
                                session.set_read_timeout(None);
                            }
                            ctx.upstream = Some(Upstream::Tunnel {
                                node,
                                kind: StreamKind::Terminal,
                                session: sid,
                            });
                            Ok(false)
                        }
                        // The page cannot read an HTTP status from a
                        // refused WebSocket (it sees 1006): its own origin
                        // gets the refusal as a close code instead.
                        Err(a) if ctx.upgrade && own_origin => {
                            self.close_upgrade(session, &a).await
                        }
                        Err(a) => self.answer(session, a).await,
                    };
                }
                ctx.route = "page";
                if is_get && let Some(t) = q_token {
                    return self
                        .exchange(session, &t, &sid, Scope::Terminal, ctx.tls)
                        .await;
                }
                match self.authorize_any(&tokens, &sid, Scope::Terminal).await {
                    Ok(_) if path == "/" || path == "/index.html" => {
                        self.asset(session, "index.html").await
                    }
                    Ok(_) => {
                        self.answer(
                            session,
                            Answer::new(404, "not_found", "Not found", "The terminal is at /."),
                        )
                        .await
                    }
                    Err(a) => self.answer(session, a).await,
                }
            }
            Route::Port { session: sid, port } => {
                ctx.route = "preview";
                ctx.preview = true;
                if is_get
                    && !ctx.upgrade
                    && let Some(t) = q_token
                {
                    return self
                        .exchange(session, &t, &sid, Scope::Preview, ctx.tls)
                        .await;
                }
                if let Some(a) = cookie_refused(ctx.upgrade) {
                    return self.answer(session, a).await;
                }
                match self.authorize_any(&tokens, &sid, Scope::Preview).await {
                    Ok((_, node)) => {
                        if ctx.upgrade {
                            session.set_read_timeout(None);
                        }
                        ctx.upstream = Some(Upstream::Tunnel {
                            node,
                            kind: StreamKind::Port(port),
                            session: sid,
                        });
                        Ok(false)
                    }
                    Err(a) => self.answer(session, a).await,
                }
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        match &ctx.upstream {
            Some(Upstream::Tunnel {
                node,
                kind,
                session: sid,
            }) => {
                let mut peer = HttpPeer::new(("127.0.0.1", 1), false, String::new());
                // Never pool across nodes (virtual streams are not reused anyway).
                peer.group_key = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    node.hash(&mut h);
                    h.finish()
                };
                let client_addr = session.client_addr().and_then(|a| a.as_inet()).copied();
                let header = StreamHeader {
                    session: sid.clone(),
                    kind: *kind,
                    request_id: format!("{:016x}", rand_u64()),
                    client_addr,
                };
                peer.options.custom_l4 = Some(Arc::new(TunnelConnector {
                    registry: self.registry.clone(),
                    node: node.clone(),
                    header,
                    failure: ctx.failure.clone(),
                    metrics: self.metrics.clone(),
                }));
                Ok(Box::new(peer))
            }
            Some(Upstream::Control(addr)) => {
                let mut peer = HttpPeer::new(*addr, false, String::new());
                // Control closes a connection idle for 10 s (its header-read
                // timeout); pooled ones are dropped before, never reused
                // just as control closes them.
                peer.options.idle_timeout = Some(std::time::Duration::from_secs(5));
                Ok(Box::new(peer))
            }
            None => {
                pingora::Error::e_explain(pingora::ErrorType::InternalError, "no upstream chosen")
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if !ctx.upgrade {
            // Virtual streams cannot be pooled (pingora #883): one request each.
            req.insert_header("connection", "close")?;
        }
        if ctx.strip_authorization {
            req.remove_header("authorization");
        }
        // Every cookie field (HTTP/2 sends crumbs as separate headers),
        // as bytes: ours never reach the session's apps.
        let crumbs: Vec<String> = req
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if !crumbs.is_empty() {
            req.remove_header("cookie");
            if let Some(rest) = strip_cookie(&crumbs.join("; ")) {
                req.insert_header("cookie", rest)?;
            }
        }
        // Upstream always gets origin-form (`/path?query`), never the
        // client's absolute-form target (which may name another host), and
        // never our token.
        {
            let path = req.uri.path().to_string();
            let uri = match strip_token(req.uri.query()) {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            match uri.parse() {
                Ok(u) => req.set_uri(u),
                Err(_) => {
                    return pingora::Error::e_explain(
                        pingora::ErrorType::InvalidHTTPHeader,
                        "request target",
                    );
                }
            }
        }
        // Only the relay says who the client is.
        req.remove_header("forwarded");
        req.remove_header("x-real-ip");
        if header(req, "host").is_none() {
            req.insert_header("host", ctx.host.clone())?;
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            req.insert_header("x-forwarded-for", ip.to_string())?;
        }
        req.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
        req.insert_header("x-forwarded-host", ctx.host.clone())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if resp.status.as_u16() == 101 {
            ctx.upgraded = true;
            self.metrics.connections.inc();
        }
        if ctx.preview {
            let cookies: Vec<String> = resp
                .headers
                .get_all("set-cookie")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            if !cookies.is_empty() {
                resp.remove_header("set-cookie");
                for c in cookies.iter().filter_map(|c| filter_set_cookie(c)) {
                    resp.append_header("set-cookie", c)?;
                }
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
        let failure = ctx.failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        let answer = match failure {
            Some(OpenError::Rejected { code, message }) if code == "session_not_found" => {
                Answer::new(404, "session_not_found", "No such session", message)
            }
            Some(OpenError::Rejected { message, .. }) => {
                Answer::new(502, "upstream_refused", "Session unreachable", message)
            }
            Some(OpenError::NodeNotConnected(_))
            | Some(OpenError::Timeout(..))
            | Some(OpenError::Connection(_)) => Answer::new(
                503,
                "node_unavailable",
                "Session unreachable",
                "The machine running this session did not answer. Try again in a moment.",
            ),
            None if matches!(e.esource(), pingora::ErrorSource::Downstream) => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            None => Answer::new(
                502,
                "bad_gateway",
                "Session unreachable",
                "The session did not answer properly.",
            ),
        };
        let status = answer.status;
        let _ = self.answer(session, answer).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        self.metrics
            .requests
            .with_label_values(&[ctx.route, &status.to_string()])
            .inc();
        if ctx.upgraded {
            self.metrics.connections.dec();
        }
        self.metrics
            .bytes_relayed
            .with_label_values(&["to_client"])
            .inc_by(session.body_bytes_sent() as u64);
        self.metrics
            .bytes_relayed
            .with_label_values(&["from_client"])
            .inc_by(session.body_bytes_read() as u64);
    }
}

fn rand_u64() -> u64 {
    rand::random()
}

/// The session token's cookie. Plain HTTP is served on loopback only
/// (`warren up`), where browsers would drop a Secure cookie set over http
/// (and a `__Host-` cookie needs Secure).
fn token_cookie(token: &str, exp: u64, tls: bool) -> String {
    let max_age = exp.saturating_sub(now());
    if tls {
        format!("{HOST_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax")
    } else {
        format!("{COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax")
    }
}

/// The refresh grant's cookie: sent only to this host, never to another
/// site's requests (Strict), read only by the refresh endpoint.
fn refresh_cookie(grant: &str, exp: i64, tls: bool) -> String {
    let max_age = (exp.max(0) as u64).saturating_sub(now());
    if tls {
        format!(
            "{HOST_REFRESH_COOKIE}={grant}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
        )
    } else {
        format!("{REFRESH_COOKIE}={grant}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict")
    }
}

/// The terminal close code that means the same as an HTTP refusal.
fn close_code_for(status: u16) -> u16 {
    use warren_proto::terminal::close;
    match status {
        401 => close::AUTH,
        403 => close::FORBIDDEN,
        404 | 410 => close::SESSION_GONE,
        502..=504 => close::NODE_LOST,
        400..=499 => close::BAD_REQUEST,
        _ => close::INTERNAL,
    }
}

/// An unmasked WebSocket close frame (server to client) with `code` and as
/// much of `reason` as fits.
fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88); // FIN + close
    f.push((2 + reason.len()) as u8);
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    Bytes::from(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_query_and_cookie_handling() {
        assert_eq!(
            query_token(Some("a=1&token=xyz&b=2")).as_deref(),
            Some("xyz")
        );
        assert_eq!(
            strip_token(Some("a=1&token=xyz&b=2")).as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(strip_token(Some("token=xyz")), None);
        assert_eq!(
            cookie_token(Some("x=1; warren_token=abc; y=2")).as_deref(),
            Some("abc")
        );
        assert_eq!(cookie_token(Some("warren_tokenx=abc")), None);
        assert_eq!(
            strip_cookie("x=1; warren_token=abc; y=2").as_deref(),
            Some("x=1; y=2")
        );
        assert_eq!(strip_cookie("warren_token=abc"), None);
    }
}
