//! Real QUIC on loopback: registration, stream headers (good and hostile),
//! node authentication, and reconnection after the relay side restarts.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_tunnel::client::{
    self, Backoff, ClientOptions, PendingStream, RelayDial, StreamHandler,
};
use warren_tunnel::loopback::{LoopbackRelay, SERVER_NAME};
use warren_tunnel::proto::{self, Hello, StreamHeader, StreamKind, StreamReply};
use warren_tunnel::server::{self, OpenError, Registry, SharedSecretAuth};
use warren_tunnel::tls;

const SECRET: &str = "test-node-secret-0123456789";
const WAIT: Duration = Duration::from_secs(20);

/// Echoes `port 7` streams; refuses everything else as an unknown session.
struct Echo;

#[async_trait]
impl StreamHandler for Echo {
    async fn handle(&self, header: StreamHeader, stream: PendingStream) {
        // Port 9 holds the stream until the relay drains, then says so.
        if header.kind == StreamKind::Port(9) {
            let draining = stream.relay_draining();
            let Ok(mut s) = stream.accept().await else {
                return;
            };
            draining.cancelled().await;
            let _ = s.write_all(b"drained").await;
            let _ = s.shutdown().await;
            return;
        }
        if header.kind != StreamKind::Port(7) {
            return stream
                .reject(proto::ReplyCode::SessionNotFound, "no such session")
                .await;
        }
        let Ok(s) = stream.accept().await else { return };
        let (mut r, mut w) = tokio::io::split(s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    }
}

/// A relay side on loopback with a fresh certificate.
fn relay() -> LoopbackRelay {
    LoopbackRelay::start(SECRET).unwrap()
}

/// Stops a relay side and waits until it has.
async fn stop_relay(relay: LoopbackRelay) {
    relay.stop().await.unwrap();
}

fn agent(
    node: &str,
    credential: &str,
    relays: Vec<RelayDial>,
) -> (
    CancellationToken,
    tokio::sync::watch::Receiver<client::RelayStatus>,
) {
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let status = client::spawn(
        ClientOptions {
            node_id: node.into(),
            credential: credential.into(),
            relays,
            backoff: Backoff {
                base: Duration::from_millis(50),
                cap: Duration::from_millis(500),
                stable_after: Duration::from_secs(60),
            },
        },
        Arc::new(Echo),
        stop.clone(),
        &tracker,
    )
    .unwrap();
    (stop, status)
}

fn header(kind: StreamKind) -> StreamHeader {
    StreamHeader {
        session: "s1".into(),
        kind,
        request_id: "req-1".into(),
        client_addr: None,
    }
}

async fn echo_once(registry: &Registry, node: &str, msg: &[u8]) {
    let mut s = registry
        .open_stream(node, &header(StreamKind::Port(7)))
        .await
        .unwrap();
    s.write_all(msg).await.unwrap();
    s.send.finish().unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

#[tokio::test]
async fn streams_flow_and_agent_reconnects_after_relay_restart() {
    let relay = relay();
    let (addr, cert, key) = (relay.addr, relay.cert_pem.clone(), relay.key_pem.clone());
    let (stop, _status) = agent("node-a", SECRET, vec![relay.dial().unwrap()]);
    assert!(
        relay
            .registry
            .wait_until(WAIT, |n| n.contains("node-a"))
            .await
    );

    echo_once(&relay.registry, "node-a", b"hello through the tunnel").await;
    // 16 streams at once over the same connection.
    let reg = relay.registry.clone();
    let mut js = tokio::task::JoinSet::new();
    for i in 0..16u8 {
        let reg = reg.clone();
        js.spawn(async move { echo_once(&reg, "node-a", &vec![i; 100_000]).await });
    }
    while let Some(r) = js.join_next().await {
        r.unwrap();
    }
    // A refused stream gets the agent's code and message.
    match relay
        .registry
        .open_stream("node-a", &header(StreamKind::Terminal))
        .await
    {
        Err(OpenError::Rejected { code, .. }) => assert_eq!(code, "session_not_found"),
        other => panic!("expected rejection, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        relay
            .registry
            .open_stream("nobody", &header(StreamKind::Port(7)))
            .await,
        Err(OpenError::NodeNotConnected(_))
    ));

    // Kill the listener; start a new one on the same port; the agent comes back.
    stop_relay(relay).await;
    let relay = LoopbackRelay::start_at(addr, cert, key, SECRET).unwrap();
    assert!(
        relay
            .registry
            .wait_until(WAIT, |n| n.contains("node-a"))
            .await,
        "agent did not reconnect"
    );
    echo_once(&relay.registry, "node-a", b"after restart").await;
    stop.cancel();
    stop_relay(relay).await;
}

/// A relay told to stop first tells its agents it is draining: the agent
/// ends a held stream (it sees `relay_draining`), and the relay stops once
/// no stream is open.
#[tokio::test]
async fn a_stopping_relay_drains_its_streams_first() {
    let relay = relay();
    let (stop, _status) = agent("node-d", SECRET, vec![relay.dial().unwrap()]);
    assert!(
        relay
            .registry
            .wait_until(WAIT, |n| n.contains("node-d"))
            .await
    );
    let mut held = relay
        .registry
        .open_stream("node-d", &header(StreamKind::Port(9)))
        .await
        .unwrap();
    assert_eq!(relay.registry.open_streams(), 1);
    let registry = relay.registry.clone();
    let stopping = tokio::spawn(stop_relay(relay));
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, held.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"drained");
    drop(held);
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    assert_eq!(registry.open_streams(), 0);
    stop.cancel();
}

#[tokio::test]
async fn agent_keeps_a_connection_to_every_relay() {
    let (r1, r2) = (relay(), relay());
    let (stop, mut status) = agent(
        "node-ha",
        SECRET,
        vec![r1.dial().unwrap(), r2.dial().unwrap()],
    );
    assert!(
        r1.registry
            .wait_until(WAIT, |n| n.contains("node-ha"))
            .await
    );
    assert!(
        r2.registry
            .wait_until(WAIT, |n| n.contains("node-ha"))
            .await
    );
    tokio::time::timeout(WAIT, status.wait_for(|m| m.values().all(|up| *up)))
        .await
        .unwrap()
        .unwrap();
    echo_once(&r1.registry, "node-ha", b"one").await;
    echo_once(&r2.registry, "node-ha", b"two").await;
    // Losing one relay leaves the other serving.
    stop_relay(r1).await;
    echo_once(&r2.registry, "node-ha", b"still here").await;
    stop.cancel();
    stop_relay(r2).await;
}

/// A raw QUIC client speaking the registration by hand.
async fn raw_connect(addr: SocketAddr, cert: &str) -> quinn::Connection {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        tls::client_config(Some(cert.as_bytes()), Duration::from_secs(30)).unwrap(),
    );
    ep.connect(addr, SERVER_NAME).unwrap().await.unwrap()
}

