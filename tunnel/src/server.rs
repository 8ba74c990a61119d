//! The relay side of the tunnel: accepts agent connections, authenticates
//! them, and keeps a registry of live nodes that streams are opened to.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::proto::{self, Hello, ProtoError, ReplyCode, StreamHeader, StreamReply};
use crate::{TunnelStream, close_code};

/// Time an agent has to send its registration after connecting.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to open a stream and get the agent's reply. Bounds the custom L4
/// path, which has no connect timeout of its own.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent handshakes in progress; protects the accept loop.
const MAX_PENDING_HANDSHAKES: usize = 256;
/// On shutdown, how long the relay waits for the streams it carries to end
/// after telling agents it is draining (agents close terminals at once;
/// a preview's HTTP exchange gets this long to finish).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Who a node is, once authenticated.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Decides whether a registering agent is who it says. The foundation
/// checks a shared secret ([`SharedSecretAuth`]); the control plane replaces
/// it with control-issued node credentials.
#[async_trait]
pub trait NodeAuthenticator: Send + Sync + 'static {
    async fn authenticate(&self, hello: &Hello) -> Result<NodeIdentity, AuthError>;
}

/// Accepts any node id presenting the configured secret.
pub struct SharedSecretAuth {
    secret: String,
}

impl SharedSecretAuth {
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl NodeAuthenticator for SharedSecretAuth {
    async fn authenticate(&self, hello: &Hello) -> Result<NodeIdentity, AuthError> {
        if constant_time_eq(hello.credential.as_bytes(), self.secret.as_bytes()) {
            Ok(NodeIdentity {
                node_id: hello.node_id.clone(),
            })
        } else {
            Err(AuthError("node credential rejected".into()))
        }
    }
}

struct NodeEntry {
    conn: quinn::Connection,
    generation: u64,
}

/// Why a stream to a node could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("node {0} is not connected")]
    NodeNotConnected(String),
    #[error("node {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("agent refused the stream: {code}: {message}")]
    Rejected { code: ReplyCode, message: String },
    #[error("tunnel connection failed: {0}")]
    Connection(String),
}

/// Live node connections of one relay, by node id.
pub struct Registry {
    nodes: DashMap<String, NodeEntry>,
    generation: AtomicU64,
    changed: watch::Sender<u64>,
    open_timeout: Duration,
    /// Streams open through this relay (drain waits for them).
    open: Arc<watch::Sender<usize>>,
}

/// Held by every stream the relay opened; counts it open until dropped.
pub struct OpenGuard(Arc<watch::Sender<usize>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(OPEN_TIMEOUT)
    }
}

impl Registry {
    pub fn new(open_timeout: Duration) -> Self {
        Self {
            nodes: DashMap::new(),
            generation: AtomicU64::new(0),
            changed: watch::channel(0).0,
            open_timeout,
            open: Arc::new(watch::channel(0).0),
        }
    }

    /// Streams open through this relay now.
    pub fn open_streams(&self) -> usize {
        *self.open.borrow()
    }

