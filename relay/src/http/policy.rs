//! The edge's policy as one pure function: the [`Facts`] of a request
//! (host and SNI, method, path, credentials, Origin, upgrade) and the
//! relay's [`Policy`] come to a [`Decision`]. No I/O happens here; the
//! Pingora callbacks gather the facts, call [`decide`], and act.
//!
//! What needs I/O (verifying a token, looking a session up) is named by
//! the decision and done by the caller through [`crate::access`].
use std::net::SocketAddr;

use pingora::http::{Method, RequestHeader};
use warren_tunnel::proto::StreamKind;

use super::answers::host_answer;
use super::cookies::{all_cookie_tokens, bearer, names_command, query_token, token_cookie_name};
use crate::auth::Scope;
use crate::host::{self, Route};
use crate::pages::Answer;

/// The page renews its token here (POST, from its own origin).
pub const REFRESH_PATH: &str = "/_warren/refresh";
use warren_proto::sandbox::{
    API_PREFIX, EXEC_PATH, FILES_PATH, SNAPSHOT_PATH, UPLOAD_DIR, UPLOAD_PATH, check_upload_name,
};
pub use warren_proto::terminal::PATH as TERMINAL_PATH;
/// The terminal page's embedded files.
pub const ASSET_PREFIX: &str = "/_warren/assets/";

/// What the relay serves where: its domains and the control plane behind
/// `api.<domain>`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub domain: String,
    /// Previews' own domain, when they have one.
    pub preview_domain: Option<String>,
    /// Control's address for the public API, if any.
    pub control: Option<SocketAddr>,
}

/// Everything the policy looks at, read from the request before deciding.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Came over TLS, and the server name it named.
    pub tls: bool,
    pub sni: Option<String>,
    /// The Host header (or the request target's authority).
    pub host: Option<String>,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    /// A WebSocket (or other) upgrade.
    pub upgrade: bool,
    pub origin: Option<String>,
    /// `Sec-Fetch-Site`, lowercased.
    pub fetch_site: Option<String>,
    /// The `Authorization: Bearer` token.
    pub bearer: Option<String>,
    /// Our token cookie's values (the `__Host-` one over TLS).
    pub cookies: Vec<String>,
}

impl Facts {
    /// The facts of `req`; `tls`, `sni` and `upgrade` come from the
    /// connection.
    pub fn of(req: &RequestHeader, tls: bool, sni: Option<String>, upgrade: bool) -> Facts {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        Facts {
            tls,
            sni,
            host: header("host")
                .map(str::to_string)
                .or_else(|| req.uri.authority().map(|a| a.to_string())),
            method: req.method.clone(),
            path: req.uri.path().to_string(),
            query: req.uri.query().map(str::to_string),
            upgrade,
            origin: header("origin").map(str::to_string),
            fetch_site: header("sec-fetch-site").map(str::to_ascii_lowercase),
            bearer: bearer(header("authorization")),
            cookies: all_cookie_tokens(req, token_cookie_name(tls)),
        }
    }

    fn is_get(&self) -> bool {
        self.method == Method::GET || self.method == Method::HEAD
    }

    /// A method that may change something.
    fn is_unsafe(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }
}

/// Where the request's credential came from; the first present wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cred {
    None,
    Bearer,
    Cookie,
    Query,
}

/// The credential to check and its candidate tokens.
pub fn credentials(f: &Facts) -> (Cred, Vec<String>) {
    if let Some(b) = &f.bearer {
        (Cred::Bearer, vec![b.clone()])
    } else if !f.cookies.is_empty() {
        (Cred::Cookie, f.cookies.clone())
    } else if let Some(q) = query_token(f.query.as_deref()) {
        (Cred::Query, vec![q])
    } else {
        (Cred::None, Vec::new())
    }
}

/// How a refused tunnel request is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An HTTP error status.
    Status,
    /// A completed WebSocket handshake closed at once with the code for the
    /// refusal: the page's own socket cannot read an HTTP status (it sees
    /// 1006).
    Close,
}

/// What to do with the request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer at once.
    Answer(Answer),
    /// An embedded file of the terminal page (no credentials needed).
    Asset(String),
    /// Renew the token from the page's refresh grant (an own-origin POST).
    Refresh { session: String },
    /// `?token=` on a page visit: check it, set the cookie, redirect.
    Exchange {
        session: String,
        token: String,
        scope: Scope,
    },
    /// The terminal page once access is granted: `index` serves it, any
    /// other path is not found.
    Page {
        session: String,
        tokens: Vec<String>,
        index: bool,
    },
    /// Proxy over a tunnel stream once access is granted.
    Open {
        session: String,
        kind: StreamKind,
        scope: Scope,
        tokens: Vec<String>,
        refusal: Refusal,
    },
    /// Proxy to the control plane.
    Control(SocketAddr),
    /// The page's upload: once a terminal token (not a share link's) is
    /// checked, a files `PUT` of `path` on an API stream.
    Upload {
        session: String,
        tokens: Vec<String>,
        path: String,
    },
}

