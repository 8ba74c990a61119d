//! Share links and recordings: the API's bodies, and what control tells a
//! worker about a session's live share links so that its agent can refuse
//! and cut the ones that end.
use serde::{Deserialize, Serialize};

/// Longest a share link may live, in seconds (7 days).
pub const MAX_SHARE_TTL: i64 = 7 * 24 * 3600;
/// A share link's life when none is asked for (1 hour).
pub const DEFAULT_SHARE_TTL: i64 = 3600;
/// Live share links one session may have at once.
pub const MAX_SHARES_PER_SESSION: i64 = 32;
/// Longest label a share link may carry (shown to the others watching).
pub const MAX_SHARE_NAME: usize = 40;

/// What a share link lets its holder do.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareMode {
    /// Watch: output only; input and resizes are dropped.
    Read,
    /// Type too, into the terminals already open (never a new shell).
    Write,
}

impl ShareMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ShareMode::Read => "read",
            ShareMode::Write => "write",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(ShareMode::Read),
            "write" => Some(ShareMode::Write),
            _ => None,
        }
    }
}

/// `POST /v1/sessions/{id}/share`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateShare {
    pub mode: ShareMode,
    /// Seconds the link works (default 3600, at most 604800; never past
    /// the session's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// Pin the link to one terminal of the session (default: the holder
    /// may pick any open terminal; the oldest is shown first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<u32>,
    /// A label shown to everyone watching (`"alice"`); 1 to 40 letters,
    /// digits, spaces or `.-_@`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A share link as the API shows it; `url` and `token` only in the answer
/// that created it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub id: String,
    pub session: String,
    pub mode: ShareMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `GET /v1/sessions/{id}/shares`: the live ones.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareList {
    pub shares: Vec<Share>,
}

/// Checks a share label: `Err` names the rule.
pub fn check_share_name(name: &str) -> Result<(), String> {
    let ok = !name.trim().is_empty()
        && name.len() <= MAX_SHARE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " .-_@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name: 1 to {MAX_SHARE_NAME} letters, digits, spaces or .-_@"
        ))
    }
}

/// A live share link of a session, as its worker is told (the watch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareGrant {
    pub id: String,
    pub mode: ShareMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<u32>,
    /// Unix milliseconds: the agent cuts the link's connections then.
    pub expires_at_ms: i64,
}

/// One terminal's recording (`GET /v1/sessions/{id}/recordings`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    pub terminal: u32,
    /// Unix seconds.
    pub started_at: i64,
    pub bytes: i64,
    /// The recording stopped at the session's bound.
    #[serde(default)]
    pub truncated: bool,
    /// Its path on the API (`/v1/sessions/{id}/recordings/{terminal}`):
    /// `GET` it with the API key for asciicast v2.
    pub url: String,
}

/// `GET /v1/sessions/{id}/recordings`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingList {
    pub recordings: Vec<Recording>,
}

/// `POST /internal/v1/recordings/{session}/{terminal}?seq=N`: the next
/// piece of a terminal's asciicast from its worker, as the body (whole
/// lines). `seq` starts at 0 (the piece holding the header line); a piece
/// sent twice is stored once. Answers `413` once the session's recordings
/// are full: the worker stops sending.
pub const RECORDING_PIECE_MAX: usize = 60 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_modes() {
        assert!(check_share_name("alice b.").is_ok());
        assert!(check_share_name("").is_err());
        assert!(check_share_name("   ").is_err());
        assert!(check_share_name("<script>").is_err());
        assert!(check_share_name(&"a".repeat(41)).is_err());
        assert_eq!(ShareMode::parse("read"), Some(ShareMode::Read));
        assert_eq!(ShareMode::parse("admin"), None);
        let c: Result<CreateShare, _> = serde_json::from_str(r#"{"mode":"read","x":1}"#);
        assert!(c.is_err());
    }
}