#[tokio::test]
async fn bad_credential_and_wrong_version_are_refused_with_reason() {
    let relay = relay();

    let conn = raw_connect(relay.addr, &relay.cert_pem).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = Hello {
        node_id: "intruder".into(),
        credential: "wrong".into(),
        agent_version: "x".into(),
    };
    proto::write_frame(&mut send, &hello).await.unwrap();
    let reply: StreamReply = proto::read_frame(&mut recv).await.unwrap();
    assert!(!reply.ok);
    assert_eq!(
        reply.code.as_ref().map(proto::ReplyCode::as_str),
        Some("auth_failed")
    );
    let reason = conn.closed().await.to_string();
    assert!(reason.contains("not admitted"), "{reason}");
    assert!(!relay.registry.is_connected("intruder"));

    let conn = raw_connect(relay.addr, &relay.cert_pem).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[2, 0, 2, b'{', b'}']).await.unwrap();
    let reply: StreamReply = proto::read_frame(&mut recv).await.unwrap();
    assert_eq!(
        reply.code.as_ref().map(proto::ReplyCode::as_str),
        Some("version_mismatch")
    );
    let reason = conn.closed().await.to_string();
    assert!(reason.contains("v2") && reason.contains("v1"), "{reason}");
    stop_relay(relay).await;
}

#[tokio::test]
async fn hostile_stream_headers_fail_alone() {
    let relay = relay();
    let (stop, _status) = agent("node-h", SECRET, vec![relay.dial().unwrap()]);
    assert!(
        relay
            .registry
            .wait_until(WAIT, |n| n.contains("node-h"))
            .await
    );
    let conn = relay.registry.connection("node-h").unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            vec![1, 0, 8, b'n', b'o', b't', b' ', b'j', b's', b'o', b'n'],
            "bad_header",
        ),
        ("oversized", vec![1, 0xFF, 0xFF, b'{'], "too_large"),
        (
            "wrong version",
            vec![7, 0, 2, b'{', b'}'],
            "version_mismatch",
        ),
        (
            "bad session id",
            {
                let mut v = Vec::new();
                proto::write_frame(
                    &mut v,
                    &StreamHeader {
                        session: "../../etc".into(),
                        ..header(StreamKind::Port(7))
                    },
                )
                .await
                .unwrap();
                v
            },
            "bad_header",
        ),
    ];
    for (name, bytes, code) in cases {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        let reply: Result<StreamReply, _> =
            tokio::time::timeout(WAIT, proto::read_frame(&mut recv))
                .await
                .unwrap();
        match reply {
            Ok(r) => {
                assert!(!r.ok, "{name}: accepted");
                assert_eq!(
                    r.code.as_ref().map(proto::ReplyCode::as_str),
                    Some(code),
                    "{name}"
                );
            }
            // A reset of the stream is also an acceptable answer.
            Err(e) => eprintln!("{name}: stream reset: {e}"),
        }
    }
    // The connection still serves well-formed streams.
    echo_once(&relay.registry, "node-h", b"still serving").await;
    assert!(conn.close_reason().is_none());
    stop.cancel();
    stop_relay(relay).await;
}

