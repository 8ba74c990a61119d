//! The Pingora layer, kept thin: `request_filter` gathers the request's
//! [`Facts`], calls [`decide`] and acts on the [`Action`]; the upstream
//! hooks keep our credentials from the session's apps.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use warren_tunnel::proto::{ReplyCode, StreamHeader, StreamKind};
use warren_tunnel::server::{OpenError, Registry};

use super::answers::{answer, asset, close_upgrade, denial_answer};
use super::cookies::{filter_set_cookie, strip_cookie, strip_token};
use super::policy::{Action, Facts, Policy, Refusal, decide};
use crate::access::{Access, Denial, Grant};
use crate::auth::Scope;
use crate::connector::TunnelConnector;
use crate::limits::FailureLimiter;
use crate::metrics::Metrics;
use crate::pages::Answer;
use crate::routes::ControlPlane;

pub use super::control_tls::ControlTls;

/// TLS server name, captured after the handshake.
pub struct Sni(pub String);

pub struct RelayProxy {
    /// Domains and the control plane behind `api.<domain>`.
    pub policy: Policy,
    pub access: Access,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Refresh grants and renewed tokens.
    pub control: Arc<dyn ControlPlane>,
    /// Renewals asked of control per client address
    /// ([`super::REFRESH_LIMIT`]).
    pub refresh_limiter: FailureLimiter,
    /// `?token=` exchanges per client address ([`super::EXCHANGE_LIMIT`]).
    pub exchange_limiter: FailureLimiter,
    /// How `api.<domain>` reaches control when control serves TLS.
    pub control_tls: Option<ControlTls>,
}

enum Upstream {
    Tunnel {
        node: String,
        kind: StreamKind,
        session: String,
    },
    Control(SocketAddr),
}

/// What a share link's holder may do, told to the agent in headers that
/// only the relay sets (a client's own are removed).
#[derive(Debug, Clone, PartialEq)]
pub struct ShareAccess {
    pub share: String,
    /// `read` or `write`.
    pub mode: &'static str,
    /// The link's label, shown to the others watching.
    pub name: String,
}

impl ShareAccess {
    pub fn of(claims: &crate::auth::Claims) -> Option<ShareAccess> {
        let share = claims.share.clone()?;
        let mode = if claims.has_scope(Scope::Terminal) {
            "write"
        } else {
            "read"
        };
        Some(ShareAccess {
            share,
            mode,
            name: claims.sub.clone(),
        })
    }
}

/// Headers the relay alone sets on a terminal stream.
pub const SHARE_HEADER: &str = "x-warren-share";
pub const ACCESS_HEADER: &str = "x-warren-access";
pub const VIEWER_HEADER: &str = "x-warren-viewer";

pub struct Ctx {
    /// A share link's holder (terminal streams).
    share: Option<ShareAccess>,
    /// The page's upload: the file's path in the session.
    upload: Option<String>,
    route: &'static str,
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
    /// The agent's status when [`super::bridge`] took the connection over.
    pub(super) bridged: Option<u16>,
}

impl RelayProxy {
    /// The access check for the web's doors: a grant, on a node connected
    /// to this relay now.
    /// A token of the `view` scope (a read share link) opens what the
    /// terminal scope does, as a watcher: the agent drops its input.
    pub(super) async fn authorize(
        &self,
        tokens: &[String],
        session: &str,
        scope: Scope,
    ) -> Result<Grant, Denial> {
        let mut grant = self.access.check_any(tokens, session, scope).await;
        if scope == Scope::Terminal
            && matches!(
                grant,
                Err(Denial::Token(crate::auth::AuthError::MissingScope(_)))
            )
        {
            grant = self.access.check_any(tokens, session, Scope::View).await;
            // Only a share link watches (it can be revoked): a view token
            // without one opens nothing.
            if let Ok(g) = &grant
                && g.claims.share.is_none()
            {
                grant = Err(Denial::Token(crate::auth::AuthError::MissingScope(
                    Scope::Terminal,
                )));
            }
        }
        Access::reachable(grant, |node| self.registry.is_connected(node))
    }

