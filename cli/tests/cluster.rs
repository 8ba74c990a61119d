//! An operator's cluster on one machine, every part its own process as
//! deployed: two control replicas on one PostgreSQL database, two relays,
//! two workers (`warren agent --config`, given both control URLs), and a
//! real Prometheus (Debian's package) scraping all six.
//!
//! Control serves its API over TLS (a private CA): relays, agents,
//! Prometheus and the test itself trust it through their CA settings.
//!
//! Then a control replica, a relay and a worker are killed in turn
//! (SIGKILL). No running session is lost except the dead worker's (lost
//! within 15 s), terminals keep answering, new sessions land on the
//! survivor, and Prometheus sees exactly the surviving parts up.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // uses part of the module
mod common;
use common::{free_tcp, free_udp};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren_testkit::{TestRun, until, until_ok};

const ADMIN: &str = "cluster-admin-key-0123456789abcdef";
const RELAY_SECRET: &str = "cluster-relay-secret-0123456789";
const WAIT: Duration = warren_testkit::WAIT;
/// How often a wait checks again.
const EVERY: Duration = Duration::from_millis(100);

/// Control's certificate for 127.0.0.1, made once per test process.
fn control_cert() -> &'static (String, String) {
    static CERT: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    CERT.get_or_init(|| warren_tunnel::tls::self_signed(&["127.0.0.1", "localhost"]).unwrap())
}

/// An HTTP client that trusts control's certificate.
fn http() -> &'static reqwest::Client {
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
async fn text(url: &str) -> String {
    http().get(url).send().await.unwrap().text().await.unwrap()
}

