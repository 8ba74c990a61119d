//! The tunnel in a test: a relay side on loopback ([`TestTunnel`]) and
//! nodes connected to it, or to a real relay's tunnel ([`TestNode`]), each
//! waited on until it registered. The node is any `StreamHandler`: a real
//! agent, or a [`crate::FakeAgent`].
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_tunnel::client::{self, Backoff, ClientOptions, RelayDial, RelayStatus, StreamHandler};
use warren_tunnel::loopback::LoopbackRelay;
use warren_tunnel::server::Registry;

use crate::WAIT;

pub use warren_tunnel::loopback::{SERVER_NAME, dial};

/// The node secret of test tunnels.
pub const NODE_SECRET: &str = "test-node-secret-0123456789";

/// A backoff that retries within half a second (tests restart relays).
pub fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Waits until `node` registered with `registry`; fails the test after
/// [`WAIT`].
pub async fn registered(registry: &Registry, node: &str) {
    assert!(
        registry.wait_until(WAIT, |n| n.contains(node)).await,
        "node {node} never registered"
    );
}

/// The relay side of a tunnel on `127.0.0.1:0` with a fresh certificate,
/// admitting nodes with [`NODE_SECRET`]; stops when dropped.
pub struct TestTunnel {
    relay: LoopbackRelay,
}

impl TestTunnel {
    pub fn start() -> TestTunnel {
        TestTunnel {
            relay: LoopbackRelay::start(NODE_SECRET).expect("binding a test tunnel"),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.relay.registry
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.relay.addr
    }

    /// The certificate nodes trust (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.relay.cert_pem
    }

    /// Writes the certificate to `dir/ca.pem`, for an agent's
    /// `relays[].ca_file`; its path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, self.ca_pem()).expect("writing the tunnel's CA");
        ca
    }

    pub fn dial(&self) -> RelayDial {
        self.relay.dial().expect("a dial to the test tunnel")
    }

    /// Waits until `node` registered here.
    pub async fn registered(&self, node: &str) {
        registered(self.registry(), node).await
    }

    /// Connects `handler` as node `node` and waits until it registered.
    pub async fn connect(&self, node: &str, handler: Arc<dyn StreamHandler>) -> TestNode {
        let n = TestNode::connect(node, NODE_SECRET, vec![self.dial()], handler);
        self.registered(node).await;
        n
    }

    /// Stops the relay side and waits until it has.
    pub async fn stop(self) {
        self.relay.stop().await.expect("the test tunnel's task");
    }
}

/// A node connected to relays by the tunnel's own client; disconnects
/// when dropped.
pub struct TestNode {
    /// Per-relay connection state.
    pub status: watch::Receiver<RelayStatus>,
    stop: CancellationToken,
}

impl TestNode {
    /// Dials `relays` as `node` with `secret` and [`fast_backoff`];
    /// registration happens in the background (see [`registered`]).
    pub fn connect(
        node: &str,
        secret: &str,
        relays: Vec<RelayDial>,
        handler: Arc<dyn StreamHandler>,
    ) -> TestNode {
        let stop = CancellationToken::new();
        let status = client::spawn(
            ClientOptions {
                node_id: node.into(),
                credential: secret.into(),
                relays,
                backoff: fast_backoff(),
            },
            handler,
            stop.clone(),
            &TaskTracker::new(),
        )
        .expect("starting a test node");
        TestNode { status, stop }
    }

    /// Disconnects from every relay.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
