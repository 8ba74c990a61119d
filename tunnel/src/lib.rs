//! Warren's tunnel: the QUIC link between relays (the edge) and node agents
//! (the workers), Warren's own replacement for cloudflared's tunnel.
//!
//! Agents dial out ([`client`]); a worker needs no inbound port. Each
//! connection starts with a registration stream from the agent (node id,
//! credential, protocol version) that the relay checks with a
//! [`server::NodeAuthenticator`]. After that the relay opens one
//! bidirectional stream per user connection; each starts with a
//! [`proto::StreamHeader`] and is answered by a [`proto::StreamReply`] before
//! bytes flow, so the relay can fail fast. The relay keeps a
//! [`server::Registry`] of live nodes and opens streams to them by id.
//!
//! # Layout
//! - [`proto`]: the wire format (one home, versioned, bounded).
//! - [`server`]: relay side: accept loop, authentication, registry.
//! - [`client`]: agent side: one connection per relay, full-jitter backoff.
//! - [`tls`]: rustls/quinn configuration and development certificates.
//! - [`loopback`]: both ends in one process (load test, test harness).
#![forbid(unsafe_code)]

pub mod client;
pub mod loopback;
pub mod proto;
pub mod reset;
pub mod server;
pub mod stream;
pub mod tls;
pub mod udp;

pub use stream::TunnelStream;

use std::time::Duration;

/// ALPN identifier of the tunnel protocol.
pub const ALPN: &[u8] = b"warren-tunnel/1";

/// QUIC keepalive interval. Short, so that an agent whose relay restarted
/// sends a packet (and gets the new relay's stateless reset) within a
/// second; a ping a second per relay is negligible.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A connection with no packets for this long is considered dead: a relay
/// that vanished without a trace (machine gone) is noticed this fast.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// Streams the relay may have open to one agent at once.
pub const MAX_STREAMS_PER_NODE: u32 = 16_384;

/// Application close codes on a tunnel connection.
pub mod close_code {
    pub const NORMAL: u32 = 0;
    pub const AUTH_FAILED: u32 = 1;
    pub const VERSION_MISMATCH: u32 = 2;
    pub const PROTOCOL_ERROR: u32 = 3;
    pub const REPLACED: u32 = 4;
    pub const SHUTDOWN: u32 = 5;
}

/// Transport settings shared by both ends: keepalive, idle timeout, stream
/// limits and flow-control windows sized so a streaming upload and download
/// on the same stream do not stall (`docs/benchmarks.md`, tunnel: smaller windows stalled such streams).
/// The relay's side before a node has registered: the peer may open one
/// stream (the registration) and have at most this much data in flight,
/// so an unauthenticated peer parks kilobytes, not megabytes.
pub const PREAUTH_RECEIVE_WINDOW: u32 = 64 * 1024;
/// The relay's connection window once a node is admitted.
pub const RECEIVE_WINDOW: u32 = 64 * 1024 * 1024;

/// The relay's transport: as [`transport_config`], but a peer starts with
/// one stream and [`PREAUTH_RECEIVE_WINDOW`]; both are changed once the
/// node is admitted (see `server`).
pub fn relay_transport_config(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut t = transport_config(idle_timeout);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    t.receive_window(quinn::VarInt::from_u32(PREAUTH_RECEIVE_WINDOW));
    t
}

pub fn transport_config(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEPALIVE_INTERVAL));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS_PER_NODE));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW));
    t.send_window(64 * 1024 * 1024);
    t
}
