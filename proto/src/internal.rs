//! The internal HTTP API under `/internal/v1/`: agents (node credential as
//! Bearer `node_id:credential`) and relays (the relay secret as Bearer)
//! talk to control. Both sides use these types; control refuses unknown
//! fields on requests, so a renamed field is an error, not a silent default.
use serde::{Deserialize, Serialize};

/// Path prefix of the internal API.
pub const PREFIX: &str = "/internal/v1";

// ---- agents -----------------------------------------------------------------

/// `POST /internal/v1/join`: a one-time join token for a node credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    pub node_id: String,
    pub allocatable_mb: i64,
}

/// The answer to a join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: String,
    pub credential: String,
    /// Every control replica's URL, for the agent to fail over between.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_urls: Vec<String>,
    /// The relays the agent should hold a tunnel to.
    #[serde(default)]
    pub relays: Vec<RelayInfo>,
}

/// One relay's tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayInfo {
    pub addr: String,
    pub server_name: String,
    /// The relay's tunnel CA (PEM), when it is not publicly trusted.
    #[serde(default)]
    pub ca_pem: Option<String>,
}

/// What a node says about its isolation (shown in `GET /v1/nodes`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeIsolation {
    #[serde(default)]
    pub security_profile: String,
    #[serde(default)]
    pub disk_limits: bool,
}

/// `POST /internal/v1/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub allocatable_mb: i64,
    pub free_mb: i64,
    #[serde(default, flatten)]
    pub isolation: NodeIsolation,
    /// `host:port` of the agent's `/metrics`, when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    #[serde(default)]
    pub sessions: Vec<SessionReport>,
    /// Disk the node offers sessions; absent from agents that cannot limit
    /// disk (then control places by memory alone there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<NodeDisk>,
    /// Warm containers ready to be claimed, per pool (control places a
    /// session of a pool's size where one waits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm: Vec<WarmCount>,
}

/// The most pools a heartbeat may report.
pub const MAX_REPORTED_POOLS: usize = 16;

/// Ready warm containers of one pool ([`WarmPool::name`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmCount {
    pub pool: String,
    pub ready: u32,
}

/// What a node offers in disk: every session's disk is counted against
/// `capacity_mb` at placement (the files are sparse: without the count a
/// node would promise more than it has), and no one session may have more
/// than `max_session_mb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDisk {
    pub capacity_mb: i64,
    pub max_session_mb: i64,
}

/// Longest list of sessions one heartbeat may carry.
pub const MAX_REPORTED_SESSIONS: usize = 10_000;

/// The state an agent reports for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportedState {
    Running,
    Failed,
}

impl ReportedState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportedState::Running => "running",
            ReportedState::Failed => "failed",
        }
    }
}

/// What an agent says about one of its sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionReport {
    pub id: String,
    pub state: ReportedState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Milliseconds since the last terminal activity, if any was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<i64>,
}

/// `GET /internal/v1/watch?index=N`: a long poll that answers when the
/// desired state may have moved past `index` (or after a while anyway).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchQuery {
    #[serde(default)]
    pub index: Option<i64>,
}

/// The sessions a node should run, as of `index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchResponse {
    pub index: i64,
    pub sessions: Vec<DesiredSession>,
    /// Snapshot images this node keeps (engine names); the agent removes
    /// its other snapshot images. Absent from an older control: none are
    /// removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<String>>,
    /// Warm pools this node keeps full (absent from an older control:
    /// none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<WarmPool>,
}

/// Containers a node keeps started ahead of demand: a desired session of
/// exactly this image and size, with no egress, takes one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmPool {
    pub image: String,
    pub memory_mb: u64,
    pub cpus: f64,
    /// 0: no disk limit.
    #[serde(default)]
    pub disk_mb: u64,
    /// How many to keep warm (fewer where memory is short).
    pub size: u32,
}

impl WarmPool {
    /// The pool's name on the node (a container label's value): image and
    /// size, so a session's spec finds its pool by the same words.
    pub fn key(image: &str, memory_mb: u64, cpus: f64, disk_mb: u64) -> String {
        format!(
            "{image} {memory_mb}m {}mcpu {disk_mb}d",
            (cpus * 1000.0).round() as u64
        )
    }