    /// Waits until no stream is open, or `deadline` passes; whether none is.
    pub async fn wait_streams_closed(&self, deadline: Duration) -> bool {
        let mut rx = self.open.subscribe();
        tokio::time::timeout(deadline, rx.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    pub fn is_connected(&self, node_id: &str) -> bool {
        self.nodes.contains_key(node_id)
    }

    pub fn node_ids(&self) -> BTreeSet<String> {
        self.nodes.iter().map(|e| e.key().clone()).collect()
    }

    /// Waits until `pred` holds for the set of connected nodes, or the deadline passes.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        pred: impl Fn(&BTreeSet<String>) -> bool,
    ) -> bool {
        let mut rx = self.changed.subscribe();
        tokio::time::timeout(deadline, async {
            loop {
                if pred(&self.node_ids()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    fn insert(&self, node_id: &str, conn: quinn::Connection) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(old) = self
            .nodes
            .insert(node_id.to_string(), NodeEntry { conn, generation })
        {
            // A node reconnected before its old connection timed out.
            old.conn.close(
                close_code::REPLACED.into(),
                b"replaced by a newer connection",
            );
        }
        self.changed.send_modify(|v| *v += 1);
        generation
    }

    fn remove(&self, node_id: &str, generation: u64) {
        if self
            .nodes
            .remove_if(node_id, |_, e| e.generation == generation)
            .is_some()
        {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Opens a stream to `node_id`, sends `header` and waits for the agent's
    /// reply. On success, bytes flow on the returned stream.
    pub async fn open_stream(
        &self,
        node_id: &str,
        header: &StreamHeader,
    ) -> Result<TunnelStream, OpenError> {
        let conn = self
            .nodes
            .get(node_id)
            .map(|e| e.conn.clone())
            .ok_or_else(|| OpenError::NodeNotConnected(node_id.to_string()))?;
        let fut = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| OpenError::Connection(e.to_string()))?;
            proto::write_frame(&mut send, header)
                .await
                .map_err(|e| OpenError::Connection(e.to_string()))?;
            let reply: StreamReply = proto::read_frame(&mut recv)
                .await
                .map_err(|e| OpenError::Connection(e.to_string()))?;
            if !reply.ok {
                return Err(OpenError::Rejected {
                    // No code at all reads as the empty one, as it always has.
                    code: reply
                        .code
                        .unwrap_or_else(|| ReplyCode::Other(String::new())),
                    message: reply.message.unwrap_or_default(),
                });
            }
            self.open.send_modify(|n| *n += 1);
            Ok(TunnelStream::counted(
                send,
                recv,
                OpenGuard(self.open.clone()),
            ))
        };
        tokio::time::timeout(self.open_timeout, fut)
            .await
            .map_err(|_| OpenError::Timeout(node_id.to_string(), self.open_timeout))?
    }
}

/// Serves the relay side of the tunnel on `endpoint` until `shutdown`.
pub async fn serve(
    endpoint: quinn::Endpoint,
    registry: Arc<Registry>,
    auth: Arc<dyn NodeAuthenticator>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let remote = incoming.remote_address();
        let registry = registry.clone();
        let auth = auth.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(
            async move {
                match handle_connection(incoming, registry, auth, permit, shutdown).await {
                    Ok(()) => {}
                    Err(e) => info!("tunnel connection ended: {e}"),
                }
            }
            .instrument(info_span!("tunnel", %remote)),
        );
    }
    // Agents were told to drain (each connection's task writes the notice);
    // their terminals close at once, other streams get a deadline.
    if !registry.wait_streams_closed(DRAIN_DEADLINE).await {
        info!(
            open = registry.open_streams(),
            "drain deadline passed with streams open"
        );
    }
    endpoint.close(close_code::SHUTDOWN.into(), b"relay shutting down");
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    // Release the UDP port only once peers were told; a restarted relay can
    // then bind the same address.
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
}

/// Sends an error reply on the registration stream, lets it leave, then
/// closes the connection with `code` and the same message as reason.
async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reply_code: ReplyCode,
    close: u32,
    msg: &str,
) {
    let _ = proto::write_frame(send, &StreamReply::error(reply_code, msg)).await;
    let _ = send.finish();
    // Give the reply a moment to be acknowledged before the close overtakes it.
    let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    conn.close(close.into(), msg.as_bytes());
}

async fn handle_connection(
    incoming: quinn::Incoming,
    registry: Arc<Registry>,
    auth: Arc<dyn NodeAuthenticator>,
    permit: tokio::sync::OwnedSemaphorePermit,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let conn = tokio::time::timeout(HELLO_TIMEOUT, incoming)
        .await
        .map_err(|_| "QUIC handshake timed out".to_string())?
        .map_err(|e| format!("QUIC handshake failed: {e}"))?;
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        match proto::read_frame::<_, Hello>(&mut recv).await {
            Ok(h) => Ok((send, h)),
            Err(e) => {
                let (code, msg) = match &e {
                    ProtoError::VersionMismatch { .. } => {
                        (close_code::VERSION_MISMATCH, e.to_string())
                    }
                    _ => (close_code::PROTOCOL_ERROR, format!("bad registration: {e}")),
                };
                refuse(&conn, &mut send, e.code(), code, &msg).await;
                Err(msg)
            }
        }
    })
    .await
    .map_err(|_| {
        conn.close(
            close_code::PROTOCOL_ERROR.into(),
            b"no registration in time",
        );
        "no registration in time".to_string()
    })?;
    let (mut send, hello) = hello?;
    // A malformed registration, then a node not admitted: refused with
    // (reply code, close code, message).
    let admitted = match hello.validate() {
        Err(e) => Err((
            ReplyCode::BadHeader,
            close_code::PROTOCOL_ERROR,
            format!("bad registration: {e}"),
        )),
        Ok(()) => auth.authenticate(&hello).await.map_err(|e| {
            let msg = format!("node {} not admitted: {e}", hello.node_id);
            warn!("{msg}");
            (ReplyCode::AuthFailed, close_code::AUTH_FAILED, msg)
        }),
    };
    let identity = match admitted {
        Ok(id) => id,
        Err((reply_code, close, msg)) => {
            refuse(&conn, &mut send, reply_code, close, &msg).await;
            return Err(msg);
        }
    };
    // Admitted: the node opens no further streams (the relay opens them),
    // and the connection gets its full window for terminal output.
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(0));
    conn.set_receive_window(quinn::VarInt::from_u32(crate::RECEIVE_WINDOW));
    proto::write_frame(&mut send, &StreamReply::ok())
        .await
        .map_err(|e| e.to_string())?;
    // The registration stream stays open: notices (drain) go down it.
    drop(permit);