/// The route's metrics label and what to do.
#[derive(Debug, Clone)]
pub struct Decision {
    pub route: &'static str,
    pub action: Action,
}

impl Decision {
    fn new(route: &'static str, action: Action) -> Self {
        Self { route, action }
    }
    fn answer(route: &'static str, a: Answer) -> Self {
        Self::new(route, Action::Answer(a))
    }
}

/// Paths of the control API that `api.<domain>` forwards; everything else
/// (`/internal/*` for agents and relays, `/metrics`) stays off the edge.
pub fn public_api_path(path: &str) -> bool {
    path.starts_with("/v1/")
        || matches!(
            path,
            "/.well-known/jwks.json" | "/healthz" | "/readyz" | "/openapi.json"
        )
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

fn own_origin(f: &Facts, p: &Policy) -> bool {
    f.origin.as_deref().is_some_and(|o| {
        same_origin(
            o,
            f.host.as_deref().unwrap_or(""),
            f.tls,
            &p.domain,
            p.preview_domain.as_deref(),
        )
    })
}

/// A cookie rides along on requests other sites start (every session and
/// preview host is the same site): such requests must come from this very
/// origin when they can change something. `Some` is the refusal.
fn cross_site(f: &Facts, cred: Cred, own_origin: bool, upgrade: bool) -> Option<Answer> {
    if cred != Cred::Cookie {
        return None;
    }
    let foreign = match &f.origin {
        Some(_) => !own_origin,
        // Browsers always send Origin on WebSocket handshakes and on
        // cross-origin POSTs; without one, trust only a navigation.
        None => {
            upgrade
                || f.fetch_site
                    .as_deref()
                    .is_some_and(|s| s != "same-origin" && s != "none")
        }
    };
    (foreign && (upgrade || f.is_unsafe())).then(|| {
        Answer::new(
            403,
            "cross_origin",
            "Not allowed",
            "This request came from another site or session; it needs this page's own origin.",
        )
    })
}

/// The decision for a request: pure, and the whole of the edge's policy
/// but the access check it names.
pub fn decide(f: &Facts, p: &Policy) -> Decision {
    // Browsers always name the host in TLS; a client that does not could
    // otherwise pick any session's Host on a shared connection.
    if f.tls && f.sni.is_none() {
        return Decision::answer(
            "invalid",
            Answer::new(
                421,
                "misdirected",
                "Misdirected request",
                "TLS connections must name the host (SNI).",
            ),
        );
    }
    let route = match host::route_in(
        f.host.as_deref().unwrap_or(""),
        f.sni.as_deref(),
        &p.domain,
        p.preview_domain.as_deref(),
    ) {
        Ok(r) => r,
        Err(e) => return Decision::answer("invalid", host_answer(&e)),
    };
    match route {
        Route::Apex => apex(f, p),
        Route::Api => api(f, p),
        Route::Terminal { session } => terminal(f, p, session),
        Route::Port { session, port } => preview(f, p, session, port),
    }
}

/// The apex: the dashboard (its page and files), and the public API at the
/// same origin so the page needs no cross-origin calls. The page holds the
/// API key in memory and sends it as a Bearer header: no cookie rides
/// along, so no other site can drive it.
fn apex(f: &Facts, p: &Policy) -> Decision {
    if let Some(name) = f.path.strip_prefix(ASSET_PREFIX) {
        return Decision::new("asset", Action::Asset(name.to_string()));
    }
    if public_api_path(&f.path) {
        return api(f, p);
    }
    if f.is_get() && (f.path == "/" || f.path == "/index.html") {
        return Decision::new("dashboard", Action::Asset(DASHBOARD.to_string()));
    }
    Decision::answer(
        "apex",
        Answer::new(
            404,
            "not_found",
            "Warren",
            "Nothing here: the dashboard is at /, a terminal at its session link.",
        ),
    )
}

/// The dashboard's page among the embedded files.
pub const DASHBOARD: &str = "dashboard.html";

fn api(f: &Facts, p: &Policy) -> Decision {
    if !public_api_path(&f.path) {
        return Decision::answer(
            "api",
            Answer::new(404, "not_found", "Not found", "No such API path."),
        );
    }
    match p.control {
        Some(addr) => Decision::new("api", Action::Control(addr)),
        None => Decision::answer(
            "api",
            Answer::new(
                404,
                "not_found",
                "Not found",
                "No control plane behind this relay.",
            ),
        ),
    }
}

/// `<sid>.<domain>`: assets, the refresh endpoint, the terminal socket and
/// the page.
fn terminal(f: &Facts, p: &Policy, session: String) -> Decision {
    if let Some(name) = f.path.strip_prefix(ASSET_PREFIX) {
        return Decision::new("asset", Action::Asset(name.to_string()));
    }
    let own_origin = own_origin(f, p);
    if f.path == REFRESH_PATH {
        if !own_origin || f.method != Method::POST {
            return Decision::answer(
                "refresh",
                Answer::new(
                    403,
                    "cross_origin",
                    "Not allowed",
                    "Tokens are renewed only by the session's own page (POST from its origin).",
                ),
            );
        }
        return Decision::new("refresh", Action::Refresh { session });
    }
    let (cred, tokens) = credentials(f);
    if f.path == UPLOAD_PATH {
        return upload(f, session, cred, tokens, own_origin);
    }
    if f.path.starts_with(API_PREFIX) {
        // Exec and files: a page, a link or a cookie never reaches them,
        // so no other site can drive them through a signed-in browser.
        if cred != Cred::Bearer {
            return Decision::answer(
                "api",
                Answer::new(
                    401,
                    "bearer_required",
                    "Sign-in required",
                    "The sandbox API takes an Authorization: Bearer token of the exec scope.",
                ),
            );
        }
        // Each path its own scope, exactly: a path spelled another way
        // (`//`, `%2F`, `..`) never reaches the agent under a weaker one.
        let (kind, scope) = match f.path.as_str() {
            EXEC_PATH | FILES_PATH => (StreamKind::Api, Scope::Exec),
            // Control commits snapshots with a token no caller can get, on
            // a stream kind of their own that the agent checks too.
            SNAPSHOT_PATH => (StreamKind::Snapshot, Scope::Snapshot),
            _ => {
                return Decision::answer(
                    "api",
                    Answer::new(404, "not_found", "Not found", "No such API path."),
                );
            }
        };
        return Decision::new(
            "api",
            Action::Open {
                session,
                kind,
                scope,
                tokens,
                refusal: Refusal::Status,
            },
        );
    }
    if f.path == TERMINAL_PATH {
        // A browser can put a command in a link (or a page's WebSocket URL)
        // but cannot set an Authorization header on a WebSocket: commands
        // come only with a Bearer token.
        if names_command(f.query.as_deref()) && cred != Cred::Bearer {
            return Decision::answer(
                "terminal",
                Answer::new(
                    400,
                    "command_in_url",
                    "Bad request",
                    "Commands are taken only with an Authorization: Bearer token, never from a link or a cookie.",
                ),
            );
        }
        if let Some(a) = cross_site(f, cred, own_origin, true) {
            return Decision::answer("terminal", a);
        }
        let refusal = if f.upgrade && own_origin {
            Refusal::Close
        } else {
            Refusal::Status
        };
        return Decision::new(
            "terminal",
            Action::Open {
                session,
                kind: StreamKind::Terminal,
                scope: Scope::Terminal,
                tokens,
                refusal,
            },
        );
    }
    if f.is_get()
        && let Some(token) = query_token(f.query.as_deref())
    {
        return Decision::new(
            "page",
            Action::Exchange {
                session,
                token,
                scope: Scope::Terminal,
            },
        );
    }
    let index = f.path == "/" || f.path == "/index.html";
    Decision::new(
        "page",
        Action::Page {
            session,
            tokens,
            index,
        },
    )
}

/// The page's drag-and-drop upload: `PUT` with the page's credential;
/// with a cookie, from the page's own origin only (a `PUT` from elsewhere
/// would need a CORS grant no Warren host gives).
fn upload(f: &Facts, session: String, cred: Cred, tokens: Vec<String>, own: bool) -> Decision {
    let refuse = |status, code, text: String| {
        Decision::answer("upload", Answer::new(status, code, "Upload refused", text))
    };
    if f.method != Method::PUT {
        return refuse(
            405,
            "method_not_allowed",
            "Uploads are PUT requests.".into(),
        );
    }
    if cred == Cred::Query {
        return refuse(
            401,
            "unauthorized",
            "Uploads take the page's cookie or a Bearer token.".into(),
        );
    }
    if let Some(a) = cross_site(f, cred, own, false) {
        return Decision::answer("upload", a);
    }
    let name = url::form_urlencoded::parse(f.query.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if let Err(e) = check_upload_name(&name) {
        return refuse(400, "bad_request", e);
    }
    Decision::new(
        "upload",
        Action::Upload {
            session,
            tokens,
            path: format!("{UPLOAD_DIR}/{name}"),
        },
    )
}

/// `<port>-<sid>.<domain>`: everything to that port of the session.
fn preview(f: &Facts, p: &Policy, session: String, port: u16) -> Decision {
    if f.is_get()
        && !f.upgrade
        && let Some(token) = query_token(f.query.as_deref())
    {
        return Decision::new(
            "preview",
            Action::Exchange {
                session,
                token,
                scope: Scope::Preview,
            },
        );
    }
    let (cred, tokens) = credentials(f);
    if let Some(a) = cross_site(f, cred, own_origin(f, p), f.upgrade) {
        return Decision::answer("preview", a);
    }
    Decision::new(
        "preview",
        Action::Open {
            session,
            kind: StreamKind::Port(port),
            scope: Scope::Preview,
            tokens,
            refusal: Refusal::Status,
        },
    )
}
