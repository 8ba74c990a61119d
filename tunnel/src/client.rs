//! The agent side of the tunnel: dials every configured relay, registers,
//! and serves the streams relays open. Reconnects with full-jitter
//! exponential backoff.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::TunnelStream;
use crate::proto::{self, Hello, ReplyCode, StreamHeader, StreamReply};

/// Time the agent gives a relay to answer its registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a relay has to send a stream's header after opening it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A relay to keep connected to.
#[derive(Clone)]
pub struct RelayDial {
    /// `host:port`, resolved on every attempt (relays move).
    pub addr: String,
    pub server_name: String,
    pub client_config: quinn::ClientConfig,
}

/// Full-jitter exponential backoff (AWS architecture blog's "full jitter"):
/// sleep a uniform time in `[0, min(cap, base * 2^attempt))`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// A connection that lasted this long resets the attempt counter.
    pub stable_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            // The first retry comes within 250 ms: a relay that restarted is
            // usually back already (its stateless reset told us it went).
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
            // A connection that registered and lasted a couple of seconds
            // was a real one: the next loss starts the backoff afresh (a
            // relay restarted twice in a minute is not a flapping relay).
            stable_after: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let ceiling = exp.min(self.cap);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { rng.random_range(0..=ms) })
    }
}

/// What an agent does with a stream a relay opened. The handler must answer
/// with [`PendingStream::accept`] or [`PendingStream::reject`].
#[async_trait]
pub trait StreamHandler: Send + Sync + 'static {
    async fn handle(&self, header: StreamHeader, stream: PendingStream);
}

/// A stream whose header was read and which awaits the agent's reply.
pub struct PendingStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    draining: CancellationToken,
}

impl PendingStream {
    /// Cancelled when the relay this stream came through is draining: a
    /// long-lived stream (a terminal) should end so its client reconnects
    /// through another relay.
    pub fn relay_draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Answers ok; bytes flow on the returned stream.
    pub async fn accept(mut self) -> std::io::Result<TunnelStream> {
        proto::write_frame(&mut self.send, &StreamReply::ok())
            .await
            .map_err(std::io::Error::other)?;
        Ok(TunnelStream::new(self.send, self.recv))
    }

    /// Answers with an error code and a message for the relay to show.
    pub async fn reject(mut self, code: ReplyCode, message: &str) {
        let _ = proto::write_frame(&mut self.send, &StreamReply::error(code, message)).await;
        let _ = self.send.finish();
        let _ = self.recv.stop(0u32.into());
    }
}

/// Connection state per relay address, for health checks and tests.
pub type RelayStatus = BTreeMap<String, bool>;

pub struct ClientOptions {
    pub node_id: String,
    pub credential: String,
    pub relays: Vec<RelayDial>,
    pub backoff: Backoff,
}