    let node_id = identity.node_id;
    let generation = registry.insert(&node_id, conn.clone());
    info!(node = %node_id, agent_version = %hello.agent_version, "node connected");
    let reason = tokio::select! {
        e = conn.closed() => e.to_string(),
        _ = shutdown.cancelled() => {
            // Draining: no new streams to this node here; the agent closes
            // the terminals it serves through this relay, so their clients
            // reconnect (through another relay) at once. The connection
            // stays up until the endpoint closes.
            registry.remove(&node_id, generation);
            let _ = proto::write_frame(&mut send, &proto::Notice::draining()).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(DRAIN_DEADLINE + Duration::from_secs(1), conn.closed()).await;
            "relay shutting down".to_string()
        }
    };
    registry.remove(&node_id, generation);
    info!(node = %node_id, "node disconnected: {reason}");
    Ok(())
}

/// Binds a tunnel listener on `addr` (use `127.0.0.1:0` in tests).
pub fn bind(
    addr: SocketAddr,
    cert_pem: &[u8],
    key_pem: &[u8],
    idle_timeout: Duration,
) -> Result<quinn::Endpoint, crate::tls::TlsError> {
    let cfg = crate::tls::server_config(cert_pem, key_pem, idle_timeout)?;
    let socket = crate::udp::bind(addr)
        .map_err(|e| crate::tls::TlsError::Invalid(format!("binding {addr}: {e}")))?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| crate::tls::TlsError::Invalid("no async runtime".into()))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(cfg), socket, runtime)
        .map_err(|e| crate::tls::TlsError::Invalid(format!("binding {addr}: {e}")))
}

impl Registry {
    /// The live connection to a node, for diagnostics and protocol tests.
    pub fn connection(&self, node_id: &str) -> Option<quinn::Connection> {
        self.nodes.get(node_id).map(|e| e.conn.clone())
    }
}

/// A tunnel listener on an already bound UDP socket (tests bind `127.0.0.1:0`).
pub fn from_socket(
    socket: std::net::UdpSocket,
    cert_pem: &[u8],
    key_pem: &[u8],
    idle_timeout: Duration,
) -> Result<quinn::Endpoint, crate::tls::TlsError> {
    from_socket_with_reset(
        socket,
        cert_pem,
        key_pem,
        idle_timeout,
        &crate::reset::ResetKey::random(),
    )
}

/// [`from_socket`] with a stateless-reset key that survives restarts (see
/// [`crate::reset`]): agents of a crashed relay learn at once that their
/// connection is gone when it comes back.
pub fn from_socket_with_reset(
    socket: std::net::UdpSocket,
    cert_pem: &[u8],
    key_pem: &[u8],
    idle_timeout: Duration,
    reset: &crate::reset::ResetKey,
) -> Result<quinn::Endpoint, crate::tls::TlsError> {
    let cfg = crate::tls::server_config(cert_pem, key_pem, idle_timeout)?;
    crate::udp::enlarge_buffers(&socket);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| crate::tls::TlsError::Invalid("no async runtime".into()))?;
    quinn::Endpoint::new(reset.endpoint_config(), Some(cfg), socket, runtime)
        .map_err(|e| crate::tls::TlsError::Invalid(format!("tunnel socket: {e}")))
}
