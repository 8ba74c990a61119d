//! The public REST API's bodies (`docs/api.md`), shared by control (which
//! answers with them) and every client (the CLI, the load-test harness,
//! tests), and the `.warren/up.json` file `warren up` writes.
use serde::{Deserialize, Serialize};

/// Where a session is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Placed on a node, not yet reported running.
    Pending,
    Running,
    /// Asked to stop (deleted, expired, idle, drained); the node removes it.
    Stopping,
    Stopped,
    Failed,
    /// Its node stopped answering.
    Lost,
}

impl SessionStatus {
    pub const ALL: [SessionStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
        Self::Failed,
        Self::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Pending => "pending",
            SessionStatus::Running => "running",
            SessionStatus::Stopping => "stopping",
            SessionStatus::Stopped => "stopped",
            SessionStatus::Failed => "failed",
            SessionStatus::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Pending or running: it can be reached and tokens can be minted for it.
    pub fn is_live(self) -> bool {
        matches!(self, SessionStatus::Pending | SessionStatus::Running)
    }
}

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/sessions`; every field is optional.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<i64>,
    /// `"none"` (the default), `"internet"` or a list of IPv4 CIDRs.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::egress::schema))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::Egress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
}

/// A session as the API shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub tenant: String,
    pub node: String,
    pub status: SessionStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub image: String,
    pub memory_mb: i64,
    pub cpus: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<i64>,
    /// What the session may reach beyond Warren: `"none"`, `"internet"`
    /// or its CIDRs.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::egress::schema))]
    #[serde(default)]
    pub egress: crate::egress::Egress,
    /// The terminal page (with `?token=` when the answer carries a token):
    /// the same as `links.terminal`, kept for older clients.
    pub url: String,
    /// Separate links for separate uses: the terminal page, and a template
    /// for the session's ports (`{port}` replaced by the port). Each link's
    /// token has its own scope only: a preview link never opens a terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Links>,
    /// The `ssh` command line that opens it.
    pub ssh: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<i64>,
    /// Unix seconds.
    pub expires_at: i64,
    pub created_at: i64,
}

/// A session's links; with tokens only in the answer that minted them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Links {
    pub terminal: String,
    /// `https://{port}-<id>.<domain>/…`: replace `{port}`.
    pub preview: String,
}

/// `POST /v1/sessions/{id}/snapshot`; the body is optional.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Unique in the tenant: 1 to 63 of `a-z 0-9 . _ -` (default: made up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A saved session filesystem, owned by one tenant.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    /// What `POST /v1/sessions` takes as `image` to start from it
    /// (`warren-snapshot/<name>`; the caller's tenant only).
    pub image: String,
    pub tenant: String,
    /// The session it was taken from.
    pub session: String,
    /// The worker that holds it (sessions from it start there).
    pub node: String,
    pub size_bytes: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// `GET /v1/snapshots`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
}

/// `GET /v1/sessions`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

/// `POST /v1/sessions/{id}/token` (the body is optional).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `terminal` or `preview`; absent: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// A fresh session token.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub expires_at: i64,
    pub scope: String,
}

/// `GET /v1/events`: the `data` of one `event: session` (its `id:` line
/// is the event's number, to resume from with `Last-Event-ID`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    /// The session's id.
    pub id: String,
    pub tenant: String,
    /// The status it moved to.
    pub status: SessionStatus,
    pub node: String,
    /// Unix seconds.
    pub at: i64,
    /// Why (a stop, a failure, a lost node); absent when there is none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// `.warren/up.json`: what `warren up` started, for the CLI and the
/// load-test harness run in the same directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpFile {
    pub control_url: String,
    pub relay_https_url: String,
    pub relay_http_url: String,
    pub relay_ssh: String,
    #[serde(default)]
    pub ssh_host_key: String,
    #[serde(default)]
    pub ssh_host_key_fingerprint: String,
    pub ssh_known_hosts: std::path::PathBuf,
    pub domain: String,
    #[serde(default)]
    pub preview_domain: Option<String>,
    pub admin_api_key: String,
    pub ca_cert: std::path::PathBuf,
}

impl UpFile {
    /// Reads `up.json`; `None` when there is none. A file that does not
    /// parse is an error naming the file.
    pub fn read(path: &std::path::Path) -> Result<Option<UpFile>, String> {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| format!("{} is not what `warren up` writes: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_their_names() {
        for s in SessionStatus::ALL {
            assert_eq!(SessionStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).expect("serializes"),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!(SessionStatus::Running.is_live() && !SessionStatus::Stopped.is_live());
    }

    #[test]
    fn create_refuses_unknown_fields() {
        assert!(serde_json::from_str::<CreateSession>(r#"{"imgae":"x"}"#).is_err());
        let c: CreateSession = serde_json::from_str(r#"{"memory_mb":512}"#).expect("valid");
        assert_eq!(c.memory_mb, Some(512));
        assert_eq!(
            serde_json::to_string(&CreateSession::default()).expect("ok"),
            "{}"
        );
    }
}
