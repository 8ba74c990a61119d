//! The SSH edge (russh): `ssh -p 2222 <session>@<domain>`.
//!
//! The user name is the session id. A public key registered for the
//! session's tenant, or the session's short-lived token as the password,
//! opens it. Every channel becomes a tunnel stream to the session's node:
//! shells, commands and `sftp` speak the same terminal WebSocket as the
//! browser (commands and subsystems in its `mode=exec`, stdout and stderr
//! apart); `direct-tcpip` becomes a `port N` stream.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use russh::keys::ssh_key::{self, LineEnding};
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, Session};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_proto::terminal::{self, ClientMsg, Cursor, ServerMsg, TerminalQuery, stream_byte};
use warren_tunnel::TunnelStream;
use warren_tunnel::proto::{StreamHeader, StreamKind};
use warren_tunnel::server::{OpenError, Registry};

use crate::auth::{Scope, Verifier};
use crate::routes::{ControlPlane, RouteCache, SessionRoute, SshAction, SshAuditEvent};
use warren_proto::is_session_id;

/// File name of the host key in the relay's data directory.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// Failed authentications from one address within [`FAILURE_WINDOW`]
/// before every further attempt from it is refused unchecked.
pub const MAX_FAILURES: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// SSH connections served at once.
const MAX_CONNECTIONS: usize = 10_000;
/// Unauthenticated connections one address (IPv6: one /64) may hold.
pub const MAX_PREAUTH_PER_ADDRESS: usize = 10;
/// Default time to authenticate.
pub const LOGIN_GRACE: Duration = Duration::from_secs(30);
/// Session and forwarding channels one connection may hold.
const MAX_CHANNELS: usize = 64;
/// Time to open the tunnel stream and the terminal handshake.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Finds an `sftp-server` where Debian, Alpine and Fedora put it.
const SFTP_COMMAND: &str = "for p in /usr/lib/openssh/sftp-server /usr/lib/ssh/sftp-server \
     /usr/libexec/openssh/sftp-server /usr/libexec/sftp-server; do \
     [ -x \"$p\" ] && exec \"$p\"; done; \
     echo 'warren: this session image has no sftp-server (install openssh-sftp-server)' >&2; exit 127";
/// A shell without a PTY (`ssh -T`).
const PLAIN_SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi";

/// The relay's host key, made on first start and kept in the data dir.
pub fn host_key(data_dir: &Path) -> anyhow::Result<PrivateKey> {
    let path = data_dir.join(HOST_KEY_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return PrivateKey::from_openssh(text.trim())
            .with_context(|| format!("{} is not an OpenSSH private key", path.display()));
    }
    let mut seed = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut seed);
    let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let mut key = PrivateKey::from(pair);
    key.set_comment("warren-relay");
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the host key: {e}"))?;
    std::fs::create_dir_all(data_dir)?;
    warren_config::write_private(&path, pem.as_bytes())?;
    std::fs::write(
        data_dir.join(format!("{HOST_KEY_FILE}.pub")),
        format!("{}\n", public_line(&key)),
    )?;
    info!(path = %path.display(), "made a new SSH host key");
    Ok(key)
}

/// `ssh-ed25519 AAAA…` of a key.
pub fn public_line(key: &PrivateKey) -> String {
    key.public_key()
        .to_openssh()
        .map(|s| crate::routes::key_body(&s).to_string())
        .unwrap_or_default()
}

/// `SHA256:…`, as `ssh` prints it.
pub fn fingerprint(key: &russh::keys::PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The unit limits apply to: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so single IPv6 addresses cost nothing).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
    }
}

