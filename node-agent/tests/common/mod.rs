//! Test harness: a real relay-side tunnel listener on 127.0.0.1:0, a real
//! agent on the local Docker engine, each test on its own network and node
//! id, everything labelled and removed on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_agent::{Agent, AgentOptions, SessionInfo, SessionSpec};
use warren_config::{AgentConfig, DockerConfig, RelayTarget, Secret, SecurityMode, TerminalConfig};
use warren_testkit::tunnel::{NODE_SECRET, SERVER_NAME, fast_backoff};
use warren_testkit::{TestTunnel, run_id};
use warren_tunnel::TunnelStream;
use warren_tunnel::proto::{StreamHeader, StreamKind};
use warren_tunnel::server::Registry;

pub const WAIT: Duration = warren_testkit::WAIT;
pub const TEST_LABEL: &str = "warren.test";

/// True when Docker answers. Under CI (`CI=true`) a missing Docker fails
/// the test instead of skipping it.
pub async fn docker_or_skip() -> bool {
    if !warren_testkit::docker_or_skip() {
        return false;
    }
    let init = warren_agent::locate_init_binary(None);
    assert!(
        init.is_file(),
        "{} missing: run scripts/build-init.sh first",
        init.display()
    );
    true
}

pub struct Stack {
    pub run: String,
    pub registry: Arc<Registry>,
    tunnel: TestTunnel,
    pub cfg: AgentConfig,
    pub agent: Option<Arc<Agent>>,
    agent_stop: CancellationToken,
    agent_tasks: TaskTracker,
    data_dir: PathBuf,
}

impl Stack {
    /// A stack whose agent runs the isolated `default` profile.
    pub async fn start(name: &str) -> Stack {
        Self::start_with(name, false).await
    }

    /// `allow_host_root`: the host-root Docker-in-Docker profile.
    pub async fn start_with(name: &str, allow_host_root: bool) -> Stack {
        Self::start_mode(name, allow_host_root, SecurityMode::Auto).await
    }

    /// A stack whose agent runs sessions with the profile `mode`.
    pub async fn start_mode(name: &str, allow_host_root: bool, mode: SecurityMode) -> Stack {
        Self::start_configured(name, |d| {
            d.security = mode;
            d.allow_host_root_sessions = allow_host_root;
        })
        .await
    }

