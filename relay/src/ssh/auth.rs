//! SSH logins: the session's token as the password goes through the same
//! access check as the web ([`crate::access`]); a public key registered for
//! the session's tenant is asked of control. Every refusal is counted per
//! address, audited and answered alike.
use russh::server::Auth;
use tracing::{info, warn};
use warren_proto::is_session_id;

use super::server::{Conn, Target};
use super::{FAILURE_WINDOW, MAX_FAILURES, fingerprint};
use crate::access::Denial;
use crate::auth::Scope;
use crate::routes::{SessionRoute, SshAction, SshAuditEvent};

impl Conn {
    fn audit(
        &self,
        action: SshAction,
        session: &str,
        method: &'static str,
        fp: Option<String>,
        reason: String,
    ) {
        let event = SshAuditEvent {
            action,
            session: session.chars().take(64).collect(),
            method: method.into(),
            client_addr: self.peer.to_string(),
            fingerprint: fp,
            reason,
        };
        let source = self.ctx.source.clone();
        tokio::spawn(async move { source.audit(event).await });
    }

    /// Counts a failure, audits it and answers "no".
    fn refuse(
        &self,
        session: &str,
        method: &'static str,
        fp: Option<String>,
        reason: String,
    ) -> Auth {
        self.ctx
            .metrics
            .ssh_logins
            .with_label_values(&["refused"])
            .inc();
        info!(peer = %self.peer, session, method, %reason, "ssh login refused");
        let reached = self.ctx.limiter.fail(self.peer.ip());
        self.audit(SshAction::LoginFailed, session, method, fp.clone(), reason);
        if reached {
            self.audit(
                SshAction::RateLimited,
                session,
                method,
                fp,
                format!(
                    "{MAX_FAILURES} failures within {}s",
                    FAILURE_WINDOW.as_secs()
                ),
            );
        }
        Auth::reject()
    }

    fn accept(
        &mut self,
        session: &str,
        route: SessionRoute,
        method: &'static str,
        fp: Option<String>,
    ) -> Auth {
        self.ctx.metrics.ssh_logins.with_label_values(&["ok"]).inc();
        self.audit(SshAction::Login, session, method, fp, String::new());
        self.target = Some(Target {
            session: session.to_string(),
            route,
        });
        self.preauth = None;
        self.authenticated
            .store(true, std::sync::atomic::Ordering::Release);
        Auth::Accept
    }

    /// Checks that apply to every method; `Some` is the refusal.
    fn precheck(&self, user: &str) -> Option<Auth> {
        if self.ctx.limiter.limited(self.peer.ip()) {
            return Some(Auth::reject());
        }
        if !is_session_id(user) {
            return Some(self.refuse(
                user,
                "none",
                None,
                "the user name is not a session id".into(),
            ));
        }
        None
    }

    /// A session token as the password.
    pub(super) async fn password(&mut self, user: &str, password: &str) -> Auth {
        if let Some(no) = self.precheck(user) {
            return no;
        }
        let checked = self
            .ctx
            .access
            .check(Some(password.trim()), user, Scope::Terminal)
            .await;
        match checked {
            // A share link attaches to a terminal in the browser; over SSH
            // it would open a shell of its own, which no link may.
            Ok(grant) if grant.claims.share.is_some() => self.refuse(
                user,
                "password",
                None,
                "share links open the browser page only".into(),
            ),
            Ok(grant) => self.accept(user, grant.route, "password", None),
            Err(Denial::Lookup(e)) => {
                warn!("ssh: route lookup failed: {e}");
                Auth::reject()
            }
            Err(d) => self.refuse(user, "password", None, d.reason()),
        }
    }

    /// A public key registered for the session's tenant.
    pub(super) async fn publickey(&mut self, user: &str, key: &russh::keys::PublicKey) -> Auth {
        if let Some(no) = self.precheck(user) {
            return no;
        }
        let fp = fingerprint(key);
        let line = match key.to_openssh() {
            Ok(l) => l,
            Err(_) => return self.refuse(user, "publickey", Some(fp), "unreadable key".into()),
        };
        match self.ctx.source.authorize_ssh_key(user, &line).await {
            Ok(Some(route)) => self.accept(user, route, "publickey", Some(fp)),
            Ok(None) => self.refuse(
                user,
                "publickey",
                Some(fp),
                "the key is not registered for this session's tenant (or no such session)".into(),
            ),
            Err(e) => {
                warn!("ssh: key check failed: {e}");
                Auth::reject()
            }
        }
    }
}
