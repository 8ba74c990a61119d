//! A browser's token, in and renewed: the `?token=` exchange (verify, set
//! a host-only cookie, redirect without the token; the terminal page gets a
//! refresh grant too) and `POST /_warren/refresh` (a new token cookie for
//! the page's grant).
use bytes::Bytes;
use pingora::proxy::Session;
use tracing::warn;

use super::RelayProxy;
use super::answers::{answer, denial_answer, send};
use super::cookies::{
    all_cookie_tokens, local_location, refresh_cookie, refresh_cookie_name, strip_token,
    token_cookie,
};
use crate::auth::Scope;
use crate::limits::FailureLimiter;
use crate::pages::Answer;
use crate::routes::Refreshed;

/// Renewals one client address may ask for per minute. A tab renews once
/// per token lifetime (minutes); this bounds what a client costs control.
pub const REFRESH_LIMIT: u32 = 60;

/// `?token=` exchanges one client address may make per minute. Each one
/// that opens a terminal page costs control a refresh grant and an audit
/// row; a person opens a handful of links a minute.
pub const EXCHANGE_LIMIT: u32 = 30;

/// Only what control hands out (`wr_` and 40 letters or digits) goes on
/// to control.
fn well_formed_grant(g: &str) -> bool {
    g.len() == 43 && g.starts_with("wr_") && g[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Counts one request against the client's address; `true` when the
/// address is already over `limiter`'s limit (the request is refused).
fn over_limit(session: &Session, limiter: &FailureLimiter) -> bool {
    let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    else {
        return false;
    };
    if limiter.limited(ip) {
        return true;
    }
    limiter.fail(ip);
    false
}

impl RelayProxy {
    /// `POST /_warren/refresh` (the policy has checked method and origin):
    /// 204 with the cookie; 401 when the grant is unknown (sign in again);
    /// 404 when the session has ended.
    pub(super) async fn refresh(
        &self,
        session: &mut Session,
        sid: &str,
        tls: bool,
    ) -> pingora::Result<bool> {
        let grants = all_cookie_tokens(session.req_header(), refresh_cookie_name(tls));
        if over_limit(session, &self.refresh_limiter) {
            let a = Answer::new(
                429,
                "rate_limited",
                "Too many renewals",
                "Too many token renewals from this address; try again in a minute.",
            );
            return answer(session, a).await;
        }
        let mut outcome = Refreshed::Invalid;
        for g in grants.iter().filter(|g| well_formed_grant(g)).take(2) {
            match self.control.refresh(sid, g).await {
                Ok(Refreshed::Invalid) => continue,
                Ok(other) => {
                    outcome = other;
                    break;
                }
                Err(e) => {
                    warn!(session = %sid, "refresh failed: {e}");
                    return answer(
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
                send(
                    session,
                    204,
                    &headers,
                    "text/plain; charset=utf-8",
                    Bytes::new(),
                )
                .await
            }
            Refreshed::Invalid => {
                answer(
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
                answer(
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

    /// `?token=` on a page visit: verify, set a host-only cookie, and
    /// redirect to the same URL without the token.
    pub(super) async fn exchange(
        &self,
        session: &mut Session,
        token: &str,
        sid: &str,
        scope: Scope,
        tls: bool,
    ) -> pingora::Result<bool> {
        // Counted before anything is verified or written.
        if over_limit(session, &self.exchange_limiter) {
            let a = Answer::new(
                429,
                "rate_limited",
                "Too many links opened",
                "Too many session links opened from this address; try again in a minute.",
            );
            return answer(session, a).await;
        }
        let claims = match self.authorize(&[token.to_string()], sid, scope).await {
            Ok(grant) => grant.claims,
            Err(d) => return answer(session, denial_answer(&d)).await,
        };
        let req = session.req_header();
        let location = local_location(req.uri.path(), strip_token(req.uri.query()));
        // A share link never replaces the owner's own sign-in in this
        // browser (someone could send the owner there to demote the page).
        let owner_signed_in = claims.share.is_some() && {
            let mine = all_cookie_tokens(req, super::cookies::token_cookie_name(tls));
            matches!(
                self.access.check_any(&mine, sid, Scope::Terminal).await,
                Ok(g) if g.claims.share.is_none()
            )
        };
        let mut headers = vec![("location", location)];
        if !owner_signed_in {
            headers.push(("set-cookie", token_cookie(token, claims.exp, tls)));
        }
        // The terminal page gets a refresh grant too, so the tab outlives
        // its token (for the session's lifetime).
        // Never for a share link: its token ends with the link.
        if scope == Scope::Terminal && claims.share.is_none() {
            match self.control.grant(token).await {
                Ok(Some((grant, exp))) => {
                    headers.push(("set-cookie", refresh_cookie(&grant, exp, tls)))
                }
                Ok(None) => {}
                Err(e) => warn!(session = %sid, "no refresh grant: {e}"),
            }
        }
        send(
            session,
            303,
            &headers,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"See the session page.\n"),
        )
        .await
    }
}
