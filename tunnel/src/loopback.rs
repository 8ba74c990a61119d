//! Both ends of the tunnel in one process, on loopback: a relay side
//! ([`LoopbackRelay`]) with a fresh self-signed certificate, and nodes that
//! dial it. The load test's tunnel scenario runs on it, and so do the
//! tests' harness (`warren-testkit`) and the benchmarks.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{
    self, Backoff, ClientOptions, PendingStream, RelayDial, RelayStatus, StreamHandler,
};
use crate::proto::{StreamHeader, StreamKind};
use crate::server::{self, Registry, SharedSecretAuth};
use crate::tls::{self, TlsError};

/// The name the loopback certificate is for; nodes dial it by this name.
pub const SERVER_NAME: &str = "warren.localhost";
/// Idle timeout of both ends of a loopback tunnel.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The relay side of a tunnel on loopback: accepts nodes presenting its
/// shared secret until stopped (or dropped).
pub struct LoopbackRelay {
    pub registry: Arc<Registry>,
    pub addr: SocketAddr,
    /// The relay's certificate, which is also the CA nodes trust.
    pub cert_pem: String,
    pub key_pem: String,
    secret: String,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl LoopbackRelay {
    /// A relay side on `127.0.0.1:0` with a fresh certificate for
    /// [`SERVER_NAME`], admitting nodes that present `secret`.
    pub fn start(secret: &str) -> Result<LoopbackRelay, TlsError> {
        let (cert, key) = tls::self_signed(&[SERVER_NAME])?;
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self::start_at(any, cert, key, secret)
    }

    /// A relay side on `addr` with this certificate: what a relay that
    /// restarts where the last one ran has.
    pub fn start_at(
        addr: SocketAddr,
        cert_pem: String,
        key_pem: String,
        secret: &str,
    ) -> Result<LoopbackRelay, TlsError> {
        let ep = server::bind(addr, cert_pem.as_bytes(), key_pem.as_bytes(), IDLE_TIMEOUT)?;
        let addr = ep
            .local_addr()
            .map_err(|e| TlsError::Invalid(format!("tunnel socket: {e}")))?;
        let registry = Arc::new(Registry::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(server::serve(
            ep,
            registry.clone(),
            Arc::new(SharedSecretAuth::new(secret)),
            stop.clone(),
        ));
        Ok(LoopbackRelay {
            registry,
            addr,
            cert_pem,
            key_pem,
            secret: secret.to_string(),
            stop,
            task: Some(task),
        })
    }

    /// How a node dials this relay.
    pub fn dial(&self) -> Result<RelayDial, TlsError> {
        dial(self.addr, &self.cert_pem)
    }

    /// Connects `handler` as node `node_id` (with this relay's secret); it
    /// serves until `shutdown`. Registration happens in the background:
    /// wait on [`Registry::wait_until`].
    pub fn connect(
        &self,
        node_id: &str,
        handler: Arc<dyn StreamHandler>,
        backoff: Backoff,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<watch::Receiver<RelayStatus>> {
        let opts = ClientOptions {
            node_id: node_id.into(),
            credential: self.secret.clone(),
            relays: vec![self.dial().map_err(std::io::Error::other)?],
            backoff,
        };
        client::spawn(opts, handler, shutdown, tracker)
    }

    /// Stops serving (agents are told it drains) and waits until it has.
    pub async fn stop(mut self) -> Result<(), JoinError> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await,
            None => Ok(()),
        }
    }
}

impl Drop for LoopbackRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How a node dials a relay's tunnel at `addr` by [`SERVER_NAME`],
/// trusting `ca_pem`.
pub fn dial(addr: SocketAddr, ca_pem: &str) -> Result<RelayDial, TlsError> {
    Ok(RelayDial {
        addr: addr.to_string(),
        server_name: SERVER_NAME.into(),
        client_config: tls::client_config(Some(ca_pem.as_bytes()), IDLE_TIMEOUT)?,
    })
}

/// A node for throughput runs: port 19 (chargen's) is an endless source;
/// any other stream is accepted and closed at once (open latency).
pub struct Source;

#[async_trait]
impl StreamHandler for Source {
    async fn handle(&self, header: StreamHeader, stream: PendingStream) {
        let Ok(mut s) = stream.accept().await else {
            return;
        };
        if header.kind == StreamKind::Port(19) {
            let buf = vec![b'x'; 64 * 1024];
            while s.write_all(&buf).await.is_ok() {}
        } else {
            let _ = s.shutdown().await;
        }
    }
}
