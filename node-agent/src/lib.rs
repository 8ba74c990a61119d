//! `warren-agent`: runs on every worker node.
//!
//! It dials every relay over the QUIC tunnel (no inbound port), runs the
//! node's session containers on Docker, and serves the streams relays open:
//! a `terminal` stream is HTTP/1.1 + WebSocket bridged to a PTY held by the
//! session's `warren-init`; a `port N` stream is piped to port N of the
//! container. After a restart it adopts the containers it finds by label.
//!
//! # Layout
//! The agent has two jobs, and a folder for each:
//! - [`sandbox`]: the session containers and what keeps them in:
//!   [`sandbox::spec`] (a session's container settings, a pure function),
//!   [`sandbox::runtime`] (Docker via bollard: engine, network, create,
//!   adoption, removal), [`sandbox::security`] (the isolation profiles),
//!   [`sandbox::firewall`] (the host rule that keeps sessions off the
//!   worker), [`sandbox::cpus`] (core pinning), [`sandbox::disk`] and
//!   [`sandbox::blkio`] (loop disks and their bandwidth).
//! - [`serve`]: what the agent serves: [`serve::terminal`] (the WebSocket
//!   terminal endpoint), [`serve::initsock`] (reaching a session's init
//!   without trusting the session), [`serve::control`] (join, heartbeats and
//!   the watch that drives reconciliation).
//! - [`run`]: the agent's one entry point ([`start`] and [`Running::stopped`]
//!   for a caller that needs the [`Agent`] meanwhile); [`Agent`]: sessions by
//!   id, and the tunnel's stream handler; [`metrics`]: its Prometheus registry.
//! - [`warm`]: warm pools (containers started ahead of demand, claimed by
//!   a session of their image and size).
//! - `testing` (feature `testing`): a local-PTY driver for tests and benchmarks.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod sandbox;
pub mod serve;
#[cfg(feature = "testing")]
pub mod testing;
pub mod warm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_config::AgentConfig;
use warren_tunnel::client::{
    self, Backoff, ClientOptions, PendingStream, RelayDial, RelayStatus, StreamHandler,
};
use warren_tunnel::proto::{StreamHeader, StreamKind, codes};

// The paths other crates (cli, relay and loadtest tests, examples) use.
pub use sandbox::cpus;
pub use sandbox::runtime::{DockerRuntime, RuntimeError, SessionInfo, SessionSpec};
pub use serve::control;

use serve::terminal;

/// How often the agent checks its pulled images against their budget.
const IMAGE_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Time to connect to a port inside a session before answering the relay.
const PORT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How [`run`] enrols the node, beyond its config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// A one-time join token (with `control_url` in the config): join now,
    /// even if this node joined before.
    pub join_token: Option<String>,
    pub agent: AgentOptions,
}

/// The node's host name as a DNS label (the default node id).
pub fn default_node_id() -> String {
    let h = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
    let h: String = h
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    if warren_config::is_dns_label(&h) {
        h
    } else {
        "worker".into()
    }
}

/// Runs the agent until `shutdown`: enrols (joins the control plane with
/// `opts.join_token`, or reuses the credential in `data_dir`, or runs
/// static from `cfg`), adopts the node's sessions, holds a tunnel to every
/// relay, keeps in step with control, and waits for every task it started
/// before returning.
pub fn run(
    cfg: AgentConfig,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>> {
    // Boxed for the reason given at [`start`].
    Box::pin(async move {
        let running = start(cfg, opts, shutdown.clone()).await?;
        shutdown.cancelled().await;
        running.stopped().await;
        Ok(())
    })
}

/// An agent [`start`] started; its tasks run until the shutdown token is
/// cancelled.
pub struct Running {
    pub agent: Arc<Agent>,
    tasks: TaskTracker,
}

impl Running {
    /// Waits for every task the agent started (at most 10 s), once the
    /// shutdown token is cancelled.
    pub async fn stopped(self) {
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            warn!("some agent tasks did not stop within 10 s");
        }
    }
}

/// What [`run`] does before it waits for `shutdown`: the agent enrolled,
/// its sessions adopted, its relays dialled and its control sync running.
// Boxed here, and not an `async fn`, so that the agent's async code (every
// future it awaits and spawns) is compiled once, in this crate, which
// builds beside the others: an `async fn` awaited from another crate is
// compiled in that crate, and the `warren` binary's library compiled all
// of it again, alone at the end of the build (docs/benchmarks.md, "A
// fresh clone to a terminal").
pub fn start(
    cfg: AgentConfig,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> futures_util::future::BoxFuture<'static, anyhow::Result<Running>> {
    Box::pin(start_agent(cfg, opts, shutdown))
}

