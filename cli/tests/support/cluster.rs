//! A whole cluster as processes on loopback, for the cluster tests: control
//! replicas on a fresh PostgreSQL database, relays and workers, each its
//! own `warren` process with its own config, as deployed.
#![allow(clippy::unwrap_used)]

use crate::common::{self, free_tcp, free_udp};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use warren_testkit::{TestRun, until};

pub const ADMIN: &str = "cluster-admin-key-0123456789abcdef";
pub const RELAY_SECRET: &str = "cluster-relay-secret-0123456789";
pub const WAIT: Duration = warren_testkit::WAIT;
/// How often a wait checks again.
pub const EVERY: Duration = Duration::from_millis(100);

/// Control's certificate for 127.0.0.1, made once per test process.
pub fn control_cert() -> &'static (String, String) {
    static CERT: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    CERT.get_or_init(|| warren_tunnel::tls::self_signed(&["127.0.0.1", "localhost"]).unwrap())
}

/// An HTTP client that trusts control's certificate.
pub fn http() -> &'static reqwest::Client {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(control_cert().0.as_bytes()).unwrap(),
            )
            .build()
            .unwrap()
    })
}

/// A page's text (metrics).
pub async fn text(url: &str) -> String {
    http().get(url).send().await.unwrap().text().await.unwrap()
}

/// One control API call over HTTPS: its status and JSON body.
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    common::call_with(http(), base, method, path, key, body).await
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One part as a process; SIGKILLed when dropped.
pub struct Proc {
    pub name: &'static str,
    pub child: Option<tokio::process::Child>,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut tokio::process::Command) -> Proc {
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name,
            child: Some(child),
        }
    }

    pub fn warren(name: &'static str, args: &[&str], config: &Path) -> Proc {
        Proc::spawn(
            name,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(args)
                .arg("--config")
                .arg(config),
        )
    }

    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// SIGTERM (a graceful stop); returns at once, the process exits on its
    /// own (waited for when dropped or by [`Proc::wait`]).
    pub fn term(&mut self) {
        if let Some(id) = self.child.as_ref().and_then(|c| c.id()) {
            std::process::Command::new("kill")
                .args(["-TERM", &id.to_string()])
                .status()
                .unwrap();
        }
    }

    /// Waits for the process to exit; its status.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let st = tokio::time::timeout(WAIT, c.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit", self.name))
            .unwrap();
        self.child = None;
        st
    }

    /// Fails the test if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            panic!("{} exited: {st}", self.name);
        }
    }
}

pub async fn accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// A terminal through a relay's plain-HTTP port answers `echo`.
pub async fn answers(relay_http: u16, session: &str, token: &str) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", relay_http))
        .await
        .map_err(|e| e.to_string())?;
    let url =
        format!("ws://{session}.warren.localhost:{relay_http}/_warren/terminal?token={token}");
    let (ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut t = warren_testkit::Term::new(ws).await;
    t.send("echo alive-$((20+22))").await;
    t.expect_within("alive-42", Duration::from_secs(20)).await;
    Ok(())
}