/// Before registering, a peer may open one stream and park at most the
/// pre-auth window: a second stream never opens, and a megabyte on the first
/// never fits; the relay closes the connection at the registration deadline.
#[tokio::test]
async fn unauthenticated_peers_get_one_stream_and_a_small_window() {
    let relay = relay();
    let conn = raw_connect(relay.addr, &relay.cert_pem).await;
    // The registration stream: one byte, then silence (the relay waits for
    // the rest of the Hello until its registration deadline).
    let (mut first, _r1) = conn.open_bi().await.unwrap();
    first.write_all(&[1]).await.unwrap();
    // A second stream, with a megabyte the relay would never read: it
    // cannot even open before the relay gives up on this peer.
    let second = async {
        let (mut s, _r) = conn.open_bi().await?;
        s.write_all(&vec![0u8; 1024 * 1024]).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        second.await.is_err(),
        "a second stream carried data before registration"
    );
    let reason = conn.closed().await.to_string();
    assert!(reason.contains("no registration in time"), "{reason}");
    // A real agent still registers afterwards.
    let (stop, _status) = agent("node-after", SECRET, vec![relay.dial().unwrap()]);
    assert!(
        relay
            .registry
            .wait_until(WAIT, |n| n.contains("node-after"))
            .await
    );
    stop.cancel();
    stop_relay(relay).await;
}

/// A relay on a runtime of its own, so the test can make it vanish the way
/// a killed process does: the runtime is dropped, no CONNECTION_CLOSE is
/// ever sent, and the agent is left with a connection to nobody.
fn crashable_relay(
    socket: std::net::UdpSocket,
    cert: &str,
    key: &str,
    reset: &warren_tunnel::reset::ResetKey,
    idle: Duration,
) -> (tokio::runtime::Runtime, Arc<Registry>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let registry = Arc::new(Registry::default());
    let ep = {
        let _in_rt = rt.enter();
        server::from_socket_with_reset(socket, cert.as_bytes(), key.as_bytes(), idle, reset)
            .unwrap()
    };
    rt.spawn(server::serve(
        ep,
        registry.clone(),
        Arc::new(SharedSecretAuth::new(SECRET)),
        CancellationToken::new(),
    ));
    (rt, registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_relay_that_restarts_resets_its_agents_at_once() {
    let (cert, key) = tls::self_signed(&[SERVER_NAME]).unwrap();
    let dir = std::env::temp_dir().join(format!("wt-reset-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let reset =
        warren_tunnel::reset::ResetKey::load_or_create(&dir.join("tunnel-reset.key")).unwrap();
    // Idle timeouts far longer than the test's deadline: only a stateless
    // reset can bring the agent back in time.
    let idle = Duration::from_secs(120);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let (mut rt, mut registry) = crashable_relay(socket, &cert, &key, &reset, idle);
    let (stop, _status) = agent(
        "node-crash",
        SECRET,
        vec![RelayDial {
            addr: addr.to_string(),
            server_name: SERVER_NAME.into(),
            client_config: tls::client_config(Some(cert.as_bytes()), idle).unwrap(),
        }],
    );
    assert!(
        registry
            .wait_until(WAIT, |n| n.contains("node-crash"))
            .await
    );
    let mut took = Vec::new();
    for _ in 0..10 {
        rt.shutdown_background();
        // Its connections (held by the registry) go with it, as with a
        // killed process, and so does its socket.
        drop(registry);
        // The same port, the same key file, as a restarted relay would have.
        let deadline = tokio::time::Instant::now() + WAIT;
        let socket = loop {
            match std::net::UdpSocket::bind(addr) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "rebinding {addr}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let key_again =
            warren_tunnel::reset::ResetKey::load_or_create(&dir.join("tunnel-reset.key")).unwrap();
        let t0 = std::time::Instant::now();
        (rt, registry) = crashable_relay(socket, &cert, &key, &key_again, idle);
        assert!(
            registry
                .wait_until(WAIT, |n| n.contains("node-crash"))
                .await,
            "the agent never came back to the restarted relay"
        );
        took.push(t0.elapsed());
    }
    took.sort();
    eprintln!(
        "relay restart to agent registered, 10 runs: median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    stop.cancel();
    rt.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);
}