/// Runs the agent side until `shutdown`: one supervised connection per relay.
/// Returns a receiver of per-relay connection state.
pub fn spawn(
    opts: ClientOptions,
    handler: Arc<dyn StreamHandler>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<watch::Receiver<RelayStatus>> {
    let socket = crate::udp::bind("0.0.0.0:0".parse().expect("literal addr"))?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
    let status = watch::channel(
        opts.relays
            .iter()
            .map(|r| (r.addr.clone(), false))
            .collect::<RelayStatus>(),
    )
    .0;
    let rx = status.subscribe();
    let status = Arc::new(status);
    let hello = Hello {
        node_id: opts.node_id.clone(),
        credential: opts.credential.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    for relay in opts.relays {
        let ctx = RelayLoop {
            endpoint: endpoint.clone(),
            relay: relay.clone(),
            hello: hello.clone(),
            handler: handler.clone(),
            status: status.clone(),
            backoff: opts.backoff,
            shutdown: shutdown.clone(),
            streams: tracker.clone(),
        };
        tracker.spawn(
            ctx.run()
                .instrument(info_span!("relay", addr = %relay.addr)),
        );
    }
    let ep = endpoint.clone();
    let sd = shutdown.clone();
    tracker.spawn(async move {
        sd.cancelled().await;
        ep.close(crate::close_code::SHUTDOWN.into(), b"agent shutting down");
    });
    Ok(rx)
}

struct RelayLoop {
    endpoint: quinn::Endpoint,
    relay: RelayDial,
    hello: Hello,
    handler: Arc<dyn StreamHandler>,
    status: Arc<watch::Sender<RelayStatus>>,
    backoff: Backoff,
    shutdown: CancellationToken,
    streams: TaskTracker,
}

impl RelayLoop {
    async fn run(self) {
        let mut attempt: u32 = 0;
        while !self.shutdown.is_cancelled() {
            let started = Instant::now();
            match self.connect_once().await {
                Ok((conn, notices)) => {
                    self.set_status(true);
                    info!("connected to relay");
                    let reason = self.serve(conn, notices).await;
                    self.set_status(false);
                    warn!("relay connection lost: {reason}");
                }
                Err(e) => warn!("cannot connect to relay: {e}"),
            }
            if started.elapsed() >= self.backoff.stable_after {
                attempt = 0;
            }
            let delay = self.backoff.delay(attempt, &mut rand::rng());
            attempt = attempt.saturating_add(1);
            debug!(?delay, attempt, "reconnecting after backoff");
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn set_status(&self, up: bool) {
        self.status.send_modify(|m| {
            m.insert(self.relay.addr.clone(), up);
        });
    }

    /// A registered connection and its registration stream, where the
    /// relay's notices arrive.
    async fn connect_once(&self) -> Result<(quinn::Connection, quinn::RecvStream), String> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.relay.addr)
            .await
            .map_err(|e| format!("resolving {}: {e}", self.relay.addr))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.relay.addr))?;
        let connecting = self
            .endpoint
            .connect_with(
                self.relay.client_config.clone(),
                addr,
                &self.relay.server_name,
            )
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(REGISTER_TIMEOUT, connecting)
            .await
            .map_err(|_| "QUIC handshake timed out".to_string())?
            .map_err(|e| format!("QUIC handshake: {e}"))?;
        let reg = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            proto::write_frame(&mut send, &self.hello)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            let reply = proto::read_frame::<_, StreamReply>(&mut recv)
                .await
                .map_err(|e| match conn.close_reason() {
                    Some(reason) => format!("relay closed the connection: {reason}"),
                    None => e.to_string(),
                })?;
            Ok::<_, String>((reply, recv))
        };
        let (reply, notices) = tokio::time::timeout(REGISTER_TIMEOUT, reg)
            .await
            .map_err(|_| "registration timed out".to_string())??;
        if !reply.ok {
            return Err(format!(
                "relay refused registration: {}: {}",
                reply
                    .code
                    .as_ref()
                    .map(ReplyCode::as_str)
                    .unwrap_or_default(),
                reply.message.unwrap_or_default()
            ));
        }
        Ok((conn, notices))
    }

    async fn serve(&self, conn: quinn::Connection, mut notices: quinn::RecvStream) -> String {
        // Cancelled when this relay says it is draining; streams served
        // through it see it (PendingStream::relay_draining).
        let draining = CancellationToken::new();
        let stop_reading = CancellationToken::new();
        let _stop_reading = stop_reading.clone().drop_guard();
        {
            let draining = draining.clone();
            self.streams.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop_reading.cancelled() => return,
                        n = proto::read_frame::<_, proto::Notice>(&mut notices) => match n {
                            Ok(n) if n.kind == proto::Notice::DRAINING => {
                                info!("relay is draining: closing the terminals served through it");
                                draining.cancel();
                                return;
                            }
                            Ok(_) => {} // a notice this agent does not know
                            Err(_) => return, // stream ended (older relay) or connection gone
                        },
                    }
                }
            });
        }
        loop {
            let (send, mut recv) = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    conn.close(crate::close_code::SHUTDOWN.into(), b"agent shutting down");
                    return "agent shutting down".into();
                }
                s = conn.accept_bi() => match s {
                    Ok(s) => s,
                    Err(e) => return e.to_string(),
                },
            };
            let handler = self.handler.clone();
            let draining = draining.clone();
            self.streams.spawn(async move {
                let header = tokio::time::timeout(
                    HEADER_TIMEOUT,
                    proto::read_frame::<_, StreamHeader>(&mut recv),
                )
                .await;
                let pending = PendingStream {
                    send,
                    recv,
                    draining,
                };
                let header = match header {
                    Err(_) => {
                        return pending
                            .reject(ReplyCode::BadHeader, "no header in time")
                            .await;
                    }
                    Ok(Err(e)) => {
                        debug!("bad stream header: {e}");
                        return pending.reject(e.code(), &e.to_string()).await;
                    }
                    Ok(Ok(h)) => h,
                };
                if let Err(e) = header.validate() {
                    return pending.reject(e.code(), &e.to_string()).await;
                }
                let span =
                    info_span!("stream", session = %header.session, request = %header.request_id);
                handler.handle(header, pending).instrument(span).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let b = Backoff::default();
        let mut rng = rand::rng();
        for attempt in 0..40 {
            let d = b.delay(attempt, &mut rng);
            assert!(d <= b.cap);
            assert!(d <= b.base * 2u32.saturating_pow(attempt.min(20)));
        }
    }
}