async fn start_agent(
    mut cfg: AgentConfig,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    use warren_config::Validate;
    let control_ca = match &cfg.control_ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading control_ca_file {}", p.display()))?,
        ),
        None => None,
    };
    let enrollment = match (&cfg.control_url, opts.join_token) {
        (Some(url), Some(token)) => {
            if cfg.node_id.is_empty() {
                cfg.node_id = default_node_id();
            }
            let (alloc, _) = control::host_memory_mb(cfg.memory_mb);
            let e = control::join(
                url,
                control_ca.clone(),
                &token,
                &cfg.node_id,
                alloc,
                &cfg.data_dir,
            )
            .await?;
            info!(node = %e.node_id, dir = %cfg.data_dir.display(), "joined the control plane");
            Some(e)
        }
        (Some(_), None) => Some(control::load_enrollment(&cfg.data_dir)?.context(
            "this worker has not joined yet: run `warren agent --control URL --join TOKEN`",
        )?),
        (None, Some(_)) => anyhow::bail!("a join token needs control_url (--control)"),
        (None, None) => None,
    };
    // Replicas the operator lists now join those known from the join.
    let enrollment = enrollment.map(|mut e| {
        if let Some(list) = &cfg.control_url {
            e.control_urls.extend(control::split_urls(list));
        }
        if control_ca.is_some() {
            e.control_ca = control_ca.clone();
        }
        e
    });
    if let Some(e) = &enrollment {
        control::apply_enrollment(&mut cfg, e)?;
    }
    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let tracker = TaskTracker::new();
    let agent = Agent::start(&cfg, opts.agent, shutdown.clone()).await?;
    let metrics_addr = match cfg.admin.listen {
        Some(addr) => {
            let bound = metrics::serve(addr, agent.metrics.clone(), &tracker, shutdown.clone())
                .await
                .with_context(|| format!("admin listener {addr}"))?;
            info!(addr = %bound, "metrics listening");
            Some(bound.to_string())
        }
        None => None,
    };
    let mut status = agent.connect_relays(&cfg, Backoff::default(), &tracker)?;
    {
        // Tunnel health as metrics: relays connected, connections made.
        let (m, sd) = (agent.metrics.clone(), shutdown.clone());
        tracker.spawn(async move {
            let mut before = 0usize;
            loop {
                let now = status.borrow_and_update().values().filter(|c| **c).count();
                m.relays_connected.set(now as i64);
                if now > before {
                    m.tunnel_connects.inc_by((now - before) as u64);
                }
                before = now;
                tokio::select! {
                    _ = sd.cancelled() => return,
                    r = status.changed() => if r.is_err() { return },
                }
            }
        });
    }
    {
        // Pulled images no session uses go once they pass the budget.
        let (a, sd) = (agent.clone(), shutdown.clone());
        tracker.spawn(async move {
            let mut every = tokio::time::interval(IMAGE_PRUNE_EVERY);
            loop {
                tokio::select! {
                    _ = sd.cancelled() => return,
                    _ = every.tick() => {}
                }
                if let Err(e) = a.runtime().prune_images().await {
                    warn!("pruning images: {e}");
                }
            }
        });
    }
    if let Some(e) = &enrollment {
        control::spawn_sync(
            agent.clone(),
            e,
            cfg.memory_mb,
            metrics_addr,
            &tracker,
            shutdown.clone(),
        );
    }
    info!(node = %cfg.node_id, relays = cfg.relays.len(), "agent running");
    Ok(Running {
        agent,
        tasks: tracker,
    })
}

/// Options that do not belong in the operator's config file.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Extra labels on everything the agent creates (tests mark their runs).
    pub extra_labels: BTreeMap<String, String>,
}

/// Finds the static `warren-init` binary: the configured path, else
/// `WARREN_INIT_BIN`, else next to the running executable, else the
/// workspace's static build output.
pub fn locate_init_binary(configured: Option<&PathBuf>) -> PathBuf {
    if let Some(p) = configured {
        return p.clone();
    }
    if let Ok(p) = std::env::var("WARREN_INIT_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join("warren-init");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/x86_64-unknown-linux-gnu/release/warren-init"
    ))
}

