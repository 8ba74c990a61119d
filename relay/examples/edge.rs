//! Relay benchmarks: keystroke echo and output throughput through the whole
//! edge (TLS + Pingora + WebSocket + QUIC + agent + warren-init), beside the
//! same terminal reached straight at the agent (a QUIC stream, no TLS or
//! Pingora) and beside `docker exec -it`, in the same run.
//!
//! ```sh
//! scripts/build-init.sh && scripts/build-images.sh mini
//! cargo run --release -p warren-relay --example edge            # all
//! cargo run --release -p warren-relay --example edge -- output  # output only
//! ```
//!
//! Output is measured for lines (`yes`) and for a stream without newlines,
//! beside the same command on a local PTY pinned to one core (`taskset -c
//! 0`, as the session has one CPU), in the same run.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_agent::{Agent, AgentOptions, SessionSpec};
use warren_config::*;
use warren_relay::auth::testing::Signer;
use warren_relay::routes::StaticRoutes;
use warren_tunnel::proto::{StreamHeader, StreamKind};

const SECRET: &str = "bench-node-secret-0123456789";
const OUTPUT: u64 = 200 * 1024 * 1024;
// `isig` back on so a final ^C ends the terminal.
const CAT: &str = "stty raw -echo isig; exec cat";

struct Env {
    relay: warren_relay::Relay,
    https: std::net::SocketAddr,
    ca: Vec<u8>,
    token: String,
    sid: String,
    container: String,
    stop: CancellationToken,
    label: String,
    network: String,
}

