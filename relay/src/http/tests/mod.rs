//! The edge's policy as a table, without Docker: every origin, cookie,
//! scope and host case of `relay/tests/hostile.rs` under the same name,
//! from the request's headers ([`Facts::of`]) through [`decide`] and the
//! access rule to the status (or close code) the client would see.
#![allow(clippy::unwrap_used)]
mod hostile;

use std::collections::HashMap;

use pingora::http::RequestHeader;
use warren_tunnel::proto::StreamKind;

use super::answers::{close_code_for, denial_answer};
use super::cookies::{filter_set_cookie, local_location, strip_cookie, strip_token, token_cookie};
use super::policy::{Action, Facts, Policy, Refusal, decide};
use crate::access::{Denial, route_allows, token_allows};
use crate::auth::{AuthError, Claims, Scope};
use crate::routes::SessionRoute;

const DOMAIN: &str = "warren.localhost";
const PD: &str = "warren-preview.localhost";
const PORT: u16 = 8443;
/// The session under attack, another of the same tenant, and one deleted.
const S: &str = "s1";
const OTHER: &str = "s2";
const GONE: &str = "nosuchsession1";
const TENANT: &str = "acme";
const CONTROL: &str = "127.0.0.1:9000";

/// What the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Status(u16),
    /// A WebSocket closed at once with this code.
    Close(u16),
    /// Proxied to the session (101 for a WebSocket, the app's answer else).
    Proxied(StreamKind),
    Control,
    Asset,
    /// The page's upload, its token accepted.
    Upload,
    /// The `?token=` exchange: 303 with the cookie.
    Exchanged,
    Refresh,
}
use Seen::{Close, Proxied, Status};

fn claims(sid: &str, tenant: &str, scope: &str) -> Claims {
    Claims {
        sub: "attacker".into(),
        sid: sid.into(),
        tenant: tenant.into(),
        scope: scope.into(),
        aud: "warren".into(),
        exp: u64::MAX,
        nbf: None,
        iat: None,
        share: None,
    }
}

/// What the verifier makes of each test token (its own tests cover how).
fn verify(token: &str) -> Result<Claims, AuthError> {
    Ok(match token {
        "good" => claims(S, TENANT, "terminal preview"),
        "theirs" => claims(OTHER, TENANT, "terminal preview"),
        "evil-tenant" => claims(S, "evil-tenant", "terminal preview"),
        "preview-only" => claims(S, TENANT, "preview"),
        "terminal-only" => claims(S, TENANT, "terminal"),
        "exec" => claims(S, TENANT, "exec terminal"),
        "exec-theirs" => claims(OTHER, TENANT, "exec terminal"),
        "snapshot" => claims(S, TENANT, "snapshot"),
        "no-scope" => claims(S, TENANT, ""),
        "gone" => claims(GONE, TENANT, "terminal preview"),
        "unknown-session" => claims("nosuchsession000", TENANT, "terminal preview"),
        "alg-none" | "garbage" | "oversized" => return Err(AuthError::Malformed),
        "hs256" => return Err(AuthError::BadSignature),
        "unknown-kid" => return Err(AuthError::UnknownKey),
        "wrong-aud" => return Err(AuthError::WrongAudience),
        "expired" => return Err(AuthError::Expired),
        "not-yet-valid" => return Err(AuthError::NotYetValid),
        _ => return Err(AuthError::Malformed),
    })
}

fn routes() -> HashMap<&'static str, SessionRoute> {
    [S, OTHER]
        .into_iter()
        .map(|s| {
            let r = SessionRoute {
                node: "n1".into(),
                tenant: TENANT.into(),
            };
            (s, r)
        })
        .collect()
}

/// [`crate::access::Access::check_any`] with the test's verifier and
/// routes (every node connected).
fn access(tokens: &[String], session: &str, scope: Scope) -> Result<SessionRoute, Denial> {
    let one = |t: Option<&String>| {
        let c = verify(t.ok_or(Denial::Token(AuthError::Missing))?).map_err(Denial::Token)?;
        token_allows(&c, session, scope)?;
        route_allows(&c, routes().get(session).cloned())
    };
    let mut first = None;
    for t in tokens {
        match one(Some(t)) {
            Ok(r) => return Ok(r),
            Err(d) => {
                first.get_or_insert(d);
            }
        }
    }
    match first {
        Some(d) => Err(d),
        None => one(None),
    }
}

