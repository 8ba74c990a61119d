//! The tunnel wire format. Every control message is one frame:
//!
//! ```text
//! +---------+-------------+----------------------+
//! | version | length (BE) | JSON payload         |
//! |  u8     |  u16        | length bytes, <= 4 KiB |
//! +---------+-------------+----------------------+
//! ```
//!
//! The version byte comes first so a mismatch is told apart from garbage
//! before anything else is read. Registration: agent sends [`Hello`], relay
//! answers [`StreamReply`], then keeps the stream open for [`Notice`]s (an
//! agent that ignores them loses nothing). Data streams: relay sends
//! [`StreamHeader`], agent answers [`StreamReply`]; then raw bytes flow both
//! ways.
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The tunnel protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest frame payload accepted, in bytes.
pub const MAX_FRAME_LEN: usize = 4096;

/// First message on a connection: the agent introduces itself.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub node_id: String,
    pub credential: String,
    /// Agent software version, for logs.
    pub agent_version: String,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("node_id", &self.node_id)
            .field("credential", &"***")
            .field("agent_version", &self.agent_version)
            .finish()
    }
}

/// What a data stream carries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// HTTP/1.1 to the agent's terminal endpoint (`/_warren/terminal`).
    Terminal,
    /// Raw bytes to a TCP port of the session container.
    Port(u16),
    /// HTTP/1.1 to the agent's sandbox API (`/_warren/api/…`: exec, files).
    Api,
    /// HTTP/1.1 to the agent's snapshot commit (`/_warren/api/snapshot`),
    /// opened by the relay only for control's own `snapshot` scope; the
    /// agent serves the commit on no other kind of stream.
    Snapshot,
}

/// The header that opens every relay-initiated stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamHeader {
    pub session: String,
    pub kind: StreamKind,
    /// Correlates relay and agent logs; at most 64 bytes.
    pub request_id: String,
    /// The end user's address as the relay saw it.
    #[serde(default)]
    pub client_addr: Option<SocketAddr>,
}

/// The answer to a [`Hello`] or a [`StreamHeader`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ReplyCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl StreamReply {
    pub fn ok() -> Self {
        Self {
            ok: true,
            code: None,
            message: None,
        }
    }
    pub fn error(code: ReplyCode, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            code: Some(code),
            message: Some(message.into()),
        }
    }
}

/// Why a [`StreamReply`] refuses. On the wire it is the plain string
/// (`"session_not_found"`); a string this build does not know decodes to
/// [`ReplyCode::Other`], so a newer peer's codes never fail a reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    BadHeader,
    VersionMismatch,
    TooLarge,
    AuthFailed,
    SessionNotFound,
    SessionNotReady,
    PortUnreachable,
    Internal,
    /// A code this build does not know (or none: the empty string).
    Other(String),
}

impl ReplyCode {
    /// Every known code, for tests and docs.
    pub const KNOWN: [ReplyCode; 8] = [
        ReplyCode::BadHeader,
        ReplyCode::VersionMismatch,
        ReplyCode::TooLarge,
        ReplyCode::AuthFailed,
        ReplyCode::SessionNotFound,
        ReplyCode::SessionNotReady,
        ReplyCode::PortUnreachable,
        ReplyCode::Internal,
    ];

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            ReplyCode::BadHeader => "bad_header",
            ReplyCode::VersionMismatch => "version_mismatch",
            ReplyCode::TooLarge => "too_large",
            ReplyCode::AuthFailed => "auth_failed",
            ReplyCode::SessionNotFound => "session_not_found",
            ReplyCode::SessionNotReady => "session_not_ready",
            ReplyCode::PortUnreachable => "port_unreachable",
            ReplyCode::Internal => "internal",
            ReplyCode::Other(s) => s,
        }
    }

    /// The code a wire string names; unknown strings are kept as they are.
    pub fn parse(s: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or_else(|| ReplyCode::Other(s.to_string()))
    }
}

impl std::fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ReplyCode {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

impl PartialEq<str> for ReplyCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ReplyCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for ReplyCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReplyCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

/// What a relay tells an agent after registration, on the registration
/// stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notice {
    /// `draining`: the relay is stopping; the agent closes the terminals it
    /// serves through it (WebSocket close 1001, going away) so clients
    /// reconnect elsewhere at once. Unknown kinds are ignored.
    pub kind: String,
}

impl Notice {
    pub const DRAINING: &str = "draining";

    pub fn draining() -> Self {
        Self {
            kind: Self::DRAINING.into(),
        }
    }
}

