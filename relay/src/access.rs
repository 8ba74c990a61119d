//! The access rule, once, for every door: a session token's claims, the
//! session asked for and the scope it needs come to a [`Grant`] or a
//! [`Denial`]. HTTP pages, terminal WebSockets, previews and SSH logins
//! (a token as the password) all ask [`Access::check`].
//!
//! The rule itself is two plain functions, [`token_allows`] and
//! [`route_allows`]; [`Access`] only fetches what they judge (the verified
//! claims, the session's route) in between.
use std::sync::Arc;

use crate::auth::{AuthError, Claims, Scope, Verifier};
use crate::routes::{RouteCache, SessionRoute};

/// What a token opened.
#[derive(Debug, Clone)]
pub struct Grant {
    pub claims: Arc<Claims>,
    /// The session's route (its node and tenant).
    pub route: SessionRoute,
}

/// Why access was refused, in the order the rule checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Denial {
    /// No usable token: missing, malformed, expired, badly signed, or
    /// lacking the scope ([`AuthError::MissingScope`]).
    Token(AuthError),
    /// The token opens another session.
    OtherSession,
    /// Sessions cannot be looked up right now (the lookup's error).
    Lookup(String),
    /// No such session (or it has ended).
    NoSession,
    /// The session belongs to another tenant than the token's.
    OtherTenant,
    /// The session's node is not connected to this relay (checked by the
    /// doors that proxy at once; see [`Access::reachable`]).
    NodeDown,
}

impl Denial {
    /// The reason as the SSH audit log words it.
    pub fn reason(&self) -> String {
        match self {
            Denial::Token(e) => e.to_string(),
            Denial::OtherSession => "the token is for another session".into(),
            Denial::Lookup(e) => e.clone(),
            Denial::NoSession => "no such session".into(),
            Denial::OtherTenant => "the token is for another tenant".into(),
            Denial::NodeDown => "the session's node is not connected".into(),
        }
    }
}

/// The token's part of the rule: its scope, then its session.
pub fn token_allows(claims: &Claims, session: &str, scope: Scope) -> Result<(), Denial> {
    if !claims.has_scope(scope) {
        return Err(Denial::Token(AuthError::MissingScope(scope)));
    }
    if claims.sid != session {
        return Err(Denial::OtherSession);
    }
    Ok(())
}

/// The session's part: it exists and is the token's tenant's.
pub fn route_allows(claims: &Claims, route: Option<SessionRoute>) -> Result<SessionRoute, Denial> {
    let route = route.ok_or(Denial::NoSession)?;
    if route.tenant != claims.tenant {
        return Err(Denial::OtherTenant);
    }
    Ok(route)
}

/// Fetches what the rule judges: verified claims and the session's route.
pub struct Access {
    pub verifier: Arc<Verifier>,
    pub routes: Arc<RouteCache>,
}

impl Access {
    /// Whether `token` opens `session` with `scope`. Nothing is looked up
    /// for a token that fails on its own.
    pub async fn check(
        &self,
        token: Option<&str>,
        session: &str,
        scope: Scope,
    ) -> Result<Grant, Denial> {
        let token = token.ok_or(Denial::Token(AuthError::Missing))?;
        let claims = self.verifier.verify(token).await.map_err(Denial::Token)?;
        token_allows(&claims, session, scope)?;
        let route = self
            .routes
            .resolve(session)
            .await
            .map_err(|e| Denial::Lookup(e.to_string()))?;
        let route = route_allows(&claims, route)?;
        Ok(Grant { claims, route })
    }

    /// [`Self::check`] over each candidate token in turn; the first that
    /// opens the session wins, else the first denial is the answer.
    pub async fn check_any(
        &self,
        tokens: &[String],
        session: &str,
        scope: Scope,
    ) -> Result<Grant, Denial> {
        let mut first = None;
        for t in tokens {
            match self.check(Some(t), session, scope).await {
                Ok(g) => return Ok(g),
                Err(d) => {
                    first.get_or_insert(d);
                }
            }
        }
        match first {
            Some(d) => Err(d),
            None => self.check(None, session, scope).await,
        }
    }

    /// A grant whose node is connected now, or [`Denial::NodeDown`].
    pub fn reachable(
        grant: Result<Grant, Denial>,
        connected: impl FnOnce(&str) -> bool,
    ) -> Result<Grant, Denial> {
        let grant = grant?;
        if connected(&grant.route.node) {
            Ok(grant)
        } else {
            Err(Denial::NodeDown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sid: &str, tenant: &str, scope: &str) -> Claims {
        Claims {
            sub: "u".into(),
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

    fn route(tenant: &str) -> Option<SessionRoute> {
        Some(SessionRoute {
            node: "n1".into(),
            tenant: tenant.into(),
        })
    }

    #[test]
    fn the_rule_as_a_table() {
        use Scope::{Preview, Terminal};
        let missing = |s| Err(Denial::Token(AuthError::MissingScope(s)));
        for (name, c, scope, r, want) in [
            (
                "own session",
                claims("s1", "t", "terminal preview"),
                Terminal,
                route("t"),
                Ok(()),
            ),
            (
                "preview",
                claims("s1", "t", "preview"),
                Preview,
                route("t"),
                Ok(()),
            ),
            (
                "preview-only on the terminal",
                claims("s1", "t", "preview"),
                Terminal,
                route("t"),
                missing(Terminal),
            ),
            (
                "terminal-only on a preview",
                claims("s1", "t", "terminal"),
                Preview,
                route("t"),
                missing(Preview),
            ),
            (
                "no scope",
                claims("s1", "t", ""),
                Terminal,
                route("t"),
                missing(Terminal),
            ),
            (
                "another session",
                claims("s2", "t", "terminal preview"),
                Terminal,
                route("t"),
                Err(Denial::OtherSession),
            ),
            (
                "another tenant",
                claims("s1", "evil", "terminal preview"),
                Terminal,
                route("t"),
                Err(Denial::OtherTenant),
            ),
            (
                "no such session",
                claims("s1", "t", "terminal preview"),
                Terminal,
                None,
                Err(Denial::NoSession),
            ),
        ] {
            let got = token_allows(&c, "s1", scope).and_then(|()| route_allows(&c, r).map(drop));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_grant_needs_its_node_connected() {
        let g = || {
            Ok(Grant {
                claims: Arc::new(claims("s1", "t", "terminal")),
                route: route("t").unwrap_or_else(|| unreachable!()),
            })
        };
        assert!(Access::reachable(g(), |n| n == "n1").is_ok());
        assert_eq!(
            Access::reachable(g(), |_| false).err(),
            Some(Denial::NodeDown)
        );
        assert_eq!(
            Access::reachable(Err(Denial::NoSession), |_| true).err(),
            Some(Denial::NoSession)
        );
    }
}