/// Connections that have not authenticated yet, per address key: each holds
/// a slot until it authenticates or ends, and an address (or /64) may hold
/// only [`MAX_PREAUTH_PER_ADDRESS`] at once.
#[derive(Default)]
pub struct PreAuth {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Released when dropped.
pub struct PreAuthSlot {
    owner: Arc<SshContext>,
    key: IpAddr,
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .preauth
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl PreAuth {
    /// A slot for a new connection from `ip`, if its address has one left.
    pub fn acquire(ctx: &Arc<SshContext>, ip: IpAddr) -> Option<PreAuthSlot> {
        let key = address_key(ip);
        let mut open = ctx.preauth.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= MAX_PREAUTH_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(PreAuthSlot {
            owner: ctx.clone(),
            key,
        })
    }

    /// Connections not yet authenticated from `ip`'s address key.
    pub fn count(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&address_key(ip)).copied().unwrap_or(0)
    }
}

/// Counts events (failed logins, token renewals) per client address key
/// within a fixed window.
pub struct FailureLimiter {
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    max: u32,
    window: Duration,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::new(MAX_FAILURES, FAILURE_WINDOW)
    }
}

impl FailureLimiter {
    /// At most `max` events per address key in each `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            seen: Mutex::default(),
            max,
            window,
        }
    }

    /// Whether `ip` has used up its events for now.
    pub fn limited(&self, ip: IpAddr) -> bool {
        let ip = address_key(ip);
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        matches!(seen.get(&ip), Some((since, n)) if since.elapsed() < self.window && *n >= self.max)
    }

    /// Records an event; true when this one reached the limit.
    pub fn fail(&self, ip: IpAddr) -> bool {
        let ip = address_key(ip);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 100_000 {
            let window = self.window;
            seen.retain(|_, (since, _)| since.elapsed() < window);
        }
        let entry = seen.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 == self.max
    }
}

