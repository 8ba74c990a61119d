//! The whole stack in one process: control (SQLite), a relay and a local
//! agent, wired as they are in production (the agent joins with a one-time
//! token from control's API and runs as `warren agent` does; the relay asks
//! control for routes, node credentials and keys). Used by `warren up` and
//! by the end-to-end tests.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;
use warren_agent::{Agent, AgentOptions, RunOptions};
use warren_config::*;

pub struct StackOptions {
    pub data_dir: PathBuf,
    pub domain: String,
    /// Previews on a domain of their own (another site).
    pub preview_domain: Option<String>,
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub api: SocketAddr,
    pub tunnel: SocketAddr,
    /// SSH listen address (`None`: no SSH).
    pub ssh: Option<SocketAddr>,
    pub memory_mb: Option<u64>,
    pub image: String,
    pub network: String,
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    pub session_memory_mb: u64,
    /// Lets the agent run host-root (Docker-in-Docker) sessions.
    pub allow_host_root_sessions: bool,
    /// Record every terminal (control's `sessions.record_terminals`).
    pub record_terminals: bool,
    /// Warm pools (control's `[[pools]]`).
    pub pools: Vec<warren_config::PoolConfig>,
}

impl StackOptions {
    /// Everything on `127.0.0.1:0` for tests and benchmarks: its own data
    /// dir, Docker network and node id (agents adopt every container with
    /// their node id, so runs side by side must differ), containers
    /// labelled `label=run`.
    pub fn loopback(
        label: &str,
        run: &str,
        image: &str,
        memory_mb: u64,
        session_memory_mb: u64,
    ) -> Self {
        let lo: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut labels = BTreeMap::new();
        labels.insert(label.to_string(), run.to_string());
        StackOptions {
            data_dir: std::env::temp_dir().join(format!("warren-{run}")),
            domain: "warren.localhost".into(),
            preview_domain: None,
            https: lo,
            http: Some(lo),
            api: lo,
            tunnel: lo,
            ssh: Some(lo),
            memory_mb: Some(memory_mb),
            image: image.into(),
            network: format!("warren-test-{run}"),
            node_id: format!("n{}", run.replace('_', "-")),
            labels,
            session_memory_mb,
            allow_host_root_sessions: false,
            record_terminals: true,
            pools: Vec::new(),
        }
    }
}

pub struct Stack {
    pub control_url: String,
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub ssh: Option<SocketAddr>,
    pub admin_key: String,
    pub ca_file: PathBuf,
    pub control: warren_control::Running,
    /// How control was configured (tests restart it with the same).
    pub control_config: ControlConfig,
    pub relay: warren_relay::Relay,
    pub agent: Arc<Agent>,
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
}

fn secret_file(path: &std::path::Path, prefix: &str) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_string());
    }
    let s = warren_control::store::random_secret(prefix);
    warren_config::write_private(path, s.as_bytes())?;
    Ok(s)
}

