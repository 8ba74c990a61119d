//! Session tokens: Ed25519 JWTs that control mints and relays verify.
use serde::{Deserialize, Serialize};

/// The `aud` every session token carries.
pub const AUDIENCE: &str = "warren";

/// What a token lets its holder do. A token carries a set of them,
/// space-separated in its `scope` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Open the session's terminal (browser, SSH password).
    Terminal,
    /// Open the session's ports (`<port>-<id>.<domain>`).
    Preview,
    /// The sandbox API on the session's host (exec, files), with a Bearer
    /// header only. Never in a default token: links and cookies cannot
    /// carry it.
    Exec,
    /// Commit the session's filesystem as a snapshot image. Control mints
    /// it for itself only: no API caller can ask for it.
    Snapshot,
    /// Watch the session's terminal (a read-only share link): output only;
    /// the agent drops the holder's input and resizes.
    View,
}

impl Scope {
    /// What a token gets when no scope is asked for.
    pub const ALL: [Scope; 2] = [Scope::Terminal, Scope::Preview];
    /// Every scope there is.
    pub const KNOWN: [Scope; 5] = [
        Scope::Terminal,
        Scope::Preview,
        Scope::Exec,
        Scope::Snapshot,
        Scope::View,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Terminal => "terminal",
            Scope::Preview => "preview",
            Scope::Exec => "exec",
            Scope::Snapshot => "snapshot",
            Scope::View => "view",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::KNOWN.into_iter().find(|x| x.as_str() == s)
    }

    /// The `scope` claim for a set of scopes.
    pub fn claim(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a session token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user (or API key) the token was minted for.
    #[serde(default)]
    pub sub: String,
    /// The session it opens.
    pub sid: String,
    pub tenant: String,
    /// Space-separated scopes (see [`Scope`]).
    #[serde(default)]
    pub scope: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub iat: Option<u64>,
    /// The share link this token is (`POST /v1/sessions/{id}/share`):
    /// such a token only attaches to a running terminal, never opens a
    /// shell, and stops working the moment its share is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
}

impl Claims {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scope.split(' ').any(|s| s == scope.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip() {
        let all = Scope::claim(&Scope::ALL);
        assert_eq!(all, "terminal preview");
        let c = Claims {
            sub: String::new(),
            sid: "s".into(),
            tenant: "t".into(),
            scope: Scope::claim(&[Scope::Preview]),
            aud: AUDIENCE.into(),
            exp: 0,
            nbf: None,
            iat: None,
            share: None,
        };
        assert!(c.has_scope(Scope::Preview) && !c.has_scope(Scope::Terminal));
        assert_eq!(Scope::parse("terminal"), Some(Scope::Terminal));
        assert_eq!(Scope::parse("admin"), None);
    }
}