/// One control API call over HTTPS: its status and JSON body.
async fn call(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    common::call_with(http(), base, method, path, key, body).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One part as a process; SIGKILLed when dropped.
struct Proc {
    name: &'static str,
    child: Option<tokio::process::Child>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut tokio::process::Command) -> Proc {
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

    fn warren(name: &'static str, args: &[&str], config: &Path) -> Proc {
        Proc::spawn(
            name,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(args)
                .arg("--config")
                .arg(config),
        )
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// SIGTERM (a graceful stop); returns at once, the process exits on its
    /// own (waited for when dropped or by [`Proc::wait`]).
    fn term(&mut self) {
        if let Some(id) = self.child.as_ref().and_then(|c| c.id()) {
            std::process::Command::new("kill")
                .args(["-TERM", &id.to_string()])
                .status()
                .unwrap();
        }
    }

    /// Waits for the process to exit; its status.
    async fn wait(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let st = tokio::time::timeout(WAIT, c.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit", self.name))
            .unwrap();
        self.child = None;
        st
    }

    /// Fails the test if the process has exited.
    fn assert_alive(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            panic!("{} exited: {st}", self.name);
        }
    }
}

async fn accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// A terminal through a relay's plain-HTTP port answers `echo`.
async fn answers(relay_http: u16, session: &str, token: &str) -> Result<(), String> {
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
async fn prometheus_up(port: u16) -> Vec<(String, String, String)> {
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

struct RelayPorts {
    https: u16,
    http: u16,
    admin: u16,
    tunnel: u16,
    config: PathBuf,
}

/// The parts, as processes on loopback.
struct Cluster {
    dir: PathBuf,
    nodes: Vec<String>,
    control_ports: Vec<u16>,
    control_urls: Vec<String>,
    controls: Vec<Proc>,
    relay_ports: Vec<RelayPorts>,
    relays: Vec<Proc>,
    agents: Vec<Proc>,
    agent_metrics: Vec<String>,
    /// Its directory, database, workers' containers and networks (removed
    /// last, after every process was killed).
    _run: TestRun,
}

impl Cluster {
    /// `controls` replicas on a fresh PostgreSQL database, `relays` relays
    /// and `workers` agents joined with tokens; returns once every worker
    /// is ready. `None` (outside CI) without PostgreSQL.
    async fn start(
        name: &str,
        controls: usize,
        relays: usize,
        workers: usize,
        token_ttl_secs: u64,
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
[scheduler]
heartbeat_timeout_secs = 3
node_lost_grace_secs = 8

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

    async fn create_session(&self, control: usize) -> Value {
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

    async fn status(&self, control: usize, id: &str) -> String {
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
    async fn restart_agent(&mut self, i: usize) {
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
    async fn restart_relay(&mut self, r: usize) {
        self.relays[r].kill().await;
        self.relays[r] = Proc::warren("relay", &["relay"], &self.relay_ports[r].config);
        let port = self.relay_ports[r].http;
        until("relay answering again", WAIT, EVERY, || accepts(port)).await;
    }
}

async fn nodes_seen(base: &str) -> Vec<Value> {
    let (s, v) = call(base, "GET", "/v1/nodes", ADMIN, None).await;
    assert_eq!(s, 200, "{v}");
    v["nodes"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_survives_losing_a_control_replica_a_relay_and_a_worker() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let Some(prometheus) = warren_testkit::prometheus_or_skip() else {
        return;
    };
    let Some(mut c) = Cluster::start("cluster", 2, 2, 2, 600).await else {
        return;
    };

    // Control speaks only TLS: a plain-HTTP request gets no API answer.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/v1/nodes", c.control_ports[0])).await;
    assert!(
        plain.is_err(),
        "control answered plain HTTP: {:?}",
        plain.map(|r| r.status())
    );
    // `api.<domain>` on a relay reaches control over TLS (it would get
    // nothing over plain HTTP), trusting control's CA.
    let api = reqwest::Client::builder()
        .resolve(
            "api.warren.localhost",
            std::net::SocketAddr::from(([127, 0, 0, 1], c.relay_ports[0].http)),
        )
        .build()
        .unwrap()
        .get(format!(
            "http://api.warren.localhost:{}/healthz",
            c.relay_ports[0].http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 200, "api.<domain> to TLS control");
    assert_eq!(api.text().await.unwrap(), "ok\n");

    // Prometheus, scraping every part each second.
    let prom_port = free_tcp();
    let target = |a: &str| format!("\"{a}\"");
    let prom_cfg = c.dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: control\n    scheme: https\n    tls_config:\n      ca_file: {}\n    static_configs:\n      - targets: [{}, {}]\n  - job_name: relay\n    static_configs:\n      - targets: [{}, {}]\n  - job_name: agent\n    static_configs:\n      - targets: [{}, {}]\n",
            c.dir.join("control-ca.pem").display(),
            target(&format!("127.0.0.1:{}", c.control_ports[0])),
            target(&format!("127.0.0.1:{}", c.control_ports[1])),
            target(&format!("127.0.0.1:{}", c.relay_ports[0].admin)),
            target(&format!("127.0.0.1:{}", c.relay_ports[1].admin)),
            target(&c.agent_metrics[0]),
            target(&c.agent_metrics[1]),
        ),
    )
    .unwrap();
    let _prom = Proc::spawn(
        "prometheus",
        tokio::process::Command::new(&prometheus)
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                c.dir.join("prom").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stderr(Stdio::null()),
    );
    until("Prometheus sees all six parts up", WAIT, EVERY, || async {
        let up = prometheus_up(prom_port).await;
        up.len() == 6 && up.iter().all(|(_, _, v)| v == "1")
    })
    .await;
    // And Warren's own series from each kind of part.
    let series = reqwest::get(format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query=count%20by%20(job)%20(%7B__name__%3D~%22warren_.%2B%22%7D)"
    ))
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap();
    let jobs: Vec<&str> = series["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["metric"]["job"].as_str())
        .collect();
    for job in ["control", "relay", "agent"] {
        assert!(
            jobs.contains(&job),
            "no warren_* series from {job}: {series}"
        );
    }

    // One session on each worker (spread).
    let sessions = [c.create_session(0).await, c.create_session(0).await];
    let on: Vec<String> = sessions
        .iter()
        .map(|s| s["node"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(on[0], on[1], "spread put both sessions on one worker");
    let sid = |i: usize| sessions[i]["id"].as_str().unwrap().to_string();
    let token = |i: usize| sessions[i]["token"].as_str().unwrap().to_string();
    for i in 0..2 {
        for r in &c.relay_ports {
            answers(r.http, &sid(i), &token(i)).await.unwrap();
        }
    }

    // 1. Control replica A dies: workers heartbeat through B, nothing is lost.
    let killed_at = now_ms();
    let t0 = Instant::now();
    c.controls[0].kill().await;
    let b = c.control_urls[1].clone();
    until(
        "both workers heartbeating through replica B",
        WAIT,
        EVERY,
        || {
            let b = b.clone();
            async move {
                let n = nodes_seen(&b).await;
                n.len() == 2
                    && n.iter().all(|n| {
                        n["last_heartbeat_ms"]
                            .as_i64()
                            .is_some_and(|t| t > killed_at)
                    })
            }
        },
    )
    .await;
    let failover = t0.elapsed();
    for i in 0..2 {
        assert_eq!(c.status(1, &sid(i)).await, "running");
        answers(c.relay_ports[0].http, &sid(i), &token(i))
            .await
            .unwrap();
    }
    let nodes_now = nodes_seen(&b).await;
    assert!(
        nodes_now.iter().all(|n| n["state"] == "ready"),
        "{nodes_now:?}"
    );
    eprintln!(
        "control replica SIGKILLed → both workers heartbeating through the other: {} ms",
        failover.as_millis()
    );

    // 2. Relay 2 dies: terminals answer through relay 1.
    c.relays[1].kill().await;
    for i in 0..2 {
        answers(c.relay_ports[0].http, &sid(i), &token(i))
            .await
            .unwrap();
        assert_eq!(c.status(1, &sid(i)).await, "running");
    }

    // 3. Worker B dies (agent and containers): its session is lost within
    //    15 s, the other keeps running, new sessions land on the survivor.
    let dead_idx = c.nodes.iter().position(|n| *n == on[1]).unwrap();
    let t0 = Instant::now();
    c.agents[dead_idx].kill().await;
    warren_testkit::remove_labelled(&format!("warren.node={}", on[1]), &[]);
    let dead_session = sid(1);
    {
        let c = &c;
        until(
            "the dead worker's session lost",
            Duration::from_secs(15),
            EVERY,
            || {
                let id = dead_session.clone();
                async move { c.status(1, &id).await == "lost" }
            },
        )
        .await;
    }
    eprintln!(
        "worker killed → its session lost: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(c.status(1, &sid(0)).await, "running");
    answers(c.relay_ports[0].http, &sid(0), &token(0))
        .await
        .unwrap();
    let v = c.create_session(1).await;
    assert_eq!(v["node"], on[0], "a new session went to the dead worker");
    answers(
        c.relay_ports[0].http,
        v["id"].as_str().unwrap(),
        v["token"].as_str().unwrap(),
    )
    .await
    .unwrap();

    // Prometheus: the survivors up, the dead down.
    let alive = [
        format!("127.0.0.1:{}", c.control_ports[1]),
        format!("127.0.0.1:{}", c.relay_ports[0].admin),
        c.agent_metrics[1 - dead_idx].clone(),
    ];
    until(
        "Prometheus sees exactly the survivors up",
        WAIT,
        EVERY,
        || async {
            let up = prometheus_up(prom_port).await;
            up.len() == 6
                && up
                    .iter()
                    .all(|(_, inst, v)| (v == "1") == alive.contains(inst))
        },
    )
    .await;
    // The Grafana dashboard names only series the parts export (after
    // the traffic above, so that every labelled series has appeared).
    let mut exported = text(&format!("https://127.0.0.1:{}/metrics", c.control_ports[1])).await;
    exported += &text(&format!(
        "http://127.0.0.1:{}/metrics",
        c.relay_ports[0].admin
    ))
    .await;
    exported += &text(&format!("http://{}/metrics", c.agent_metrics[1 - dead_idx])).await;
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/warren.json"),
    )
    .unwrap();
    let _: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut named = 0;
    for (i, _) in dashboard.match_indices("warren_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        named += 1;
        assert!(
            exported
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard names {name}, which no part exports"
        );
    }
    assert!(named > 10, "the dashboard names {named} series");
    c.controls[1].assert_alive();
    c.relays[0].assert_alive();
    c.agents[1 - dead_idx].assert_alive();
}

/// Chromium on a session's page through a relay process: text typed into
/// `cat > file` at 25 keys a second while the relay is SIGKILLed reaches
/// the file exactly (no key lost, none twice); then a numbered line
/// printed every 250 ms: the relay is SIGKILLed and restarted at once,
/// then again after the page's 10-second token has expired. The page
/// resumes both times (renewing its token the second time, through
/// control), shows every line exactly once, and the same shell answers
/// typing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_tab_survives_relay_crashes_and_its_token_expiring() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let Some(c) = Cluster::start("tab", 1, 1, 1, 10).await else {
        return;
    };
    let s = c.create_session(0).await;
    let id = s["id"].as_str().unwrap().to_string();
    let expires = s["token_expires_at"].as_i64().unwrap();
    let http = c.relay_ports[0].http;
    let url = format!(
        "http://{id}.warren.localhost:{http}/?token={}",
        s["token"].as_str().unwrap()
    );

    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    let restarts = {
        let c = c.clone();
        serve_kills(3, move || {
            let c = c.clone();
            async move { c.lock().await.restart_relay(0).await }
        })
        .await
    };
    let out = browser(&[
        &url,
        &restarts.0,
        &expires.to_string(),
        "browser-relay-crash.png",
        "twice",
        "typing",
    ])
    .await;
    eprintln!("{out}");
    assert_eq!(
        restarts.1.await.unwrap(),
        3,
        "the relay was not killed three times"
    );
}

/// Chromium typing into `cat > file` while the session's agent restarts
/// (SIGTERM, then started again: it adopts the running session): the file
/// holds exactly what was typed; then lines printed across a second agent
/// restart show once each, from the same shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_tab_types_through_agent_restarts() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let Some(c) = Cluster::start("agentre", 1, 1, 1, 600).await else {
        return;
    };
    let s = c.create_session(0).await;
    let id = s["id"].as_str().unwrap().to_string();
    let http = c.relay_ports[0].http;
    let url = format!(
        "http://{id}.warren.localhost:{http}/?token={}",
        s["token"].as_str().unwrap()
    );
    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    let restarts = {
        let c = c.clone();
        serve_kills(2, move || {
            let c = c.clone();
            async move { c.lock().await.restart_agent(0).await }
        })
        .await
    };
    let out = browser(&[
        &url,
        &restarts.0,
        "0",
        "browser-agent-restart.png",
        "once",
        "typing",
    ])
    .await;
    eprintln!("{out}");
    assert_eq!(restarts.1.await.unwrap(), 2);
}

/// Two relays behind one name (a forwarder that picks the first relay
/// accepting connections, as a load balancer would): Chromium types into
/// `cat > file` through relay 1 when it is stopped gracefully (SIGTERM).
/// The page is told (close 1001 as the relay drains), reconnects at once
/// through relay 2, and the file holds exactly what was typed. Then relay 1
/// is back and relay 2 drains: the shell's lines show once each, from the
/// same PID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_tab_moves_to_the_other_relay_when_its_relay_drains() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let Some(c) = Cluster::start("drain", 1, 2, 1, 600).await else {
        return;
    };
    let name = one_name(vec![c.relay_ports[0].http, c.relay_ports[1].http]).await;
    let s = c.create_session(0).await;
    let id = s["id"].as_str().unwrap().to_string();
    let url = format!(
        "http://{id}.warren.localhost:{name}/?token={}",
        s["token"].as_str().unwrap()
    );
    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    // First relay 0 drains (the page types through it); then relay 0 is
    // back and relay 1 drains (the page's lines go on through relay 0).
    let round = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let token = s["token"].as_str().unwrap().to_string();
    let stops = {
        let c = c.clone();
        serve_kills(2, move || {
            let (c, round, id, token) = (c.clone(), round.clone(), id.clone(), token.clone());
            async move {
                let mut c = c.lock().await;
                if round.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    c.relays[0].term();
                    let st = c.relays[0].wait().await;
                    assert!(st.success(), "the drained relay exited with {st}");
                } else {
                    let config = c.relay_ports[0].config.clone();
                    c.relays[0] = Proc::warren("relay", &["relay"], &config);
                    let port = c.relay_ports[0].http;
                    until("relay 0 answering again", WAIT, EVERY, || accepts(port)).await;
                    // And reaching the session (the worker's tunnel to it is
                    // back) before the other relay drains.
                    until_ok("relay 0 reaching the session", WAIT, EVERY, || {
                        answers(port, &id, &token)
                    })
                    .await;
                    c.relays[1].term();
                    let st = c.relays[1].wait().await;
                    assert!(st.success(), "the drained relay exited with {st}");
                }
            }
        })
        .await
    };
    let out = browser(&[
        &url,
        &stops.0,
        "0",
        "browser-relay-drain.png",
        "once",
        "typing",
    ])
    .await;
    eprintln!("{out}");
    assert_eq!(stops.1.await.unwrap(), 2);
}

/// Answers `n` requests on a local port, running `action` before each
/// answer: the browser script's way to ask for a relay crash. Returns the
/// URL and a task counting the requests served.
async fn serve_kills<F, Fut>(n: usize, action: F) -> (String, tokio::task::JoinHandle<usize>)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/kill", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut done = 0;
        while done < n {
            let Ok((mut sock, _)) = l.accept().await else {
                break;
            };
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            action().await;
            done += 1;
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone")
                .await;
        }
        done
    });
    (url, task)
}

/// One address in front of several relays: each connection goes to the
/// first that accepts. Returns its port.
async fn one_name(relays: Vec<u16>) -> u16 {
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

/// Runs `web/e2e/relaykill.mjs` with `args` (URL, kill URL, token expiry,
/// screenshot file name, [`once`]); fails the test unless it passes. Its
/// report.
async fn browser(args: &[&str]) -> String {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (web, shot) = browser_dirs(&args[3]);
    args[3] = shot.display().to_string();
    let out = tokio::process::Command::new("node")
        .arg("e2e/relaykill.mjs")
        .args(&args)
        .current_dir(&web)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The web package's directory (its npm packages are installed by the
/// relay's build) and where the screenshot goes.
fn browser_dirs(name: &str) -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    (root.join("web"), artifacts.join(name))
}