pub async fn start(o: StackOptions) -> anyhow::Result<Stack> {
    let data = std::path::absolute(&o.data_dir)?;
    std::fs::create_dir_all(&data)?;
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Sockets first, so every part knows every real address.
    let api = tokio::net::TcpListener::bind(o.api)
        .await
        .with_context(|| format!("binding the API on {}", o.api))?;
    let api_addr = api.local_addr()?;
    let https = std::net::TcpListener::bind(o.https)
        .with_context(|| format!("binding HTTPS on {}", o.https))?;
    let http = o
        .http
        .map(|a| std::net::TcpListener::bind(a).with_context(|| format!("binding HTTP on {a}")))
        .transpose()?;
    let tunnel = std::net::UdpSocket::bind(o.tunnel)
        .with_context(|| format!("binding the tunnel on {}", o.tunnel))?;
    let ssh = o
        .ssh
        .map(|a| std::net::TcpListener::bind(a).with_context(|| format!("binding SSH on {a}")))
        .transpose()?;
    let ssh_addr = ssh.as_ref().map(|s| s.local_addr()).transpose()?;
    let (https_addr, http_addr, tunnel_addr) = (
        https.local_addr()?,
        http.as_ref().map(|h| h.local_addr()).transpose()?,
        tunnel.local_addr()?,
    );
    let relay_dir = data.join("relay");
    let certs =
        warren_relay::certs::dev_certificate(&relay_dir, &o.domain, o.preview_domain.as_deref())?;
    let ca_file = certs.ca.clone().context("development CA")?;
    let relay_secret = secret_file(&data.join("relay.secret"), "wr")?;

    // Control.
    let control_url = format!("http://{api_addr}");
    let ccfg = ControlConfig {
        listen: api_addr,
        data_dir: data.join("control"),
        database_url: None,
        domain: o.domain.clone(),
        preview_domain: o.preview_domain.clone(),
        https_port: Some(https_addr.port()),
        // Names under .localhost resolve to loopback in browsers, not in
        // every resolver ssh uses: local stacks give `localhost`.
        ssh_endpoint: ssh_addr.map(|a| {
            let host = if o.domain == "localhost" || o.domain.ends_with(".localhost") {
                "localhost"
            } else {
                o.domain.as_str()
            };
            format!("{host}:{}", a.port())
        }),
        admin_api_key: None,
        relay_secret: Secret::new(relay_secret.clone()),
        control_urls: Vec::new(),
        relays: vec![RelayTarget {
            addr: tunnel_addr.to_string(),
            server_name: o.domain.clone(),
            ca_file: Some(ca_file.clone()),
        }],
        scheduler: SchedulerConfig::default(),
        sessions: SessionDefaults {
            image: o.image.clone(),
            memory_mb: o.session_memory_mb,
            // One machine, its free space shared by every local session:
            // 1 GiB each unless asked (control counts it against the node).
            disk_mb: 1024,
            record_terminals: o.record_terminals,
            ..Default::default()
        },
        tls: None,
        auth: Default::default(),
        pools: o.pools.clone(),
    };
    let control = warren_control::start(ccfg.clone(), api, stop.clone()).await?;
    let admin_key = std::fs::read_to_string(data.join("control/admin.key"))
        .context("reading the admin key")?
        .trim()
        .to_string();

    // Relay.
    let rcfg = RelayConfig {
        domain: o.domain.clone(),
        data_dir: relay_dir,
        https: HttpsConfig {
            listen: https_addr,
            cert_file: None,
            key_file: None,
            hsts_max_age_secs: 31_536_000,
            max_connections_per_address: 256,
        },
        http: http_addr.map(|listen| ListenConfig { listen }),
        admin: None,
        ssh: ssh_addr.map(|listen| ListenConfig { listen }),
        tunnel: RelayTunnelConfig {
            listen: tunnel_addr,
            node_secret: Secret::new(relay_secret.clone()),
        },
        auth: AuthConfig {
            jwks_file: None,
            jwks_url: Some(format!("{control_url}/.well-known/jwks.json")),
            audience: "warren".into(),
        },
        routes: vec![],
        control_upstream: Some(api_addr),
        preview_domain: o.preview_domain.clone(),
        control: Some(RelayControl {
            url: control_url.clone(),
            secret: Secret::new(relay_secret.clone()),
            ca_file: None,
        }),
    };
    let cc = warren_relay::control_plane(&rcfg)?;
    let relay = warren_relay::start(
        rcfg,
        warren_relay::Listeners {
            https,
            http,
            admin: None,
            tunnel,
            ssh,
        },
        cc,
        stop.clone(),
    )
    .await?;

    // The local agent: joins once, then reuses its credential.
    let agent_dir = data.join("agent");
    let join_token = match warren_agent::control::load_enrollment(&agent_dir)? {
        Some(e) if e.control_url == control_url => None,
        _ => Some(join_token(&control_url, &admin_key).await?),
    };
    let acfg = agent_config(&control_url, &agent_dir, &o);
    let running = warren_agent::start(
        acfg,
        RunOptions {
            join_token,
            agent: AgentOptions {
                extra_labels: o.labels.clone(),
            },
        },
        stop.clone(),
    )
    .await?;
    let agent = running.agent.clone();
    {
        let stop = stop.clone();
        tracker.spawn(async move {
            stop.cancelled().await;
            running.stopped().await;
        });
    }
    let node = agent.node_id().to_string();
    if !relay
        .registry
        .wait_until(std::time::Duration::from_secs(30), |n| n.contains(&node))
        .await
    {
        anyhow::bail!("the local agent did not connect to the relay");
    }
    info!(api = %control_url, https = %https_addr, "stack ready");
    Ok(Stack {
        control_url,
        https: https_addr,
        http: http_addr,
        ssh: ssh_addr,
        admin_key,
        ca_file,
        control,
        control_config: ccfg,
        relay,
        agent,
        stop,
        tracker,
    })
}

/// A one-time join token for the local agent, from control's API.
async fn join_token(control_url: &str, admin_key: &str) -> anyhow::Result<String> {
    let api =
        warren_client::Client::new(control_url, admin_key, std::time::Duration::from_secs(30))?;
    let v = api
        .call(
            "POST",
            "/v1/nodes/join-tokens",
            Some(serde_json::json!({"ttl_seconds": 600})),
        )
        .await
        .context("a join token for the local agent")?;
    v["token"]
        .as_str()
        .map(str::to_string)
        .context("control's join-token answer has no token")
}

/// The local agent's configuration: control to join (or the credential
/// in `data_dir` from joining before); relays come from the enrollment.
fn agent_config(control_url: &str, data_dir: &std::path::Path, o: &StackOptions) -> AgentConfig {
    AgentConfig {
        admin: Default::default(),
        control_url: Some(control_url.into()),
        control_ca_file: None,
        memory_mb: o.memory_mb,
        node_id: o.node_id.clone(),
        data_dir: data_dir.to_path_buf(),
        credential: Secret::default(),
        relays: Vec::new(),
        docker: DockerConfig {
            network: o.network.clone(),
            default_image: o.image.clone(),
            allow_host_root_sessions: o.allow_host_root_sessions,
            ..Default::default()
        },
        terminal: TerminalConfig::default(),
    }
}
