//! A real relay (Pingora + TLS) on 127.0.0.1:0, a real agent that dialed
//! its tunnel, real session containers (or, without Docker, a fake agent:
//! [`Stack::start_fake`]); HTTPS and WebSocket clients that connect to
//! 127.0.0.1 with SNI and Host set, as a browser would.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_agent::{Agent, AgentOptions, SessionInfo, SessionSpec};
use warren_config::*;
use warren_relay::auth::testing::Signer;
use warren_relay::routes::StaticRoutes;
use warren_testkit::tunnel::{fast_backoff, registered};
use warren_testkit::{FakeAgent, TestNode, run_id};
use warren_tunnel::client::RelayDial;

pub const WAIT: Duration = warren_testkit::WAIT;
pub const DOMAIN: &str = "warren.localhost";
pub const TENANT: &str = "acme";
const SECRET: &str = "relay-test-node-secret-0123456789";

pub async fn docker_or_skip() -> bool {
    warren_testkit::docker_or_skip()
}

/// Whether Debian's Chromium is there for the browser tests (required
/// under `CI=true`).
pub fn chromium_or_skip() -> bool {
    warren_testkit::chromium_or_skip()
}

/// `web/` (where the browser scripts run) and the screenshot path
/// `artifacts/<name>`.
pub fn browser_dirs(name: &str) -> (PathBuf, PathBuf) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    (root.join("web"), artifacts.join(name))
}

pub fn suffix() -> String {
    warren_testkit::unique_suffix()
}

pub struct Stack {
    pub run: String,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub signer: Signer,
    pub routes: Arc<StaticRoutes>,
    pub relay: warren_relay::Relay,
    /// The real agent (`None` with the fake one).
    pub agent: Option<Arc<Agent>>,
    /// The fake agent of [`Stack::start_fake`].
    pub fake: Option<Arc<FakeAgent>>,
    fake_node: Option<TestNode>,
    pub node: String,
    pub ca_pem: Vec<u8>,
    relay_stop: CancellationToken,
    agent_stop: CancellationToken,
    dir: PathBuf,
    network: String,
}

impl Stack {
    pub async fn start(name: &str) -> Stack {
        Self::start_with(name, None).await
    }

    /// `api`: a server standing in for control behind `api.<domain>`.
    pub async fn start_with(name: &str, api: Option<SocketAddr>) -> Stack {
        Self::start_opts(name, api, None).await
    }

    /// `preview_domain`: previews on a domain of their own.
    pub async fn start_opts(
        name: &str,
        api: Option<SocketAddr>,
        preview_domain: Option<&str>,
    ) -> Stack {
        Self::start_node(name, api, preview_domain, false).await
    }

    /// The real relay and tunnel with a [`FakeAgent`] behind them: no
    /// Docker. Sessions are routes only ([`Stack::fake_session`]).
    pub async fn start_fake(name: &str) -> Stack {
        Self::start_node(name, None, None, true).await
    }

    async fn start_node(
        name: &str,
        api: Option<SocketAddr>,
        preview_domain: Option<&str>,
        fake: bool,
    ) -> Stack {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warren=debug,info")
            .with_test_writer()
            .try_init();
        let run = run_id(name);
        let dir = std::env::temp_dir().join(format!("warren-relay-test-{run}"));
        std::fs::create_dir_all(&dir).unwrap();
        let signer = Signer::generate("test-key");
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, &signer.jwks).unwrap();
        let https = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tunnel = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (https_addr, admin_addr, tunnel_addr) = (
            https.local_addr().unwrap(),
            admin.local_addr().unwrap(),
            tunnel.local_addr().unwrap(),
        );
        let mut upstream = api
            .map(|a| format!("control_upstream = \"{a}\"\n"))
            .unwrap_or_default();
        if let Some(p) = preview_domain {
            upstream.push_str(&format!("preview_domain = \"{p}\"\n"));
        }
        let cfg: RelayConfig = from_toml_str(&format!(
            r#"
domain = "{DOMAIN}"
data_dir = "{}"
{upstream}[https]
listen = "{https_addr}"
[admin]
listen = "{admin_addr}"
[tunnel]
listen = "{tunnel_addr}"
node_secret = "{SECRET}"
[auth]
jwks_file = "{}"
"#,
            dir.join("relay").display(),
            jwks.display()
        ))
        .unwrap();
        let routes = Arc::new(StaticRoutes::new(SECRET));
        let relay_stop = CancellationToken::new();
        let relay = warren_relay::start(
            cfg,
            warren_relay::Listeners {
                https,
                http: None,
                admin: Some(admin),
                tunnel,
                ssh: None,
            },
            routes.clone(),
            relay_stop.clone(),
        )
        .await
        .unwrap();
        let ca = relay.ca_file.clone().unwrap();
        let ca_pem = std::fs::read(&ca).unwrap();