/// What every connection shares.
pub struct SshContext {
    pub verifier: Arc<Verifier>,
    pub routes: Arc<RouteCache>,
    pub source: Arc<dyn ControlPlane>,
    pub registry: Arc<Registry>,
    pub limiter: FailureLimiter,
    pub preauth: PreAuth,
    /// Time a connection has to authenticate (OpenSSH's LoginGraceTime).
    pub login_grace: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Serves SSH on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    key: PrivateKey,
    ctx: Arc<SshContext>,
    shutdown: CancellationToken,
) {
    let config = Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-Warren".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        max_auth_attempts: 10,
        // A connection that never authenticates, or goes silent, goes.
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!("ssh accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(tcp); // over capacity: the client sees a closed connection
            continue;
        };
        // Before authentication an address gets only a few connections, and
        // each only the login grace time.
        let Some(preauth) = PreAuth::acquire(&ctx, peer.ip()) else {
            debug!(%peer, "ssh: too many unauthenticated connections from this address");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let authenticated = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = Conn {
            ctx: ctx.clone(),
            peer,
            target: None,
            channels: Arc::new(tokio::sync::Semaphore::new(MAX_CHANNELS)),
            preauth: Some(preauth),
            authenticated: authenticated.clone(),
        };
        let config = config.clone();
        let shutdown = shutdown.clone();
        let grace = ctx.login_grace;
        tasks.spawn(async move {
            let started = tokio::time::timeout(grace, russh::server::run_stream(config, tcp, handler)).await;
            match started {
                Ok(Ok(running)) => {
                    let handle = running.handle();
                    let deadline = tokio::time::Instant::now() + grace;
                    let unauthenticated_too_long = async {
                        tokio::time::sleep_until(deadline).await;
                        if authenticated.load(std::sync::atomic::Ordering::Acquire) {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        r = running => if let Err(e) = r { debug!(%peer, "ssh connection ended: {e}") },
                        _ = unauthenticated_too_long => {
                            debug!(%peer, "ssh: no login within the grace time");
                            let _ = handle
                                .disconnect(russh::Disconnect::ByApplication, "no login within the grace time".into(), "en".into())
                                .await;
                        }
                        _ = shutdown.cancelled() => {
                            let _ = handle
                                .disconnect(russh::Disconnect::ByApplication, "this relay is shutting down; reconnect: your shell keeps running".into(), "en".into())
                                .await;
                        }
                    }
                }
                Ok(Err(e)) => debug!(%peer, "ssh handshake failed: {e}"),
                Err(_) => debug!(%peer, "ssh: no handshake within the grace time"),
            }
            drop(permit);
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
}

/// The session an authenticated connection may use.
#[derive(Clone)]
struct Target {
    session: String,
    route: SessionRoute,
}

struct Conn {
    ctx: Arc<SshContext>,
    peer: SocketAddr,
    target: Option<Target>,
    /// Open channels hold a permit until their task ends.
    channels: Arc<tokio::sync::Semaphore>,
    /// Held until the connection authenticates.
    preauth: Option<PreAuthSlot>,
    authenticated: Arc<std::sync::atomic::AtomicBool>,
}

impl Conn {
    /// The authenticated session and a channel slot, or why a channel is refused.
    fn channel_slot(
        &self,
    ) -> Result<(Target, tokio::sync::OwnedSemaphorePermit), ChannelOpenFailure> {
        let target = self
            .target
            .clone()
            .ok_or(ChannelOpenFailure::AdministrativelyProhibited)?;
        let slot = self
            .channels
            .clone()
            .try_acquire_owned()
            .map_err(|_| ChannelOpenFailure::ResourceShortage)?;
        Ok((target, slot))
    }

    fn audit(
        &self,
        action: SshAction,
        session: &str,
        method: &'static str,
        fp: Option<String>,
        reason: String,
    ) {
        let event = SshAuditEvent {
            action,
            session: session.chars().take(64).collect(),
            method: method.into(),
            client_addr: self.peer.to_string(),
            fingerprint: fp,
            reason,
        };
        let source = self.ctx.source.clone();
        tokio::spawn(async move { source.audit(event).await });
    }

    /// Counts a failure, audits it and answers "no".
    fn refuse(
        &self,
        session: &str,
        method: &'static str,
        fp: Option<String>,
        reason: String,
    ) -> Auth {
        self.ctx
            .metrics
            .ssh_logins
            .with_label_values(&["refused"])
            .inc();
        info!(peer = %self.peer, session, method, %reason, "ssh login refused");
        let reached = self.ctx.limiter.fail(self.peer.ip());
        self.audit(SshAction::LoginFailed, session, method, fp.clone(), reason);
        if reached {
            self.audit(
                SshAction::RateLimited,
                session,
                method,
                fp,
                format!(
                    "{MAX_FAILURES} failures within {}s",
                    FAILURE_WINDOW.as_secs()
                ),
            );
        }
        Auth::reject()
    }

    fn accept(
        &mut self,
        session: &str,
        route: SessionRoute,
        method: &'static str,
        fp: Option<String>,
    ) -> Auth {
        self.ctx.metrics.ssh_logins.with_label_values(&["ok"]).inc();
        self.audit(SshAction::Login, session, method, fp, String::new());
        self.target = Some(Target {
            session: session.to_string(),
            route,
        });
        self.preauth = None;
        self.authenticated
            .store(true, std::sync::atomic::Ordering::Release);
        Auth::Accept
    }

    /// Checks that apply to every method; `Some` is the refusal.
    fn precheck(&self, user: &str) -> Option<Auth> {
        if self.ctx.limiter.limited(self.peer.ip()) {
            return Some(Auth::reject());
        }
        if !is_session_id(user) {
            return Some(self.refuse(
                user,
                "none",
                None,
                "the user name is not a session id".into(),
            ));
        }
        None
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if let Some(no) = self.precheck(user) {
            return Ok(no);
        }
        let claims = match self.ctx.verifier.verify(password.trim()).await {
            Ok(c) => c,
            Err(e) => return Ok(self.refuse(user, "password", None, e.to_string())),
        };
        if claims.sid != user {
            return Ok(self.refuse(
                user,
                "password",
                None,
                "the token is for another session".into(),
            ));
        }
        if !claims.has_scope(Scope::Terminal) {
            return Ok(self.refuse(
                user,
                "password",
                None,
                "the token lacks the terminal scope".into(),
            ));
        }
        match self.ctx.routes.resolve(user).await {
            Ok(Some(route)) if route.tenant == claims.tenant => {
                Ok(self.accept(user, route, "password", None))
            }
            Ok(Some(_)) => Ok(self.refuse(
                user,
                "password",
                None,
                "the token is for another tenant".into(),
            )),
            Ok(None) => Ok(self.refuse(user, "password", None, "no such session".into())),
            Err(e) => {
                warn!("ssh: route lookup failed: {e}");
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if let Some(no) = self.precheck(user) {
            return Ok(no);
        }
        let fp = fingerprint(key.public_key);
        let line = match key.public_key.to_openssh() {
            Ok(l) => l,
            Err(_) => return Ok(self.refuse(user, "publickey", Some(fp), "unreadable key".into())),
        };
        match self.ctx.source.authorize_ssh_key(user, &line).await {
            Ok(Some(route)) => Ok(self.accept(user, route, "publickey", Some(fp))),
            Ok(None) => Ok(self.refuse(
                user,
                "publickey",
                Some(fp),
                "the key is not registered for this session's tenant (or no such session)".into(),
            )),
            Err(e) => {
                warn!("ssh: key check failed: {e}");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (target, slot) = match self.channel_slot() {
            Ok(x) => x,
            Err(why) => {
                reply.reject(why).await;
                return Ok(());
            }
        };
        reply.accept().await;
        let (ctx, handle, peer) = (self.ctx.clone(), session.handle(), self.peer);
        tokio::spawn(async move {
            session_channel(channel, handle, ctx, target, peer).await;
            drop(slot);
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (target, slot) = match self.channel_slot() {
            Ok(x) => x,
            Err(why) => {
                reply.reject(why).await;
                return Ok(());
            }
        };
        // Only the session itself: the agent reaches its ports, nothing else.
        let local = matches!(
            host_to_connect,
            "localhost" | "127.0.0.1" | "::1" | "0.0.0.0"
        ) || host_to_connect == target.session;
        let Ok(port) = u16::try_from(port_to_connect) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        if !local || port == 0 {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let stream = open_stream(&self.ctx, &target, StreamKind::Port(port), self.peer).await;
        let mut tunnel = match stream {
            Ok(s) => s,
            Err(e) => {
                debug!(session = %target.session, port, "ssh forward refused: {e}");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        reply.accept().await;
        tokio::spawn(async move {
            let mut ch = channel.into_stream();
            if let Err(e) = tokio::io::copy_bidirectional(&mut ch, &mut tunnel).await {
                debug!("ssh forward ended: {e}");
            }
            drop(slot);
        });
        Ok(())
    }
}

async fn open_stream(
    ctx: &SshContext,
    target: &Target,
    kind: StreamKind,
    peer: SocketAddr,
) -> Result<TunnelStream, String> {
    let header = StreamHeader {
        session: target.session.clone(),
        kind,
        request_id: format!("ssh{:013x}", rand::random::<u64>() >> 12),
        client_addr: Some(peer),
    };
    match ctx.registry.open_stream(&target.route.node, &header).await {
        Ok(s) => {
            ctx.metrics.streams_opened.inc();
            Ok(s)
        }
        Err(OpenError::NodeNotConnected(_)) => Err(format!(
            "session {}'s node is not connected to this relay right now",
            target.session
        )),
        Err(OpenError::Rejected { code, message })
            if code == warren_tunnel::proto::codes::SESSION_NOT_FOUND =>
        {
            ctx.routes.invalidate(&target.session).await;
            Err(format!("session {} is gone ({message})", target.session))
        }
        Err(e) => Err(format!("cannot reach session {}: {e}", target.session)),
    }
}

/// What a session channel was asked to run.
enum Run {
    Shell,
    Command(String),
    Sftp,
}

#[derive(Default)]
struct Pty {
    term: String,
    cols: u16,
    rows: u16,
}

fn dim(v: u32, default: u16) -> u16 {
    if v == 0 { default } else { v.min(1000) as u16 }
}

fn env_ok(name: &str) -> bool {
    matches!(name, "TERM" | "LANG")
}

/// One session channel: wait for its request, then bridge it to the
/// session's terminal over the tunnel.
async fn session_channel(
    channel: Channel<Msg>,
    handle: Handle,
    ctx: Arc<SshContext>,
    target: Target,
    peer: SocketAddr,
) {
    let id = channel.id();
    let (mut rx, tx) = channel.split();
    let mut pty: Option<Pty> = None;
    let mut env = BTreeMap::new();
    let reply = |ok: bool, want: bool| {
        let handle = &handle;
        async move {
            if want {
                let _ = if ok {
                    handle.channel_success(id).await
                } else {
                    handle.channel_failure(id).await
                };
            }
        }
    };
    let run = loop {
        match rx.wait().await {
            Some(ChannelMsg::RequestPty {
                want_reply,
                term,
                col_width,
                row_height,
                ..
            }) => {
                pty = Some(Pty {
                    term,
                    cols: dim(col_width, 80),
                    rows: dim(row_height, 24),
                });
                reply(true, want_reply).await;
            }
            Some(ChannelMsg::SetEnv {
                want_reply,
                variable_name,
                variable_value,
            }) => {
                let ok = env_ok(&variable_name);
                if ok {
                    env.insert(variable_name, variable_value);
                }
                reply(ok, want_reply).await;
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            }) => {
                if let Some(p) = pty.as_mut() {
                    p.cols = dim(col_width, p.cols);
                    p.rows = dim(row_height, p.rows);
                }
            }
            Some(ChannelMsg::RequestShell { want_reply }) => {
                reply(true, want_reply).await;
                break Run::Shell;
            }
            Some(ChannelMsg::Exec {
                want_reply,
                command,
            }) => {
                let ok = command.len() <= terminal::MAX_COMMAND;
                reply(ok, want_reply).await;
                if !ok {
                    continue;
                }
                break Run::Command(String::from_utf8_lossy(&command).into_owned());
            }
            Some(ChannelMsg::RequestSubsystem { want_reply, name }) => {
                let ok = name == "sftp";
                reply(ok, want_reply).await;
                if ok {
                    break Run::Sftp;
                }
            }
            Some(ChannelMsg::Eof) => {}
            Some(ChannelMsg::Close) | None => return,
            Some(ChannelMsg::AgentForward { want_reply })
            | Some(ChannelMsg::RequestX11 { want_reply, .. }) => {
                reply(false, want_reply).await;
            }
            Some(_) => {}
        }
    };

    // The terminal URL: a PTY for shells and `ssh -t CMD`, pipes otherwise.
    let (mut query, exec) = terminal_query(&run, pty.as_ref(), &env);

    let mut out = tx.make_writer();
    let mut err = tx.make_writer_ext(Some(1));
    let finish = |code: u32| {
        let tx = &tx;
        async move {
            let _ = tx.exit_status(code).await;
            let _ = tx.eof().await;
            let _ = tx.close().await;
        }
    };

    let connected = connect_terminal(&ctx, &target, peer, &query).await;
    let mut ws = match connected {
        Ok(ws) => ws,
        Err(msg) => {
            let _ = err.write_all(format!("warren: {msg}\r\n").as_bytes()).await;
            let _ = err.flush().await;
            finish(255).await;
            return;
        }
    };
    ctx.metrics.ssh_channels.inc();

    let mut code: Option<i32> = None;
    let mut gone: Option<String> = None;
    // Where this channel stands in the terminal's output, so that a stream
    // lost to a node or relay hiccup resumes exactly (PTY channels only:
    // an exec's pipes do not outlive their stream).
    let mut cursor = Cursor::default();
    loop {
        let mut lost: Option<String> = None;
        tokio::select! {
            m = rx.wait() => match m {
                Some(ChannelMsg::Data { data }) => {
                    let frame = if exec {
                        let mut v = Vec::with_capacity(data.len() + 1);
                        v.push(stream_byte::STDIN);
                        v.extend_from_slice(&data);
                        v
                    } else {
                        data.to_vec()
                    };
                    if ws.send(Message::Binary(frame.into())).await.is_err() {
                        lost = Some("the connection to the session was lost".into());
                    }
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) if !exec => {
                    let msg = ClientMsg::Resize { cols: dim(col_width, 80), rows: dim(row_height, 24) };
                    let _ = ws.send(Message::Text(msg.to_text().into())).await;
                }
                Some(ChannelMsg::Eof) if exec => {
                    let _ = ws.send(Message::Text(ClientMsg::Eof.to_text().into())).await;
                }
                Some(ChannelMsg::Close) | None => {
                    let _ = ws.close(None).await;
                    return;
                }
                Some(_) => {}
            },
            f = ws.next() => match f {
                Some(Ok(Message::Binary(b))) => {
                    if !exec {
                        cursor.on_bytes(b.len());
                    }
                    let written = match (exec, b.first()) {
                        (false, _) => out.write_all(&b).await,
                        (true, Some(&stream_byte::STDOUT)) => out.write_all(&b[1..]).await,
                        (true, Some(&stream_byte::STDERR)) => err.write_all(&b[1..]).await,
                        (true, _) => Ok(()),
                    };
                    if written.is_err() {
                        let _ = ws.close(None).await;
                        return;
                    }
                }
                Some(Ok(Message::Text(t))) => match ServerMsg::parse(&t) {
                    ServerMsg::Exit { code: c } => code = Some(c),
                    hello @ ServerMsg::Hello { .. } => {
                        if let Err(msg) = hello.check_version() {
                            warn!(session = %target.session, "terminal refused: {msg}");
                            gone = Some(msg);
                            break;
                        }
                        cursor.on_message(&hello);
                    }
                    ServerMsg::Gap { from, to } => {
                        cursor.on_message(&ServerMsg::Gap { from, to });
                        let lost = to.saturating_sub(from);
                        warn!(session = %target.session, lost, "ssh bridge fell behind the terminal; output skipped");
                        let _ = err.write_all(format!("\r\nwarren: {lost} bytes of output were skipped\r\n").as_bytes()).await;
                    }
                    ServerMsg::Unknown => {}
                },
                Some(Ok(Message::Close(frame))) => {
                    if code.is_none() {
                        let going_away = frame.as_ref().is_some_and(|f| u16::from(f.code) == terminal::close::GOING_AWAY);
                        let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                        let why = if why.is_empty() { "the session's terminal closed".to_string() } else { why };
                        // An agent that restarts says so: its shells live on.
                        if going_away {
                            lost = Some(why);
                        } else {
                            gone = Some(why);
                            break;
                        }
                    } else {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                other => {
                    if code.is_some() {
                        break;
                    }
                    lost = Some(format!("the stream ended: {:?}", other.map(|r| r.err())));
                }
            },
        }
        let Some(why) = lost else { continue };
        if exec || cursor.terminal.is_none() {
            warn!(session = %target.session, "terminal stream ended early: {why}");
            gone = Some("the session's node was lost".into());
            break;
        }
        // Resume where this channel stands; the user sees nothing but a pause.
        info!(session = %target.session, offset = ?cursor.offset, "terminal stream lost ({why}); resuming");
        cursor.resume(&mut query);
        match resume_terminal(&ctx, &target, peer, &query).await {
            Ok(new) => ws = new,
            Err(msg) => {
                gone = Some(msg);
                break;
            }
        }
    }
    let _ = out.flush().await;
    if let Some(msg) = gone {
        let _ = err
            .write_all(format!("\r\nwarren: {msg}\r\n").as_bytes())
            .await;
        let _ = err.flush().await;
    }
    // Exit codes of signals (128+n) pass as they are; anything odd is 255.
    let status = code.and_then(|c| u32::try_from(c).ok()).unwrap_or(255);
    finish(status).await;
}

/// How long an SSH channel keeps trying to resume a lost terminal stream.
const RESUME_WINDOW: Duration = Duration::from_secs(30);

type TerminalSocket = tokio_tungstenite::WebSocketStream<TunnelStream>;

/// Opens the terminal WebSocket over a tunnel stream.
async fn connect_terminal(
    ctx: &SshContext,
    target: &Target,
    peer: SocketAddr,
    query: &TerminalQuery,
) -> Result<TerminalSocket, String> {
    let url = format!(
        "ws://{}.ssh{}?{}",
        target.session,
        terminal::PATH,
        query.to_query()
    );
    tokio::time::timeout(OPEN_TIMEOUT, async {
        let stream = open_stream(ctx, target, StreamKind::Terminal, peer).await?;
        // A small read buffer: tungstenite touches all of it on every read.
        let config = WebSocketConfig::default()
            .max_message_size(Some(terminal::MAX_MESSAGE))
            .max_frame_size(Some(terminal::MAX_MESSAGE))
            .read_buffer_size(16 * 1024);
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| format!("the session's terminal did not answer: {e}"))
    })
    .await
    .unwrap_or_else(|_| Err("the session's node did not answer in time".into()))
}

/// Reconnects a lost terminal stream (the node or its tunnel came back),
/// for up to [`RESUME_WINDOW`], with backoff.
async fn resume_terminal(
    ctx: &SshContext,
    target: &Target,
    peer: SocketAddr,
    query: &TerminalQuery,
) -> Result<TerminalSocket, String> {
    let deadline = tokio::time::Instant::now() + RESUME_WINDOW;
    let mut wait = Duration::from_millis(100);
    loop {
        match connect_terminal(ctx, target, peer, query).await {
            Ok(ws) => return Ok(ws),
            Err(e) if tokio::time::Instant::now() + wait >= deadline => {
                return Err(format!(
                    "the session's terminal was lost and did not come back ({e})"
                ));
            }
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The agent's terminal query for what the channel asked to run, and
/// whether it runs on pipes (exec mode).
fn terminal_query(
    run: &Run,
    pty: Option<&Pty>,
    env: &BTreeMap<String, String>,
) -> (TerminalQuery, bool) {
    let mut q = TerminalQuery::default();
    let (command, exec) = match (run, pty) {
        (Run::Sftp, _) => (Some(SFTP_COMMAND), true),
        (Run::Shell, None) => (Some(PLAIN_SHELL), true),
        (Run::Command(c), None) => (Some(c.as_str()), true),
        (Run::Shell, Some(_)) => (None, false),
        (Run::Command(c), Some(_)) => (Some(c.as_str()), false),
    };
    q.command = command.map(str::to_string);
    q.exec = exec;
    let term = match pty {
        Some(p) => {
            (q.cols, q.rows) = terminal::clamp_size(p.cols, p.rows);
            Some(p.term.as_str()).filter(|t| !t.is_empty())
        }
        None => env.get("TERM").map(String::as_str),
    };
    if let Some(t) = term {
        q.env.insert("TERM".into(), t.into());
    }
    if let Some(l) = env.get("LANG") {
        q.env.insert("LANG".into(), l.clone());
    }
    (q, exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_key_ipv6_by_64_and_ipv4_by_address() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        assert_eq!(
            address_key(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped())),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_ne!(
            address_key(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            address_key(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
        );
        // 20 failures spread over one /64 count as one address.
        let l = FailureLimiter::default();
        let mut reached = false;
        for i in 0..MAX_FAILURES {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, i as u16 + 1));
            reached = l.fail(ip);
        }
        assert!(reached);
        assert!(l.limited(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9))));
        assert!(!l.limited(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1))));
    }

    #[test]
    fn failures_are_limited_per_address() {
        let l = FailureLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for i in 1..MAX_FAILURES {
            assert!(!l.fail(a), "limit reached early at {i}");
            assert!(!l.limited(a));
        }
        assert!(l.fail(a));
        assert!(l.limited(a));
        assert!(!l.limited(b), "another address is not affected");
    }

    #[test]
    fn host_key_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("wr-ssh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let k1 = host_key(&dir).expect("made");
        let k2 = host_key(&dir).expect("loaded");
        assert_eq!(fingerprint(k1.public_key()), fingerprint(k2.public_key()));
        assert!(public_line(&k1).starts_with("ssh-ed25519 "));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(HOST_KEY_FILE))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(dim(0, 80), 80);
        assert_eq!(dim(100_000, 80), 1000);
        assert_eq!(dim(132, 80), 132);
    }
}