    pub fn name(&self) -> String {
        Self::key(&self.image, self.memory_mb, self.cpus, self.disk_mb)
    }
}

/// One session a node should run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredSession {
    pub id: String,
    pub image: String,
    pub memory_mb: u64,
    pub cpus: f64,
    /// 0: the agent's default.
    #[serde(default)]
    pub disk_mb: u64,
    /// What the session may reach (checked by control); absent: nothing.
    #[serde(default, skip_serializing_if = "crate::egress::Egress::is_none")]
    pub egress: crate::egress::Egress,
    /// The session's live share links: the agent refuses any other and
    /// cuts a link's connections when it leaves this list or expires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<crate::share::ShareGrant>,
    /// Record the session's terminals (asciicast v2, sent to control).
    #[serde(default)]
    pub record: bool,
}

// ---- relays -----------------------------------------------------------------

/// `GET /internal/v1/routes/{id}` and `POST /internal/v1/ssh/authorize`
/// on success: where the session runs and whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteResponse {
    pub node: String,
    pub tenant: String,
}

/// `POST /internal/v1/nodes/verify`: is this a node's credential?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyNodeRequest {
    pub node_id: String,
    pub credential: String,
}

/// `POST /internal/v1/ssh/authorize`: does this key open that session?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshAuthorizeRequest {
    pub session: String,
    pub public_key: String,
}

/// `POST /internal/v1/ssh/host-key`: the relay's SSH host key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostKeyRequest {
    pub public_key: String,
    pub fingerprint: String,
}

/// What an SSH audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SshAction {
    #[serde(rename = "ssh.login")]
    Login,
    #[serde(rename = "ssh.login_failed")]
    LoginFailed,
    #[serde(rename = "ssh.rate_limited")]
    RateLimited,
}

impl SshAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SshAction::Login => "ssh.login",
            SshAction::LoginFailed => "ssh.login_failed",
            SshAction::RateLimited => "ssh.rate_limited",
        }
    }
}

/// `POST /internal/v1/ssh/audit`: an SSH login attempt, for the session
/// tenant's audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SshAuditEvent {
    pub action: SshAction,
    pub session: String,
    /// `publickey` or `password`.
    pub method: String,
    pub client_addr: String,
    /// The key's SHA-256 fingerprint, for public-key attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// `POST /internal/v1/tokens/grant`: the relay, having checked a session
/// token a browser brought (`?token=`), asks for a refresh grant so the tab
/// can renew its token for the session's lifetime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub token: String,
}

/// A refresh grant: an opaque secret bound to one session and the scopes of
/// the token it was granted for; it dies with the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantResponse {
    pub refresh_token: String,
    /// Unix seconds (the session's end).
    pub expires_at: i64,
}

/// `POST /internal/v1/tokens/refresh`: a fresh session token for a grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub session: String,
    pub refresh_token: String,
}

/// A fresh session token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshResponse {
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The error body every API answer other than 2xx carries.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_shape_is_the_one_control_reads() {
        let hb = HeartbeatRequest {
            allocatable_mb: 100,
            free_mb: 50,
            isolation: NodeIsolation {
                security_profile: "dind".into(),
                disk_limits: false,
            },
            metrics_addr: None,
            sessions: vec![SessionReport {
                id: "s1".into(),
                state: ReportedState::Running,
                reason: String::new(),
                idle_ms: Some(3),
            }],
            disk: None,
            warm: Vec::new(),
        };
        let v = serde_json::to_value(&hb).expect("serializes");
        assert_eq!(v["security_profile"], "dind");
        assert_eq!(v["sessions"][0]["state"], "running");
        let back: HeartbeatRequest = serde_json::from_value(v).expect("parses");
        assert_eq!(back, hb);
        // A renamed field is refused, not defaulted.
        assert!(
            serde_json::from_str::<HeartbeatRequest>(
                r#"{"allocatable_mb":1,"free_mb":1,"sesions":[]}"#
            )
            .is_err()
        );
        let a: SshAction = serde_json::from_str("\"ssh.login_failed\"").expect("known action");
        assert_eq!(a.as_str(), "ssh.login_failed");
    }
}