async fn env() -> (Env, Arc<Agent>) {
    let dir = std::env::temp_dir().join(format!("warren-relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let signer = Signer::generate("bench");
    std::fs::write(dir.join("jwks.json"), &signer.jwks).unwrap();
    let https = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tunnel = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (ha, ta) = (https.local_addr().unwrap(), tunnel.local_addr().unwrap());
    let cfg: RelayConfig = from_toml_str(&format!(
        "domain = \"warren.localhost\"\ndata_dir = \"{}\"\n[https]\nlisten = \"{ha}\"\n[tunnel]\nlisten = \"{ta}\"\nnode_secret = \"{SECRET}\"\n[auth]\njwks_file = \"{}\"\n",
        dir.join("relay").display(),
        dir.join("jwks.json").display()
    ))
    .unwrap();
    let routes = Arc::new(StaticRoutes::new(SECRET));
    let stop = CancellationToken::new();
    let relay = warren_relay::start(
        cfg,
        warren_relay::Listeners {
            https,
            http: None,
            admin: None,
            tunnel,
            ssh: None,
        },
        routes.clone(),
        stop.clone(),
    )
    .await
    .unwrap();
    let label = std::process::id().to_string();
    let network = format!("warren-rbench-{label}");
    let acfg = AgentConfig {
        admin: Default::default(),
        control_url: None,
        control_ca_file: None,
        memory_mb: None,
        node_id: "bench-node".into(),
        data_dir: dir.join("agent"),
        credential: Secret::new(SECRET),
        relays: vec![RelayTarget {
            addr: ta.to_string(),
            server_name: "warren.localhost".into(),
            ca_file: relay.ca_file.clone(),
        }],
        docker: DockerConfig {
            network: network.clone(),
            default_image: "warren/session:mini".into(),
            ..Default::default()
        },
        terminal: TerminalConfig::default(),
    };
    let mut labels = BTreeMap::new();
    labels.insert("warren.bench".to_string(), label.clone());
    let agent = Agent::start(
        &acfg,
        AgentOptions {
            extra_labels: labels,
        },
        stop.clone(),
    )
    .await
    .unwrap();
    agent
        .connect_relays(&acfg, Default::default(), &TaskTracker::new())
        .unwrap();
    warren_testkit::tunnel::registered(&relay.registry, "bench-node").await;
    let s = agent
        .create_session(&SessionSpec {
            id: "relaybench".into(),
            memory_mb: Some(1024),
            cpus: Some(2.0),
            ..Default::default()
        })
        .await
        .unwrap();
    routes.insert(&s.id, "bench-node", "bench");
    let ca = std::fs::read(relay.ca_file.as_ref().unwrap()).unwrap();
    let env = Env {
        token: signer.token(&s.id, "bench", 3600),
        sid: s.id,
        container: s.container_id,
        relay,
        https: ha,
        ca,
        stop,
        label,
        network,
    };
    (env, agent)
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
        warren_testkit::remove_labelled(&format!("warren.bench={}", self.label), &[&self.network]);
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

async fn via_relay(e: &Env) -> Ws {
    let host = format!("{}.warren.localhost", e.sid);
    let tls = warren_testkit::tls_connect(e.https, &host, &e.ca).await;
    let url = format!(
        "wss://{host}:{}/_warren/terminal?token={}",
        e.https.port(),
        e.token
    );
    let (ws, _) = tokio_tungstenite::client_async(url, Box::new(tls) as Box<dyn Io>)
        .await
        .unwrap();
    ws
}

async fn via_agent(e: &Env) -> Ws {
    let h = StreamHeader {
        session: e.sid.clone(),
        kind: StreamKind::Terminal,
        request_id: "b".into(),
        client_addr: None,
    };
    let s = e
        .relay
        .registry
        .open_stream("bench-node", &h)
        .await
        .unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async("ws://x/_warren/terminal", Box::new(s) as Box<dyn Io>)
            .await
            .unwrap();
    ws
}

async fn wait(ws: &mut Ws, needle: &[u8]) -> u64 {
    let mut seen = Vec::new();
    let mut total = 0u64;
    loop {
        if let Message::Binary(b) = ws.next().await.unwrap().unwrap() {
            total += b.len() as u64;
            // Only the new bytes (and the needle's length before them) are
            // searched, first byte first: the measuring client stays cheap
            // beside the path it measures on the same 2 cores.
            seen.extend_from_slice(&b);
            if seen
                .windows(needle.len())
                .any(|w| w[0] == needle[0] && w == needle)
            {
                return total;
            }
            let keep = needle.len() - 1;
            if seen.len() > keep {
                seen.drain(..seen.len() - keep);
            }
        }
    }
}

async fn echo_run(mut ws: Ws, n: usize, pace: Option<Duration>) -> Histogram<u64> {
    ws.send(Message::Binary(format!("{CAT}\n").into_bytes().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(b"S".to_vec().into()))
        .await
        .unwrap();
    wait(&mut ws, b"S").await;
    let mut h = Histogram::<u64>::new(3).unwrap();
    let mut tick = pace.map(tokio::time::interval);
    for i in 0..n {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let c = b'a' + (i % 26) as u8;
        let t = Instant::now();
        ws.send(Message::Binary(vec![c].into())).await.unwrap();
        wait(&mut ws, &[c]).await;
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    let _ = ws.send(Message::Binary(b"\x03".to_vec().into())).await;
    h
}

async fn echo(
    e: &Env,
    relay: bool,
    terminals: usize,
    keys: usize,
    pace: Option<Duration>,
) -> Histogram<u64> {
    let mut wss = Vec::new();
    for _ in 0..terminals {
        wss.push(if relay {
            via_relay(e).await
        } else {
            via_agent(e).await
        });
    }
    let mut js = tokio::task::JoinSet::new();
    for ws in wss {
        js.spawn(echo_run(ws, keys, pace));
    }
    let mut all = Histogram::<u64>::new(3).unwrap();
    while let Some(h) = js.join_next().await {
        all.add(h.unwrap()).unwrap();
    }
    all
}

/// The printing commands: lines, and one stream without newlines.
fn printer(lines: bool) -> String {
    // Busybox in both places (the session image's, Debian's on the host):
    // the same programs on both sides of the comparison.
    if lines {
        format!(
            "busybox yes abcdefghijklmnopqrstuvwxyz0123456789 | busybox head -c {OUTPUT}; echo DONE-$((40+2))"
        )
    } else {
        format!("busybox head -c {OUTPUT} /dev/zero | busybox tr '\\0' x; echo DONE-$((40+2))")
    }
}

/// The same command on a local PTY, pinned to one core: MB/s.
async fn output_local(lines: bool) -> f64 {
    let cmd = printer(lines);
    tokio::task::spawn_blocking(move || {
        let mut p = warren_agent::testing::spawn_on_pty(
            std::process::Command::new("taskset").args(["-c", "0", "sh", "-c", &cmd]),
        );
        let t = Instant::now();
        let n = p.wait_for(b"DONE-42");
        n as f64 / t.elapsed().as_secs_f64() / 1e6
    })
    .await
    .unwrap()
}

async fn output(e: &Env, relay: bool, lines: bool) -> f64 {
    let mut ws = if relay {
        via_relay(e).await
    } else {
        via_agent(e).await
    };
    let cmd = format!("{}\n", printer(lines));
    ws.send(Message::Binary(cmd.into_bytes().into()))
        .await
        .unwrap();
    let t = Instant::now();
    let n = wait(&mut ws, b"DONE-42").await;
    n as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

#[tokio::main]
async fn main() {
    let (e, _agent) = env().await;
    if std::env::args().nth(1).as_deref() == Some("output") {
        return output_table(&e).await;
    }
    println!("# Relay benchmarks\n");
    println!(
        "| path | terminals | typing | keystrokes | echo p50 | echo p99 |\n|---|---|---|---|---|---|"
    );
    let ten_per_sec = Some(Duration::from_millis(100));
    for (terminals, keys, pace, typing) in [
        (1usize, 2000usize, None, "back to back"),
        (100, 50, ten_per_sec, "10 keys/s each"),
    ] {
        for relay in [true, false] {
            let h = echo(&e, relay, terminals, keys, pace).await;
            let name = if relay {
                "browser path: TLS + Pingora + WebSocket + QUIC + agent"
            } else {
                "agent direct: QUIC stream + WebSocket + agent"
            };
            println!(
                "| {name} | {terminals} | {typing} | {} | {} | {} |",
                h.len(),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99))
            );
        }
    }
    let cid = e.container.clone();
    let h = tokio::task::spawn_blocking(move || {
        let mut p = warren_agent::testing::spawn_on_pty(
            std::process::Command::new("docker").args(["exec", "-it", &cid, "sh", "-c", CAT]),
        );
        p.echo(2000)
    })
    .await
    .unwrap();
    println!(
        "| `docker exec -it` | 1 | back to back | {} | {} | {} |",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99))
    );
    output_table(&e).await;
}

async fn output_table(e: &Env) {
    println!(
        "\n| path | {} MiB of lines (`yes`) | {} MiB without newlines |\n|---|---|---|",
        OUTPUT >> 20,
        OUTPUT >> 20
    );
    // `edge output stream`: only the stream without newlines (profiling).
    let lines = std::env::args().nth(2).as_deref() != Some("stream");
    let l_or_nan = async |f: bool, run: bool| if run { output_local(f).await } else { f64::NAN };
    let local = (l_or_nan(true, lines).await, output_local(false).await);
    for (name, relay) in [
        ("browser path (TLS + relay)", true),
        ("agent direct", false),
    ] {
        let l = if lines {
            output(e, relay, true).await
        } else {
            f64::NAN
        };
        let s = output(e, relay, false).await;
        println!(
            "| {name} | {l:.1} MB/s ({:.2}×) | {s:.1} MB/s ({:.2}×) |",
            l / local.0,
            s / local.1
        );
    }
    println!(
        "| local PTY, pinned to one core | {:.1} MB/s | {:.1} MB/s |",
        local.0, local.1
    );
}