/// Prometheus's `up` per `job/instance`.
pub async fn prometheus_up(port: u16) -> Vec<(String, String, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/query?query=up")).await;
    let Ok(r) = r else { return Vec::new() };
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["metric"]["job"].as_str().unwrap_or("").to_string(),
                s["metric"]["instance"].as_str().unwrap_or("").to_string(),
                s["value"][1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

pub struct RelayPorts {
    pub https: u16,
    pub http: u16,
    pub admin: u16,
    pub tunnel: u16,
    pub config: PathBuf,
}

/// The parts, as processes on loopback.
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<String>,
    pub control_ports: Vec<u16>,
    pub control_urls: Vec<String>,
    pub controls: Vec<Proc>,
    pub relay_ports: Vec<RelayPorts>,
    pub relays: Vec<Proc>,
    pub agents: Vec<Proc>,
    pub agent_metrics: Vec<String>,
    /// Its directory, database, workers' containers and networks (removed
    /// last, after every process was killed).
    pub _run: TestRun,
}

impl Cluster {
    /// `controls` replicas on a fresh PostgreSQL database, `relays` relays
    /// and `workers` agents joined with tokens; returns once every worker
    /// is ready. `None` (outside CI) without PostgreSQL.
    pub async fn start(
        name: &str,
        controls: usize,
        relays: usize,
        workers: usize,
        token_ttl_secs: u64,
    ) -> Option<Cluster> {
        Self::start_with(name, controls, relays, workers, token_ttl_secs, "", "").await
    }

    /// [`Cluster::start`], with `control_tables` (TOML tables such as
    /// `[[pools]]`) added to every control replica's config and
    /// `scheduler` lines to its `[scheduler]`.
    pub async fn start_with(
        name: &str,
        controls: usize,
        relays: usize,
        workers: usize,
        token_ttl_secs: u64,
        scheduler: &str,
        control_tables: &str,
    ) -> Option<Cluster> {
        let pg = warren_testkit::postgres_or_skip()?;
        let pid = std::process::id();
        let mut run = TestRun::new(name);
        let dir = run.dir.clone();
        let nodes: Vec<String> = (0..workers).map(|i| format!("{name}{i}n{pid}")).collect();
        let networks: Vec<String> = (0..workers)
            .map(|i| format!("{}-{i}", run.network))
            .collect();
        // A database of its own.
        let db = format!("warren_{name}_{pid}");
        let (pg_drop, db_drop) = (pg.clone(), db.clone());
        run.on_drop(move || {
            let _ = std::process::Command::new("psql")
                .arg(pg_drop)
                .args([
                    "-q",
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {db_drop} WITH (FORCE)"),
                ])
                .output();
        });
        for (n, net) in nodes.iter().zip(&networks) {
            run.also_remove(format!("warren.node={n}"), &[net]);
        }
        let out = std::process::Command::new("psql")
            .arg(&pg)
            .args(["-q", "-c", &format!("CREATE DATABASE {db}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let (prefix, _) = pg.rsplit_once('/').unwrap();
        let db_url = format!("{prefix}/{db}");

        // Ports, so every config names every part.
        let control_ports: Vec<u16> = (0..controls).map(|_| free_tcp()).collect();
        let control_urls: Vec<String> = control_ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect();
        let (cert, key) = control_cert();
        let (cert_file, key_file, ca_file) = (
            dir.join("control-cert.pem"),
            dir.join("control-key.pem"),
            dir.join("control-ca.pem"),
        );
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        std::fs::write(&ca_file, cert).unwrap();
        let all_controls = control_urls.join(",");
        let relay_ports: Vec<RelayPorts> = (0..relays)
            .map(|r| RelayPorts {
                https: free_tcp(),
                http: free_tcp(),
                admin: free_tcp(),
                tunnel: free_udp(),
                config: dir.join(format!("relay-{r}.toml")),
            })
            .collect();

        // Control replicas. A worker silent 3 s is unreachable, 8 s later
        // lost: short, so that a dead worker's sessions are lost within 15 s.
        let relay_list: String = relay_ports
            .iter()
            .enumerate()
            .map(|(r, p)| {
                format!(
                    "[[relays]]\naddr = \"127.0.0.1:{}\"\nserver_name = \"warren.localhost\"\nca_file = \"{}\"\n",
                    p.tunnel,
                    dir.join(format!("relay-{r}/ca.pem")).display()
                )
            })
            .collect();
        let mut control_procs = Vec::new();
        for (i, port) in control_ports.iter().enumerate() {
            let file = dir.join(format!("control-{i}.toml"));
            std::fs::write(
                &file,
                format!(
                    r#"listen = "127.0.0.1:{port}"
data_dir = "{data}"
database_url = "{db_url}"
domain = "warren.localhost"
https_port = {https}
admin_api_key = "{ADMIN}"
relay_secret = "{RELAY_SECRET}"
control_urls = [{urls}]
{relay_list}
{control_tables}
[scheduler]
heartbeat_timeout_secs = 3
node_lost_grace_secs = 8
{scheduler}

[sessions]
image = "warren/session:mini"
memory_mb = 64
token_ttl_secs = {token_ttl_secs}

[tls]
cert_file = "{cert_file}"
key_file = "{key_file}"
"#,
                    cert_file = cert_file.display(),
                    key_file = key_file.display(),
                    data = dir.join(format!("control-{i}")).display(),
                    https = relay_ports[0].https,
                    urls = control_urls
                        .iter()
                        .map(|u| format!("\"{u}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            )
            .unwrap();
            control_procs.push(Proc::warren("control", &["control"], &file));
            // One at a time: the first runs the migrations.
            until("control replica answering", WAIT, EVERY, || accepts(*port)).await;
        }

        // Relays, each with every replica for routes, node checks and keys.
        let jwks: Vec<String> = control_urls
            .iter()
            .map(|u| format!("{u}/.well-known/jwks.json"))
            .collect();
        let mut relay_procs = Vec::new();
        for (r, p) in relay_ports.iter().enumerate() {
            std::fs::write(
                &p.config,
                format!(
                    r#"domain = "warren.localhost"
data_dir = "{data}"
control_upstream = "127.0.0.1:{api}"
[https]
listen = "127.0.0.1:{https}"
[http]
listen = "127.0.0.1:{http}"
[admin]
listen = "127.0.0.1:{admin}"
[tunnel]
listen = "127.0.0.1:{tunnel}"
node_secret = "{RELAY_SECRET}"
[auth]
jwks_url = "{jwks}"
[control]
url = "{all_controls}"
secret = "{RELAY_SECRET}"
ca_file = "{ca}"
"#,
                    api = control_ports[0],
                    ca = ca_file.display(),
                    data = dir.join(format!("relay-{r}")).display(),
                    https = p.https,
                    http = p.http,
                    admin = p.admin,
                    tunnel = p.tunnel,
                    jwks = jwks.join(","),
                ),
            )
            .unwrap();
            relay_procs.push(Proc::warren("relay", &["relay"], &p.config));
            until("relay answering", WAIT, EVERY, || accepts(p.http)).await;
        }

        // Workers, joined with a token each, given every control URL.
        let init = std::fs::canonicalize(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/x86_64-unknown-linux-gnu/release/warren-init"
        ))
        .expect("the static warren-init (scripts/build-init.sh)");
        let mut agent_procs = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let (s, t) = call(
                &control_urls[0],
                "POST",
                "/v1/nodes/join-tokens",
                ADMIN,
                Some(json!({})),
            )
            .await;
            assert_eq!(s, 201, "{t}");
            let file = dir.join(format!("agent-{i}.toml"));
            std::fs::write(
                &file,
                format!(
                    r#"control_url = "{all_controls}"
control_ca_file = "{ca}"
node_id = "{node}"
data_dir = "{data}"
memory_mb = 1024

[docker]
init_binary = "{init}"
network = "{net}"
default_image = "warren/session:mini"
default_disk_mb = 0

[admin]
listen = "127.0.0.1:0"
"#,
                    data = dir.join(format!("agent-{i}")).display(),
                    ca = ca_file.display(),
                    init = init.display(),
                    net = networks[i],
                ),
            )
            .unwrap();
            agent_procs.push(Proc::spawn(
                "agent",
                tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
                    .args(["agent", "--config"])
                    .arg(&file)
                    .args(["--join", t["token"].as_str().unwrap()]),
            ));
        }
        let base = control_urls[0].clone();
        until(
            "every worker ready with its metrics address",
            WAIT,
            EVERY,
            || {
                let base = base.clone();
                async move {
                    let n = nodes_seen(&base).await;
                    n.len() == workers
                        && n.iter().all(|n| {
                            n["state"] == "ready"
                                && n["metrics_addr"].as_str().is_some_and(|a| !a.is_empty())
                        })
                }
            },
        )
        .await;
        let node_list = nodes_seen(&base).await;
        let agent_metrics = nodes
            .iter()
            .map(|node| {
                node_list
                    .iter()
                    .find(|n| n["id"] == *node)
                    .and_then(|n| n["metrics_addr"].as_str())
                    .unwrap()
                    .to_string()
            })
            .collect();
        Some(Cluster {
            dir,
            nodes,
            control_ports,
            control_urls,
            controls: control_procs,
            relay_ports,
            relays: relay_procs,
            agents: agent_procs,
            agent_metrics,
            _run: run,
        })
    }

    pub async fn create_session(&self, control: usize) -> Value {
        let (s, v) = call(
            &self.control_urls[control],
            "POST",
            "/v1/sessions",
            ADMIN,
            Some(json!({})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        v
    }

    pub async fn status(&self, control: usize, id: &str) -> String {
        let (s, v) = call(
            &self.control_urls[control],
            "GET",
            &format!("/v1/sessions/{id}"),
            ADMIN,
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        v["status"].as_str().unwrap().to_string()
    }

    /// Stops agent `i` gracefully (SIGTERM: its terminals are told 1001)
    /// and starts it again with its config (it re-enrols from its data dir
    /// and adopts its sessions).
    pub async fn restart_agent(&mut self, i: usize) {
        self.agents[i].term();
        let st = self.agents[i].wait().await;
        assert!(st.success(), "the agent exited with {st}");
        let file = self.dir.join(format!("agent-{i}.toml"));
        self.agents[i] = Proc::spawn(
            "agent",
            tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(["agent", "--config"])
                .arg(&file),
        );
    }

    /// SIGKILLs relay `r` and starts it again at once (same config, data
    /// dir and ports); returns when it accepts again.
    pub async fn restart_relay(&mut self, r: usize) {
        self.relays[r].kill().await;
        self.relays[r] = Proc::warren("relay", &["relay"], &self.relay_ports[r].config);
        let port = self.relay_ports[r].http;
        until("relay answering again", WAIT, EVERY, || accepts(port)).await;
    }
}

pub async fn nodes_seen(base: &str) -> Vec<Value> {
    let (s, v) = call(base, "GET", "/v1/nodes", ADMIN, None).await;
    assert_eq!(s, 200, "{v}");
    v["nodes"].as_array().cloned().unwrap_or_default()
}

/// One address in front of several relays: each connection goes to the
/// first that accepts. Returns its port.
pub async fn one_name(relays: Vec<u16>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            let relays = relays.clone();
            tokio::spawn(async move {
                for r in relays {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", r)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                        return;
                    }
                }
            });
        }
    });
    port
}