        let node = format!("n{}", run.replace('_', "-"))
            .chars()
            .take(63)
            .collect::<String>();
        let network = format!("warren-rtest-{run}");
        let agent_stop = CancellationToken::new();
        let (agent, fake, fake_node) = if fake {
            let agent = FakeAgent::new();
            let dial = RelayDial {
                server_name: DOMAIN.into(),
                ..warren_testkit::tunnel::dial(tunnel_addr, &String::from_utf8_lossy(&ca_pem))
                    .unwrap()
            };
            let n = TestNode::connect(&node, SECRET, vec![dial], agent.clone());
            (None, Some(agent), Some(n))
        } else {
            let agent_cfg = AgentConfig {
                admin: Default::default(),
                control_url: None,
                control_ca_file: None,
                memory_mb: None,
                node_id: node.clone(),
                data_dir: dir.join("agent"),
                credential: Secret::new(SECRET),
                relays: vec![RelayTarget {
                    addr: tunnel_addr.to_string(),
                    server_name: DOMAIN.into(),
                    ca_file: Some(ca),
                }],
                docker: DockerConfig {
                    network: network.clone(),
                    default_image: "warren/session:mini".into(),
                    default_memory_mb: 128,
                    ..Default::default()
                },
                terminal: TerminalConfig::default(),
            };
            let mut labels = BTreeMap::new();
            labels.insert("warren.test".to_string(), run.clone());
            let agent = Agent::start(
                &agent_cfg,
                AgentOptions {
                    extra_labels: labels,
                },
                agent_stop.clone(),
            )
            .await
            .unwrap();
            agent
                .connect_relays(&agent_cfg, fast_backoff(), &TaskTracker::new())
                .unwrap();
            (Some(agent), None, None)
        };
        registered(&relay.registry, &node).await;
        Stack {
            run,
            https: https_addr,
            admin: admin_addr,
            signer,
            routes,
            relay,
            agent,
            fake,
            fake_node,
            node,
            ca_pem,
            relay_stop,
            agent_stop,
            dir,
            network,
        }
    }

    /// A session container plus its route, owned by tenant `acme`.
    pub async fn session(&self) -> SessionInfo {
        let id = format!("s{}", suffix());
        let s = self
            .agent
            .as_ref()
            .expect("a real agent (not start_fake)")
            .create_session(&SessionSpec {
                id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        self.routes.insert(&id, &self.node, TENANT);
        s
    }

    /// A session of the fake agent: its route, owned by tenant `acme`.
    pub fn fake_session(&self) -> String {
        let id = format!("s{}", suffix());
        self.routes.insert(&id, &self.node, TENANT);
        id
    }

    /// Streams the relay opened to the fake agent so far.
    pub fn fake_streams(&self) -> usize {
        self.fake.as_ref().expect("start_fake").streams()
    }

    pub fn token(&self, sid: &str) -> String {
        self.signer.token(sid, TENANT, 300)
    }

    pub async fn tls(&self, host: &str) -> TlsStream<tokio::net::TcpStream> {
        warren_testkit::tls_connect(self.https, host, &self.ca_pem).await
    }

    /// One HTTP/1.1 request over TLS to 127.0.0.1 with SNI = Host = `host`.
    pub async fn request(
        &self,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        self.request_sni(host, host, method, path, headers).await
    }

    pub async fn request_sni(
        &self,
        sni: &str,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut s = self.tls(sni).await;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\n",
            self.https.port()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .expect("response in time");
        Resp::parse(&buf)
    }

    pub async fn ws(
        &self,
        sid: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Term, tokio_tungstenite::tungstenite::Error> {
        let ws = self.ws_socket(sid, query, headers).await?;
        Ok(warren_testkit::Term::new(ws).await)
    }

    /// The terminal WebSocket right after its handshake (no hello awaited).
    pub async fn ws_socket(
        &self,
        sid: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<
        tokio_tungstenite::WebSocketStream<TlsStream<tokio::net::TcpStream>>,
        tokio_tungstenite::tungstenite::Error,
    > {
        let host = format!("{sid}.{DOMAIN}");
        let s = self.tls(&host).await;
        let url = format!(
            "wss://{host}:{}/_warren/terminal?{query}",
            self.https.port()
        );
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::client_async(req, s).await?;
        Ok(ws)
    }

    pub fn metric(&self, name: &str) -> f64 {
        self.relay
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn containers(&self) -> Vec<String> {
        warren_testkit::labelled_containers(&format!("warren.test={}", self.run))
    }

    pub fn stop_agent(&self) {
        self.agent_stop.cancel();
        if let Some(n) = &self.fake_node {
            n.stop();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.agent_stop.cancel();
        self.relay_stop.cancel();
        if self.agent.is_some() {
            warren_testkit::remove_labelled(&format!("warren.test={}", self.run), &[&self.network]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    fn parse(buf: &[u8]) -> Resp {
        let text = String::from_utf8_lossy(buf).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Resp {
            status,
            headers,
            body: body.to_string(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub type Term = warren_testkit::Term<TlsStream<tokio::net::TcpStream>>;

/// A TCP forwarder in front of `target` whose connections can all be cut
/// at once (a network drop, as a browser sees one): `GET` anything on
/// `control` cuts.
pub struct Cutter {
    pub addr: SocketAddr,
    pub control: SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cutter {
    pub async fn start(target: SocketAddr) -> Cutter {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ctl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let c = Cutter {
            addr: l.local_addr().unwrap(),
            control: ctl.local_addr().unwrap(),
            tasks: tasks.clone(),
        };
        let t2 = tasks.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = l.accept().await {
                let h = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                let mut t = t2.lock().unwrap();
                t.retain(|h| !h.is_finished());
                t.push(h.abort_handle());
            }
        });
        tokio::spawn(async move {
            while let Ok((mut s, _)) = ctl.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                for h in tasks.lock().unwrap().drain(..) {
                    h.abort();
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\naccess-control-allow-origin: *\r\n\r\ncut")
                    .await;
            }
        });
        c
    }
}