    /// Does what the policy decided.
    async fn act(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        action: Action,
    ) -> pingora::Result<bool> {
        match action {
            Action::Answer(a) => answer(session, a).await,
            Action::Asset(name) => asset(session, &name).await,
            Action::Refresh { session: sid } => self.refresh(session, &sid, ctx.tls).await,
            Action::Exchange {
                session: sid,
                token,
                scope,
            } => self.exchange(session, &token, &sid, scope, ctx.tls).await,
            Action::Page {
                session: sid,
                tokens,
                index,
            } => match self.authorize(&tokens, &sid, Scope::Terminal).await {
                Ok(_) if index => asset(session, "index.html").await,
                Ok(_) => {
                    let a = Answer::new(404, "not_found", "Not found", "The terminal is at /.");
                    answer(session, a).await
                }
                Err(d) => answer(session, denial_answer(&d)).await,
            },
            Action::Open {
                session: sid,
                kind,
                scope,
                tokens,
                refusal,
            } => match self.authorize(&tokens, &sid, scope).await {
                // A share link attaches to what is open; it never names a
                // command (the agent refuses it too).
                Ok(grant)
                    if grant.claims.share.is_some()
                        && super::cookies::names_command(session.req_header().uri.query()) =>
                {
                    let a = Answer::new(
                        403,
                        "forbidden",
                        "Not allowed",
                        "A share link attaches to the session's terminals; it runs no command.",
                    );
                    answer(session, a).await
                }
                Ok(grant) => {
                    ctx.share = ShareAccess::of(&grant.claims);
                    // Exec waits on its command (up to its time limit).
                    if ctx.upgrade || matches!(kind, StreamKind::Api | StreamKind::Snapshot) {
                        // Idle terminals stay open for hours; QUIC and
                        // WebSocket keepalives watch the connection.
                        session.set_read_timeout(None);
                    }
                    ctx.preview = matches!(kind, StreamKind::Port(_));
                    if ctx.upgrade
                        && matches!(kind, StreamKind::Terminal)
                        && super::bridge::can_bridge(session)
                    {
                        let header = stream_header(session, &sid, kind);
                        return self.bridge(session, ctx, &grant.route.node, header).await;
                    }
                    ctx.upstream = Some(Upstream::Tunnel {
                        node: grant.route.node,
                        kind,
                        session: sid,
                    });
                    Ok(false)
                }
                Err(d) => match refusal {
                    Refusal::Close => close_upgrade(session, denial_answer(&d)).await,
                    Refusal::Status => answer(session, denial_answer(&d)).await,
                },
            },
            Action::Upload {
                session: sid,
                tokens,
                path,
            } => match self.authorize(&tokens, &sid, Scope::Terminal).await {
                // Someone who can type may drop a file in; a share link's
                // holder (even one that types) may not.
                Ok(grant)
                    if grant.claims.has_scope(Scope::Terminal) && grant.claims.share.is_none() =>
                {
                    session.set_read_timeout(None);
                    ctx.upload = Some(path);
                    ctx.upstream = Some(Upstream::Tunnel {
                        node: grant.route.node,
                        kind: StreamKind::Api,
                        session: sid,
                    });
                    Ok(false)
                }
                Ok(_) => {
                    let a = Answer::new(
                        403,
                        "forbidden",
                        "Upload refused",
                        "Share links cannot upload files.",
                    );
                    answer(session, a).await
                }
                Err(d) => answer(session, denial_answer(&d)).await,
            },
            Action::Control(addr) => {
                // API keys are control's to check: the header goes on.
                ctx.strip_authorization = false;
                ctx.upstream = Some(Upstream::Control(addr));
                Ok(false)
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for RelayProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            share: None,
            upload: None,
            route: "none",
            preview: false,
            upstream: None,
            upgrade: false,
            host: String::new(),
            tls: false,
            strip_authorization: false,
            failure: Arc::new(Mutex::new(None)),
            upgraded: false,
            bridged: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let ssl = session.digest().and_then(|d| d.ssl_digest.clone());
        let sni = ssl
            .as_ref()
            .and_then(|s| s.extension.get::<Sni>().map(|s| s.0.clone()));
        let facts = Facts::of(
            session.req_header(),
            ssl.is_some(),
            sni,
            session.is_upgrade_req(),
        );
        ctx.tls = facts.tls;
        ctx.upgrade = facts.upgrade;
        ctx.host = facts.host.clone().unwrap_or_default();
        ctx.strip_authorization = facts.bearer.is_some();
        let decision = decide(&facts, &self.policy);
        ctx.route = decision.route;
        self.act(session, ctx, decision.action).await
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
                let header = stream_header(session, sid, *kind);
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
                // Over TLS when control serves TLS: API keys cross here.
                let mut peer = match &self.control_tls {
                    Some(t) => {
                        let mut p = HttpPeer::new(*addr, true, t.server_name.clone());
                        p.options.ca = t.ca.clone();
                        p
                    }
                    None => HttpPeer::new(*addr, false, String::new()),
                };
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
            let uri = match (&ctx.upload, strip_token(req.uri.query())) {
                // The page's upload is the files API's PUT of its path.
                (Some(file), _) => format!(
                    "{}?{}",
                    warren_proto::sandbox::FILES_PATH,
                    url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("path", file)
                        .finish()
                ),
                (None, Some(q)) => format!("{path}?{q}"),
                (None, None) => path,
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
        // Only the relay says who the client is, and what a share link may do.
        for h in [SHARE_HEADER, ACCESS_HEADER, VIEWER_HEADER] {
            while req.remove_header(h).is_some() {}
        }
        if let Some(s) = &ctx.share {
            req.insert_header(SHARE_HEADER, s.share.clone())?;
            req.insert_header(ACCESS_HEADER, s.mode)?;
            if !s.name.is_empty() {
                req.insert_header(VIEWER_HEADER, s.name.clone())?;
            }
        }
        req.remove_header("forwarded");
        req.remove_header("x-real-ip");
        if req.headers.get("host").is_none_or(|v| v.to_str().is_err()) {
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

    /// Proxied answers (previews, the API) over TLS carry the relay's
    /// `Strict-Transport-Security`: the relay owns the TLS, not the app.
    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if ctx.tls
            && let Some(v) = super::answers::hsts()
        {
            resp.insert_header("strict-transport-security", v)?;
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
        if failure.is_none() && matches!(e.esource(), pingora::ErrorSource::Downstream) {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let a = open_failure(failure);
        let status = a.status;
        let _ = answer(session, a).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.bridged)
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

/// The stream header for a session's stream of `kind`, with the client's
/// address as the relay saw it.
fn stream_header(session: &Session, sid: &str, kind: StreamKind) -> StreamHeader {
    StreamHeader {
        session: sid.to_string(),
        kind,
        request_id: format!("{:016x}", rand::random::<u64>()),
        client_addr: session.client_addr().and_then(|a| a.as_inet()).copied(),
    }
}

/// The page for a stream that could not be opened or answered (`None`: it
/// opened but did not answer properly).
pub(super) fn open_failure(failure: Option<OpenError>) -> Answer {
    match failure {
        Some(OpenError::Rejected {
            code: ReplyCode::SessionNotFound,
            message,
        }) => Answer::new(404, "session_not_found", "No such session", message),
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
        None => Answer::new(
            502,
            "bad_gateway",
            "Session unreachable",
            "The session did not answer properly.",
        ),
    }
}