    /// A stack whose agent's Docker settings are the tests' defaults
    /// changed by `tweak`.
    pub async fn start_configured(name: &str, tweak: impl FnOnce(&mut DockerConfig)) -> Stack {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warren=debug,info")
            .with_test_writer()
            .try_init();
        let run = run_id(name);
        let data_dir = std::env::temp_dir().join(format!("warren-test-{run}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        let tunnel = TestTunnel::start();
        let ca = tunnel.write_ca(&data_dir);
        let cfg = AgentConfig {
            admin: Default::default(),
            control_url: None,
            control_ca_file: None,
            memory_mb: None,
            node_id: format!("t{}", run.replace('_', "-"))
                .chars()
                .take(63)
                .collect(),
            data_dir: data_dir.join("agent"),
            credential: Secret::new(NODE_SECRET),
            relays: vec![RelayTarget {
                addr: tunnel.addr().to_string(),
                server_name: SERVER_NAME.into(),
                ca_file: Some(ca),
            }],
            docker: {
                let mut d = DockerConfig {
                    network: format!("warren-test-{run}"),
                    default_image: "warren/session:mini".into(),
                    default_memory_mb: 128,
                    pids_limit: 256,
                    ..Default::default()
                };
                tweak(&mut d);
                d
            },
            terminal: TerminalConfig {
                detached_timeout_secs: 300,
                ..Default::default()
            },
        };
        let mut s = Stack {
            run,
            registry: tunnel.registry().clone(),
            tunnel,
            cfg,
            agent: None,
            agent_stop: CancellationToken::new(),
            agent_tasks: TaskTracker::new(),
            data_dir,
        };
        s.start_agent().await;
        s
    }

    pub fn network(&self) -> String {
        self.cfg.docker.network.clone()
    }

    /// The agent's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.cfg.data_dir.clone()
    }

    pub fn node(&self) -> &str {
        &self.cfg.node_id
    }

    pub fn agent(&self) -> &Arc<Agent> {
        self.agent.as_ref().expect("agent running")
    }

    pub async fn start_agent(&mut self) {
        let stop = CancellationToken::new();
        let mut labels = BTreeMap::new();
        labels.insert(TEST_LABEL.to_string(), self.run.clone());
        let agent = Agent::start(
            &self.cfg,
            AgentOptions {
                extra_labels: labels,
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let tasks = TaskTracker::new();
        agent
            .connect_relays(&self.cfg, fast_backoff(), &tasks)
            .unwrap();
        self.tunnel.registered(&self.cfg.node_id).await;
        self.agent = Some(agent);
        self.agent_stop = stop;
        self.agent_tasks = tasks;
    }

    /// Stops the agent process-equivalent: its tunnel and tasks end, its
    /// containers keep running.
    pub async fn stop_agent(&mut self) {
        self.agent_stop.cancel();
        self.agent_tasks.close();
        tokio::time::timeout(WAIT, self.agent_tasks.wait())
            .await
            .expect("agent tasks did not stop");
        self.agent = None;
        let node = self.cfg.node_id.clone();
        assert!(self.registry.wait_until(WAIT, |n| !n.contains(&node)).await);
    }

    pub async fn session(&self, image: &str, memory_mb: u64) -> SessionInfo {
        let id = format!("s{}", random_suffix());
        self.agent()
            .create_session(&SessionSpec {
                id,
                image: Some(image.into()),
                memory_mb: Some(memory_mb),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    pub async fn stream(
        &self,
        session: &str,
        kind: StreamKind,
    ) -> Result<TunnelStream, warren_tunnel::server::OpenError> {
        let h = StreamHeader {
            session: session.into(),
            kind,
            request_id: format!("r{}", random_suffix()),
            client_addr: None,
        };
        self.registry.open_stream(self.node(), &h).await
    }

    pub async fn terminal(&self, session: &str, query: &str) -> Term {
        let s = self.stream(session, StreamKind::Terminal).await.unwrap();
        let url = format!("ws://{session}.warren.localhost/_warren/terminal?{query}");
        let (ws, _) = tokio_tungstenite::client_async(url, s).await.unwrap();
        warren_testkit::Term::new(ws).await
    }

    /// An HTTP server on an ordinary (non-internal) Docker network of this
    /// test's own, checked reachable from the host; returns `ip:port`.
    pub async fn outside_server(&self) -> String {
        let label = format!("{TEST_LABEL}={}", self.run);
        let net = format!("warren-test-out-{}", self.run);
        docker(&["network", "create", "--label", &label, &net]);
        let id = docker(&[
            "run",
            "-d",
            "--label",
            &label,
            "--network",
            &net,
            "warren/session:mini",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ]);
        let ip = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &id,
        ]);
        let addr = format!("{ip}:8080");
        warren_testkit::until(
            "the outside server coming up",
            WAIT,
            Duration::from_millis(50),
            || async { tokio::net::TcpStream::connect(&addr).await.is_ok() },
        )
        .await;
        addr
    }

    pub fn containers(&self) -> Vec<String> {
        warren_testkit::labelled_containers(&format!("{TEST_LABEL}={}", self.run))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The tunnel stops when its field drops, after this.
        self.agent_stop.cancel();
        warren_testkit::remove_labelled(
            &format!("{TEST_LABEL}={}", self.run),
            &[&self.cfg.docker.network],
        );
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Runs the docker CLI, which must succeed; its trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let o = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn random_suffix() -> String {
    warren_testkit::unique_suffix()
}

pub type Term = warren_testkit::Term<TunnelStream>;