fn policy(preview_domain: Option<&str>) -> Policy {
    Policy {
        domain: DOMAIN.into(),
        preview_domain: preview_domain.map(str::to_string),
        control: Some(CONTROL.parse().unwrap()),
    }
}

/// A request as the hostile tests send it: TLS, SNI = Host (with port).
struct Req {
    host: String,
    sni: Option<String>,
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    upgrade: bool,
    preview_domain: Option<&'static str>,
}

fn req(host: &str, method: &'static str, target: &str) -> Req {
    Req {
        host: host.into(),
        sni: Some(host.into()),
        method,
        target: target.into(),
        headers: Vec::new(),
        upgrade: false,
        preview_domain: None,
    }
}

/// The terminal WebSocket handshake of session `sid`.
fn ws(sid: &str, query: &str) -> Req {
    let mut r = req(
        &format!("{sid}.{DOMAIN}"),
        "GET",
        &format!("/_warren/terminal?{query}"),
    );
    r.upgrade = true;
    r.with("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
}

impl Req {
    fn with(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn with_all(self, hs: &[(&str, &str)]) -> Req {
        hs.iter().fold(self, |r, (k, v)| r.with(k, v))
    }
    fn sni(mut self, sni: &str) -> Req {
        self.sni = Some(sni.into());
        self
    }
    fn on_preview_domain(mut self) -> Req {
        self.preview_domain = Some(PD);
        self
    }

    fn facts(&self) -> Facts {
        let mut h = RequestHeader::build(self.method, self.target.as_bytes(), None).unwrap();
        h.insert_header("host", format!("{}:{PORT}", self.host))
            .unwrap();
        for (k, v) in &self.headers {
            h.append_header(k.clone(), v.as_str()).unwrap();
        }
        Facts::of(&h, true, self.sni.clone(), self.upgrade)
    }

    /// What the client sees, through the whole policy.
    fn seen(&self) -> Seen {
        let d = decide(&self.facts(), &policy(self.preview_domain));
        let refused = |d: Denial| Status(denial_answer(&d).status);
        match d.action {
            Action::Answer(a) => Status(a.status),
            Action::Asset(_) => Seen::Asset,
            Action::Refresh { .. } => Seen::Refresh,
            Action::Control(_) => Seen::Control,
            Action::Upload {
                session, tokens, ..
            } => access(&tokens, &session, Scope::Terminal).map_or_else(refused, |_| Seen::Upload),
            Action::Exchange {
                session,
                token,
                scope,
            } => access(&[token], &session, scope).map_or_else(refused, |_| Seen::Exchanged),
            Action::Page {
                session,
                tokens,
                index,
            } => match access(&tokens, &session, Scope::Terminal) {
                Ok(_) if index => Status(200),
                Ok(_) => Status(404),
                Err(d) => refused(d),
            },
            Action::Open {
                session,
                kind,
                scope,
                tokens,
                refusal,
            } => match (access(&tokens, &session, scope), refusal) {
                (Ok(_), _) => Proxied(kind),
                (Err(d), Refusal::Close) => Close(close_code_for(denial_answer(&d).status)),
                (Err(d), Refusal::Status) => refused(d),
            },
        }
    }
}

fn origin(host: &str) -> String {
    format!("https://{host}:{PORT}")
}

/// Runs named cases; fails with every one that went wrong.
fn table(group: &str, cases: Vec<(String, Req, Seen)>) {
    eprintln!("{group}: {} cases", cases.len());
    let failed: Vec<String> = cases
        .iter()
        .filter_map(|(name, r, want)| {
            let got = r.seen();
            (got != *want).then(|| format!("{name}: {got:?}, want {want:?}"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{group}: {} of {} cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

const TERMINAL: Seen = Proxied(StreamKind::Terminal);
const HTML: (&str, &str) = ("accept", "text/html");
