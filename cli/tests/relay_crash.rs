//! A relay *process* killed with SIGKILL and started again at once, 20
//! times, under a terminal that prints a numbered line every 50 ms: every
//! line arrives exactly once (offset resume), and the time from the new
//! relay listening to the first byte after the resume is reported (p50,
//! p99, max). The agent runs in-process on real Docker; the relay is
//! `warren relay --config` with a static route.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_config::{AgentConfig, DockerConfig, RelayTarget, Secret};
use warren_proto::terminal::{Cursor, ServerMsg, TerminalQuery};

const SECRET: &str = "crash-node-secret-0123456789";
const WAIT: Duration = Duration::from_secs(60);
const ROUNDS: usize = 20;

struct Cleanup(String, String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        warren_testkit::remove_labelled(&format!("warren.test={}", self.0), &[&self.1]);
    }
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One attempt at the terminal through the relay's plain-HTTP listener.
async fn open(port: u16, session: &str, token: &str, q: &TerminalQuery) -> Option<Ws> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let url = format!(
        "ws://{session}.warren.localhost:{port}/_warren/terminal?{}",
        q.to_query()
    );
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::client_async(req, tcp)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

fn spawn_relay(config: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["relay", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_process_resumes_its_terminals_exactly() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let run = format!("crash-{}", std::process::id());
    let network = format!("warren-test-{run}");
    let _cleanup = Cleanup(run.clone(), network.clone());
    let dir = std::env::temp_dir().join(format!("warren-{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let signer = warren_relay::auth::testing::Signer::generate("crash-key");
    std::fs::write(dir.join("jwks.json"), &signer.jwks).unwrap();
    let session = format!("c{}", std::process::id());
    let node = format!("n{}", std::process::id());
    let (https, http, tunnel) = (free_tcp(), free_tcp(), free_udp());
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"domain = "warren.localhost"
data_dir = "{relay}"
[https]
listen = "127.0.0.1:{https}"
[http]
listen = "127.0.0.1:{http}"
[tunnel]
listen = "127.0.0.1:{tunnel}"
node_secret = "{SECRET}"
[auth]
jwks_file = "{jwks}"
[[routes]]
session = "{session}"
node = "{node}"
tenant = "acme"
"#,
            relay = dir.join("relay").display(),
            jwks = dir.join("jwks.json").display(),
        ),
    )
    .unwrap();
    let mut relay = spawn_relay(&config);
    let ca = dir.join("relay/ca.pem");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ca.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay made no CA"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The agent, in this process, with a session on its node.
    let cfg = AgentConfig {
        admin: Default::default(),
        control_url: None,
        memory_mb: None,
        node_id: node.clone(),
        data_dir: dir.join("agent"),
        credential: Secret::new(SECRET),
        relays: vec![RelayTarget {
            addr: format!("127.0.0.1:{tunnel}"),
            server_name: "warren.localhost".into(),
            ca_file: Some(ca),
        }],
        docker: DockerConfig {
            network: network.clone(),
            default_image: "warren/session:mini".into(),
            default_memory_mb: 128,
            pids_limit: 256,
            ..Default::default()
        },
        terminal: Default::default(),
    };
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut labels = BTreeMap::new();
    labels.insert("warren.test".to_string(), run.clone());
    let agent = warren_agent::Agent::start(
        &cfg,
        warren_agent::AgentOptions {
            extra_labels: labels,
        },
        stop.clone(),
    )
    .await
    .unwrap();
    agent
        .connect_relays(&cfg, Default::default(), &tracker)
        .unwrap();
    agent
        .create_session(&warren_agent::SessionSpec {
            id: session.clone(),
            image: None,
            memory_mb: None,
            cpus: None,
            pids_limit: None,
            disk_mb: None,
        })
        .await
        .unwrap();
    let token = signer.token(&session, "acme", 3600);

    // A shell printing N1, N2, … every 50 ms.
    let mut query = TerminalQuery::default();
    let mut cursor = Cursor::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ws = loop {
        if let Some(ws) = open(http, &session, &token, &query).await {
            break ws;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the terminal never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ws.send(Message::Binary(
        b"i=0; while :; do i=$((i+1)); echo N$i; sleep 0.05; done\n"
            .to_vec()
            .into(),
    ))
    .await
    .unwrap();
    let mut out = Vec::<u8>::new();
    // Reads until the socket breaks; `first` is when the first terminal byte came.
    async fn pump(
        ws: &mut Ws,
        cursor: &mut Cursor,
        out: &mut Vec<u8>,
        until: Option<Duration>,
    ) -> Option<Instant> {
        let mut first = None;
        let end = until.map(|d| tokio::time::Instant::now() + d);
        loop {
            let next = match end {
                Some(e) => match tokio::time::timeout_at(e, ws.next()).await {
                    Ok(m) => m,
                    Err(_) => return first,
                },
                None => ws.next().await,
            };
            match next {
                Some(Ok(Message::Binary(b))) => {
                    first.get_or_insert_with(Instant::now);
                    cursor.on_bytes(b.len());
                    out.extend_from_slice(&b);
                    if until.is_none() {
                        return first;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    let m = ServerMsg::parse(&t);
                    assert!(!matches!(m, ServerMsg::Gap { .. }), "a gap: {t}");
                    cursor.on_message(&m);
                }
                Some(Ok(_)) => {}
                _ => return first,
            }
        }
    }
    pump(
        &mut ws,
        &mut cursor,
        &mut out,
        Some(Duration::from_millis(500)),
    )
    .await;
    assert!(cursor.terminal.is_some(), "no hello");

    let mut took = Vec::new();
    for _ in 0..ROUNDS {
        relay.kill().await.unwrap(); // SIGKILL: nothing is closed politely
        relay = spawn_relay(&config);
        let deadline = tokio::time::Instant::now() + WAIT;
        // The new relay listening.
        while tokio::net::TcpStream::connect(("127.0.0.1", http))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay did not come back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let listening = Instant::now();
        // Whatever was still buffered from the old socket, then resume.
        pump(
            &mut ws,
            &mut cursor,
            &mut out,
            Some(Duration::from_millis(1)),
        )
        .await;
        cursor.resume(&mut query);
        let first = loop {
            if let Some(mut new) = open(http, &session, &token, &query).await
                && let Some(t) = pump(&mut new, &mut cursor, &mut out, None).await
            {
                ws = new;
                break t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the terminal never resumed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        took.push(first.saturating_duration_since(listening));
        // Restarts a few seconds apart (the agent's backoff starts afresh
        // after a connection that lasted 2 s; closer ones back off).
        pump(
            &mut ws,
            &mut cursor,
            &mut out,
            Some(Duration::from_millis(2500)),
        )
        .await;
    }
    ws.send(Message::Binary(vec![3u8].into())).await.unwrap(); // Ctrl-C the loop

    // Every line once, in order, from the first to the last seen.
    let text = String::from_utf8_lossy(&out);
    let nums: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix('N')?.parse().ok())
        .collect();
    assert!(nums.len() > 50, "too few lines: {text}");
    for w in nums.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "a line missing or repeated around N{}",
            w[0]
        );
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "relay SIGKILL + restart, {ROUNDS} runs: relay listening → first byte after resume: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} lines, none lost or repeated",
        ms(took[took.len() / 2]),
        ms(took[(took.len() * 99).div_ceil(100) - 1]),
        ms(took[took.len() - 1]),
        nums.len()
    );
    stop.cancel();
    tracker.close();
    let _ = agent.remove_session(&session).await;
    let _ = Arc::strong_count(&agent);
    let _ = relay.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
