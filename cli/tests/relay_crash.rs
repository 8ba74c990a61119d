//! Relays as real processes (`warren relay --config`, a static route) in
//! front of an agent in this process on real Docker, under a terminal that
//! prints a numbered line every 50 ms, read through a relay's WebSocket and
//! resumed with `terminal=N&offset=K` as the page does:
//! - one relay SIGKILLed and started again at once, 20 times;
//! - two relays, the client's relay stopped gracefully (SIGTERM), the client
//!   moving to the other when the draining relay closes its socket, 20
//!   times.
//!
//! Every line arrives exactly once; the reconnect times are reported.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // shares the free-port helpers only
mod common;
use common::{free_tcp, free_udp};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_config::{AgentConfig, DockerConfig, RelayTarget, Secret};
use warren_proto::terminal::{Cursor, ServerMsg, TerminalQuery};
use warren_testkit::{TEST_LABEL, TestRun, until, until_ok};

const SECRET: &str = "crash-node-secret-0123456789";
const WAIT: Duration = warren_testkit::WAIT;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One relay: its config file and ports.
struct RelayProc {
    config: PathBuf,
    http: u16,
    tunnel: u16,
    ca: PathBuf,
    child: Option<tokio::process::Child>,
}

impl RelayProc {
    fn new(dir: &Path, name: &str, session: &str, node: &str) -> RelayProc {
        let (https, http, tunnel) = (free_tcp(), free_tcp(), free_udp());
        let data = dir.join(name);
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"domain = "warren.localhost"
data_dir = "{data}"
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
                data = data.display(),
                jwks = dir.join("jwks.json").display(),
            ),
        )
        .unwrap();
        RelayProc {
            config,
            http,
            tunnel,
            ca: data.join("ca.pem"),
            child: None,
        }
    }

    /// Starts it and waits until its HTTP port accepts.
    async fn start(&mut self) -> Instant {
        self.child = Some(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(["relay", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
        let port = self.http;
        until(
            "the relay coming up",
            WAIT,
            Duration::from_millis(5),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        Instant::now()
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// SIGTERM, then wait for it to exit on its own.
    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().unwrap().to_string();
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap();
            let st = tokio::time::timeout(WAIT, c.wait())
                .await
                .expect("the relay did not stop after SIGTERM")
                .unwrap();
            assert!(st.success(), "the relay exited with {st}");
        }
    }
}

/// The terminal client: a cursor, the bytes seen, and the socket.
struct Client {
    session: String,
    token: String,
    query: TerminalQuery,
    cursor: Cursor,
    out: Vec<u8>,
    ws: Option<Ws>,
}

impl Client {
    async fn open(&self, port: u16) -> Option<Ws> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let url = format!(
            "ws://{}.warren.localhost:{port}/_warren/terminal?{}",
            self.session,
            self.query.to_query()
        );
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        tokio_tungstenite::client_async(req, tcp)
            .await
            .ok()
            .map(|(ws, _)| ws)
    }

    /// Reads until `for_` has passed or the socket breaks (or, with `None`,
    /// until the first terminal byte); returns when the first byte came.
    async fn pump(&mut self, for_: Option<Duration>) -> Option<Instant> {
        let ws = self.ws.as_mut()?;
        let mut first = None;
        let end = for_.map(|d| tokio::time::Instant::now() + d);
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
                    self.cursor.on_bytes(b.len());
                    self.out.extend_from_slice(&b);
                    if for_.is_none() {
                        return first;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    let m = ServerMsg::parse(&t);
                    assert!(!matches!(m, ServerMsg::Gap { .. }), "a gap: {t}");
                    self.cursor.on_message(&m);
                }
                Some(Ok(_)) => {}
                _ => {
                    self.ws = None;
                    return first;
                }
            }
        }
    }

    /// Reads until the socket closes (true) or `wait` passes (false).
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let end = tokio::time::Instant::now() + wait;
        while self.ws.is_some() && tokio::time::Instant::now() < end {
            self.pump(Some(Duration::from_millis(50))).await;
        }
        self.ws.is_none()
    }

    /// Resumes through `port` (retrying until it serves); when the first
    /// byte after the resume arrived.
    async fn resume(&mut self, port: u16) -> Instant {
        // Whatever the old socket still held first.
        self.pump(Some(Duration::from_millis(1))).await;
        self.ws = None;
        self.cursor.resume(&mut self.query);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(ws) = self.open(port).await {
                self.ws = Some(ws);
                if let Some(t) = self.pump(None).await {
                    return t;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the terminal never resumed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every line once, in order: the number of lines.
    fn check(&self) -> usize {
        let text = String::from_utf8_lossy(&self.out);
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
        nums.len()
    }
}

struct Setup {
    dir: PathBuf,
    session: String,
    node: String,
    token: String,
    stop: CancellationToken,
    run: TestRun,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let run = TestRun::new(name);
        let dir = run.dir.clone();
        let signer = warren_relay::auth::testing::Signer::generate("crash-key");
        std::fs::write(dir.join("jwks.json"), &signer.jwks).unwrap();
        let session = format!("{name}{}", std::process::id());
        Setup {
            node: format!("n{name}{}", std::process::id()),
            token: signer.token(&session, "acme", 3600),
            session,
            stop: CancellationToken::new(),
            run,
            dir,
        }
    }

    /// The agent (holding a tunnel to every relay) and the session; then a
    /// client attached through `first` with the printing loop started.
    async fn agent_and_client(&self, relays: &[&RelayProc], first: u16) -> Client {
        let cfg = AgentConfig {
            admin: Default::default(),
            control_url: None,
            control_ca_file: None,
            memory_mb: None,
            node_id: self.node.clone(),
            data_dir: self.dir.join("agent"),
            credential: Secret::new(SECRET),
            relays: relays
                .iter()
                .map(|r| RelayTarget {
                    addr: format!("127.0.0.1:{}", r.tunnel),
                    server_name: "warren.localhost".into(),
                    ca_file: Some(r.ca.clone()),
                })
                .collect(),
            docker: DockerConfig {
                network: self.run.network.clone(),
                default_image: "warren/session:mini".into(),
                default_memory_mb: 128,
                pids_limit: 256,
                ..Default::default()
            },
            terminal: Default::default(),
        };
        let mut labels = BTreeMap::new();
        labels.insert(TEST_LABEL.to_string(), self.run.id.clone());
        let agent = warren_agent::Agent::start(
            &cfg,
            warren_agent::AgentOptions {
                extra_labels: labels,
            },
            self.stop.clone(),
        )
        .await
        .unwrap();
        agent
            .connect_relays(&cfg, Default::default(), &TaskTracker::new())
            .unwrap();
        agent
            .create_session(&warren_agent::SessionSpec {
                id: self.session.clone(),
                image: None,
                memory_mb: None,
                cpus: None,
                pids_limit: None,
                disk_mb: None,
                egress: Default::default(),
            })
            .await
            .unwrap();
        let mut c = Client {
            session: self.session.clone(),
            token: self.token.clone(),
            query: TerminalQuery::default(),
            cursor: Cursor::default(),
            out: Vec::new(),
            ws: None,
        };
        let mut ws = until_ok(
            "the terminal opening",
            WAIT,
            Duration::from_millis(50),
            || async { c.open(first).await.ok_or("the terminal never opened") },
        )
        .await;
        ws.send(Message::Binary(
            b"i=0; while :; do i=$((i+1)); echo N$i; sleep 0.05; done\n"
                .to_vec()
                .into(),
        ))
        .await
        .unwrap();
        c.ws = Some(ws);
        c.pump(Some(Duration::from_millis(500))).await;
        assert!(c.cursor.terminal.is_some(), "no hello");
        c
    }
}

fn report(what: &str, mut took: Vec<Duration>, lines: usize) {
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "{what}, {} runs: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {lines} lines, none lost or repeated",
        took.len(),
        ms(took[took.len() / 2]),
        ms(took[(took.len() * 99).div_ceil(100) - 1]),
        ms(took[took.len() - 1]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_process_resumes_its_terminals_exactly() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let s = Setup::new("crash");
    let mut relay = RelayProc::new(&s.dir, "relay", &s.session, &s.node);
    relay.start().await;
    let mut c = s.agent_and_client(&[&relay], relay.http).await;
    let mut took = Vec::new();
    for _ in 0..20 {
        relay.kill().await; // SIGKILL: nothing is closed politely
        let listening = relay.start().await;
        took.push(
            c.resume(relay.http)
                .await
                .saturating_duration_since(listening),
        );
        // Restarts a few seconds apart (the agent's backoff starts afresh
        // after a connection that lasted 2 s; closer ones back off).
        c.pump(Some(Duration::from_millis(2500))).await;
    }
    let lines = c.check();
    report(
        "relay SIGKILL + restart: relay listening → first byte after resume",
        took,
        lines,
    );
    s.stop.cancel();
    relay.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_relay_hands_its_terminals_to_the_other() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let s = Setup::new("drain");
    let mut a = RelayProc::new(&s.dir, "relay-a", &s.session, &s.node);
    let mut b = RelayProc::new(&s.dir, "relay-b", &s.session, &s.node);
    a.start().await;
    b.start().await;
    let mut c = s.agent_and_client(&[&a, &b], a.http).await;
    let mut took = Vec::new();
    let mut on_a = true;
    for _ in 0..20 {
        // The client's relay is stopped gracefully; the client moves to the
        // other one (as two relays behind one name would have it).
        let (from, to) = if on_a {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        // The client moves when its socket closes: the draining relay has
        // the agent close it (1001) before the relay exits.
        let t0 = Instant::now();
        let (_, resumed) = tokio::join!(from.stop(), async {
            let closed = c.closed_within(Duration::from_secs(3)).await;
            assert!(closed, "the draining relay did not close the terminal");
            c.resume(to.http).await
        });
        took.push(resumed.saturating_duration_since(t0));
        from.start().await;
        on_a = !on_a;
        c.pump(Some(Duration::from_millis(2500))).await;
    }
    let lines = c.check();
    report(
        "relay SIGTERM, client moves to the other relay: stop → first byte after resume",
        took,
        lines,
    );
    s.stop.cancel();
    a.kill().await;
    b.kill().await;
}