pub struct Agent {
    node_id: String,
    runtime: DockerRuntime,
    sessions: DashMap<String, SessionInfo>,
    /// Last terminal traffic per session (Unix ms), for idle timeouts.
    activity: DashMap<String, Arc<std::sync::atomic::AtomicI64>>,
    /// Per session, cancelled when it is deleted.
    gone: DashMap<String, CancellationToken>,
    /// Per session, the sandbox API requests it may have at once.
    api_slots: DashMap<String, Arc<tokio::sync::Semaphore>>,
    /// The live share links of this node's sessions (from the watch).
    shares: Arc<serve::shares::ShareBook>,
    /// Who is attached to each terminal.
    viewers: Arc<serve::viewers::Viewers>,
    /// Warm containers, claimed by new sessions of their image and size.
    pools: Arc<warm::WarmPools>,
    recorders: Arc<serve::recorder::Recorders>,
    metrics: Arc<metrics::Metrics>,
    shutdown: CancellationToken,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Agent {
    /// Connects to Docker and adopts this node's existing sessions.
    pub async fn start(
        cfg: &AgentConfig,
        opts: AgentOptions,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Agent>> {
        let init = locate_init_binary(cfg.docker.init_binary.as_ref());
        let init = std::fs::canonicalize(&init).unwrap_or(init);
        let runtime = DockerRuntime::connect(
            cfg.docker.clone(),
            &cfg.node_id,
            &cfg.data_dir,
            init,
            opts.extra_labels,
            cfg.terminal.clone(),
        )
        .await?;
        let agent = Arc::new(Agent {
            node_id: cfg.node_id.clone(),
            runtime,
            sessions: DashMap::new(),
            activity: DashMap::new(),
            gone: DashMap::new(),
            api_slots: DashMap::new(),
            shares: Arc::default(),
            viewers: Arc::default(),
            pools: Arc::default(),
            recorders: Arc::default(),
            metrics: metrics::Metrics::new(),
            shutdown,
        });
        for s in agent
            .runtime
            .adopt()
            .await
            .context("adopting existing sessions")?
        {
            info!(session = %s.id, container = %s.container_id, "adopted running session");
            agent.sessions.insert(s.id.clone(), s);
        }
        agent.metrics.sessions.set(agent.sessions.len() as i64);
        Ok(agent)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.metrics
    }

    pub fn runtime(&self) -> &DockerRuntime {
        &self.runtime
    }

    pub fn shares(&self) -> &Arc<serve::shares::ShareBook> {
        &self.shares
    }

    pub fn pools(&self) -> &Arc<warm::WarmPools> {
        &self.pools
    }

    pub fn recorders(&self) -> &Arc<serve::recorder::Recorders> {
        &self.recorders
    }

    /// What a terminal connection of `session` sees of the node.
    fn node_view(&self, session: &str) -> terminal::NodeView {
        let joined = self.recorders.control().map(|control| {
            let session = session.to_string();
            let shares = self.shares.clone();
            let f: terminal::Joined = Arc::new(move |share: &str, _name: &str| {
                if !shares.report_join(share) {
                    return;
                }
                let (control, path) = (
                    control.clone(),
                    format!("/internal/v1/sessions/{session}/shares/{share}/joined"),
                );
                tokio::spawn(async move {
                    if let Err(e) = control.current().post(&path).send().await {
                        warn!("share join not audited: {e}");
                    }
                });
            });
            f
        });
        terminal::NodeView {
            session: session.to_string(),
            shares: self.shares.clone(),
            viewers: self.viewers.clone(),
            recorders: self.recorders.clone(),
            joined,
        }
    }

    pub fn session(&self, id: &str) -> Option<SessionInfo> {
        self.sessions.get(id).map(|s| s.clone())
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.iter().map(|s| s.clone()).collect()
    }

    fn activity(&self, id: &str) -> Arc<std::sync::atomic::AtomicI64> {
        self.activity
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(std::sync::atomic::AtomicI64::new(now_ms())))
            .clone()
    }

    /// Milliseconds since the session's terminals last carried a byte.
    pub fn idle_ms(&self, id: &str) -> i64 {
        (now_ms() - self.activity(id).load(std::sync::atomic::Ordering::Relaxed)).max(0)
    }

    /// Creates a session, or returns it if it already runs here.
    pub async fn create_session(&self, spec: &SessionSpec) -> Result<SessionInfo, RuntimeError> {
        if let Some(s) = self.session(&spec.id) {
            return Ok(s);
        }
        let info = match self.claim_warm(spec).await {
            Some(info) => info,
            None => {
                self.metrics.pool_claims.with_label_values(&["cold"]).inc();
                self.runtime.create(spec).await?
            }
        };
        info!(session = %info.id, container = %info.container_id, ip = ?info.ip, "session started");
        self.sessions.insert(info.id.clone(), info.clone());
        self.metrics.sessions.set(self.sessions.len() as i64);
        Ok(info)
    }

    /// Cancelled when the session is deleted: its terminals close with 4404.
    fn gone_token(&self, id: &str) -> CancellationToken {
        if !self.sessions.contains_key(id) {
            // Removed meanwhile: gone already, and nothing kept for it.
            let t = CancellationToken::new();
            t.cancel();
            return t;
        }
        self.gone.entry(id.to_string()).or_default().clone()
    }

    /// Stops and removes a session's container. Unknown ids are a no-op.
    pub async fn remove_session(&self, id: &str) -> Result<(), RuntimeError> {
        self.activity.remove(id);
        self.api_slots.remove(id);
        // Its terminals are told before the container goes (else they see
        // init vanish, an internal error).
        if let Some((_, gone)) = self.gone.remove(id) {
            gone.cancel();
        }
        if let Some((_, info)) = self.sessions.remove(id) {
            self.metrics.sessions.set(self.sessions.len() as i64);
            self.runtime.remove(&info).await?;
            info!(session = %id, "session removed");
        }
        Ok(())
    }

    /// Dials every relay in `cfg` and serves their streams until shutdown.
    pub fn connect_relays(
        self: &Arc<Self>,
        cfg: &AgentConfig,
        backoff: Backoff,
        tracker: &TaskTracker,
    ) -> anyhow::Result<watch::Receiver<RelayStatus>> {
        let mut relays = Vec::new();
        for r in &cfg.relays {
            let ca = match &r.ca_file {
                Some(p) => {
                    Some(std::fs::read(p).with_context(|| format!("reading CA {}", p.display()))?)
                }
                None => None,
            };
            relays.push(RelayDial {
                addr: r.addr.clone(),
                server_name: r.server_name.clone(),
                client_config: warren_tunnel::tls::client_config(
                    ca.as_deref(),
                    warren_tunnel::DEFAULT_IDLE_TIMEOUT,
                )?,
            });
        }
        let opts = ClientOptions {
            node_id: cfg.node_id.clone(),
            credential: cfg.credential.expose().to_string(),
            relays,
            backoff,
        };
        Ok(client::spawn(
            opts,
            self.clone(),
            self.shutdown.clone(),
            tracker,
        )?)
    }
}

#[async_trait]
impl StreamHandler for Agent {
    async fn handle(&self, header: StreamHeader, stream: PendingStream) {
        let kind = match header.kind {
            StreamKind::Terminal => "terminal",
            StreamKind::Port(_) => "port",
            StreamKind::Api => "api",
            StreamKind::Snapshot => "snapshot",
        };
        let Some(session) = self.session(&header.session) else {
            self.metrics
                .streams
                .with_label_values(&[kind, "no_session"])
                .inc();
            return stream
                .reject(
                    codes::SESSION_NOT_FOUND,
                    &format!("session {} is not on this node", header.session),
                )
                .await;
        };
        match header.kind {
            StreamKind::Terminal => {
                let draining = stream.relay_draining();
                let Ok(s) = stream.accept().await else { return };
                self.metrics.streams.with_label_values(&[kind, "ok"]).inc();
                let activity = self.activity(&session.id);
                let (gone, view) = (self.gone_token(&session.id), self.node_view(&session.id));
                // Only init's address is kept for the terminal's life (the
                // rest of the session's record would sit in every idle
                // terminal's task).
                let init = session.into_init();
                self.metrics.terminals_open.inc();
                let r = terminal::serve(
                    s,
                    &init,
                    self.shutdown.clone(),
                    draining,
                    gone,
                    Some(activity),
                    Some(self.metrics.clone()),
                    Some(view),
                )
                .await;
                self.metrics.terminals_open.dec();
                if let Err(e) = r {
                    self.metrics.errors.with_label_values(&["terminal"]).inc();
                    warn!("terminal stream ended with an error: {e}");
                }
            }
            // The other kinds are boxed: inline, their state (hyper, bollard)
            // would size every stream's task, idle terminals' included.
            StreamKind::Api | StreamKind::Snapshot => {
                Box::pin(self.serve_api_stream(stream, session, header.kind)).await
            }
            StreamKind::Port(port) => Box::pin(self.serve_port(stream, &session, port)).await,
        }
    }
}