/// The codes by their older constant names (callers not yet moved to
/// [`ReplyCode`]'s variants).
pub mod codes {
    use super::ReplyCode;
    pub const BAD_HEADER: ReplyCode = ReplyCode::BadHeader;
    pub const VERSION_MISMATCH: ReplyCode = ReplyCode::VersionMismatch;
    pub const TOO_LARGE: ReplyCode = ReplyCode::TooLarge;
    pub const AUTH_FAILED: ReplyCode = ReplyCode::AuthFailed;
    pub const SESSION_NOT_FOUND: ReplyCode = ReplyCode::SessionNotFound;
    pub const SESSION_NOT_READY: ReplyCode = ReplyCode::SessionNotReady;
    pub const PORT_UNREACHABLE: ReplyCode = ReplyCode::PortUnreachable;
    pub const INTERNAL: ReplyCode = ReplyCode::Internal;
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("peer speaks tunnel protocol v{peer}, this side speaks v{PROTOCOL_VERSION}")]
    VersionMismatch { peer: u8 },
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("invalid field: {0}")]
    Invalid(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtoError {
    /// The reply code that tells the peer what went wrong.
    pub fn code(&self) -> ReplyCode {
        match self {
            ProtoError::VersionMismatch { .. } => ReplyCode::VersionMismatch,
            ProtoError::TooLarge(_) => ReplyCode::TooLarge,
            _ => ReplyCode::BadHeader,
        }
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), ProtoError> {
    let body = serde_json::to_vec(msg).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME_LEN {
        return Err(ProtoError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(3 + body.len());
    buf.push(PROTOCOL_VERSION);
    buf.extend_from_slice(&(body.len() as u16).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame, checking version and size before reading the payload.
pub async fn read_frame<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<T, ProtoError> {
    let mut head = [0u8; 3];
    r.read_exact(&mut head).await?;
    if head[0] != PROTOCOL_VERSION {
        return Err(ProtoError::VersionMismatch { peer: head[0] });
    }
    let len = u16::from_be_bytes([head[1], head[2]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtoError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| ProtoError::Malformed(e.to_string()))
}

fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Hello {
    pub fn validate(&self) -> Result<(), ProtoError> {
        if !is_token(&self.node_id, 63) {
            return Err(ProtoError::Invalid("node_id".into()));
        }
        if self.credential.is_empty() || self.credential.len() > 1024 {
            return Err(ProtoError::Invalid("credential".into()));
        }
        if self.agent_version.len() > 64 {
            return Err(ProtoError::Invalid("agent_version".into()));
        }
        Ok(())
    }
}

impl StreamHeader {
    pub fn validate(&self) -> Result<(), ProtoError> {
        if !is_token(&self.session, 63) {
            return Err(ProtoError::Invalid("session".into()));
        }
        if !is_token(&self.request_id, 64) {
            return Err(ProtoError::Invalid("request_id".into()));
        }
        if let StreamKind::Port(0) = self.kind {
            return Err(ProtoError::Invalid("port 0".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> StreamHeader {
        StreamHeader {
            session: "abc123".into(),
            kind: StreamKind::Port(8080),
            request_id: "r-1".into(),
            client_addr: Some("10.0.0.1:5000".parse().unwrap()),
        }
    }

    #[tokio::test]
    async fn round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &header()).await.unwrap();
        let back: StreamHeader = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(back, header());
        back.validate().unwrap();
    }

    #[tokio::test]
    async fn wrong_version_is_named() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &header()).await.unwrap();
        buf[0] = 9;
        let e = read_frame::<_, StreamHeader>(&mut buf.as_slice())
            .await
            .unwrap_err();
        assert!(matches!(e, ProtoError::VersionMismatch { peer: 9 }));
        assert!(e.to_string().contains("v9"));
    }

    #[tokio::test]
    async fn oversized_is_refused_before_reading() {
        // Claims 60 KB but carries nothing: must fail on the length alone.
        let buf = [PROTOCOL_VERSION, 0xEA, 0x60];
        let e = read_frame::<_, StreamHeader>(&mut buf.as_slice())
            .await
            .unwrap_err();
        assert!(matches!(e, ProtoError::TooLarge(60000)));
    }

    #[tokio::test]
    async fn garbage_and_truncation() {
        let mut buf = vec![PROTOCOL_VERSION, 0, 5];
        buf.extend_from_slice(b"{{{{{");
        assert!(matches!(
            read_frame::<_, StreamHeader>(&mut buf.as_slice()).await,
            Err(ProtoError::Malformed(_))
        ));
        let short = [PROTOCOL_VERSION, 0, 50, b'{'];
        assert!(matches!(
            read_frame::<_, StreamHeader>(&mut short.as_slice()).await,
            Err(ProtoError::Io(_))
        ));
    }

    #[test]
    fn validation() {
        let mut h = header();
        h.session = "../etc".into();
        assert!(h.validate().is_err());
        let mut h = header();
        h.kind = StreamKind::Port(0);
        assert!(h.validate().is_err());
        let mut h = header();
        h.request_id = "x".repeat(65);
        assert!(h.validate().is_err());
        let hello = Hello {
            node_id: "n1".into(),
            credential: "secret".into(),
            agent_version: "0.1".into(),
        };
        assert!(!format!("{hello:?}").contains("secret"));
    }

    #[test]
    fn reply_codes_keep_their_wire_strings() {
        for (code, wire) in [
            (ReplyCode::BadHeader, "bad_header"),
            (ReplyCode::VersionMismatch, "version_mismatch"),
            (ReplyCode::TooLarge, "too_large"),
            (ReplyCode::AuthFailed, "auth_failed"),
            (ReplyCode::SessionNotFound, "session_not_found"),
            (ReplyCode::SessionNotReady, "session_not_ready"),
            (ReplyCode::PortUnreachable, "port_unreachable"),
            (ReplyCode::Internal, "internal"),
        ] {
            let reply = StreamReply::error(code.clone(), "m");
            let text = serde_json::to_string(&reply).unwrap();
            assert_eq!(
                text,
                format!(r#"{{"ok":false,"code":"{wire}","message":"m"}}"#)
            );
            let back: StreamReply = serde_json::from_str(&text).unwrap();
            assert_eq!(back.code, Some(code.clone()));
            assert_eq!(code, wire);
        }
        assert_eq!(
            serde_json::to_string(&StreamReply::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        // A code from a newer peer decodes, and goes back out unchanged.
        let newer: StreamReply =
            serde_json::from_str(r#"{"ok":false,"code":"quota_exceeded","message":"m"}"#).unwrap();
        assert_eq!(newer.code, Some(ReplyCode::Other("quota_exceeded".into())));
        assert!(
            serde_json::to_string(&newer)
                .unwrap()
                .contains(r#""code":"quota_exceeded""#)
        );
        let none: StreamReply = serde_json::from_str(r#"{"ok":false}"#).unwrap();
        assert_eq!(none.code, None);
    }
}
