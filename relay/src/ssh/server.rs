//! The SSH server: the relay's host key, the accept loop with its limits
//! (connections, unauthenticated connections per address, login grace),
//! and the per-connection handler that hands logins to [`super::auth`] and
//! channels to [`super::bridge`].
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use russh::keys::ssh_key::{self, LineEnding};
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelOpenFailure, MethodKind, MethodSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_tunnel::server::Registry;

use super::bridge;
use crate::access::Access;
use crate::limits::{FailureLimiter, address_key};
use crate::routes::{ControlPlane, SessionRoute};

/// File name of the host key in the relay's data directory.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// SSH connections served at once.
const MAX_CONNECTIONS: usize = 10_000;
/// Unauthenticated connections one address (IPv6: one /64) may hold.
pub const MAX_PREAUTH_PER_ADDRESS: usize = 10;
/// Default time to authenticate.
pub const LOGIN_GRACE: Duration = Duration::from_secs(30);
/// Session and forwarding channels one connection may hold.
const MAX_CHANNELS: usize = 64;

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

/// What every connection shares.
pub struct SshContext {
    /// The access check tokens (as passwords) go through.
    pub access: Access,
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
pub(super) struct Target {
    pub(super) session: String,
    pub(super) route: SessionRoute,
}

pub(super) struct Conn {
    pub(super) ctx: Arc<SshContext>,
    pub(super) peer: SocketAddr,
    pub(super) target: Option<Target>,
    /// Open channels hold a permit until their task ends.
    channels: Arc<tokio::sync::Semaphore>,
    /// Held until the connection authenticates.
    pub(super) preauth: Option<PreAuthSlot>,
    pub(super) authenticated: Arc<std::sync::atomic::AtomicBool>,
}

impl Conn {
    /// The authenticated session and a channel slot; `None` when the
    /// channel was refused (and told why).
    async fn channel_slot(
        &self,
        reply: ChannelOpenHandle,
    ) -> Option<(Target, tokio::sync::OwnedSemaphorePermit, ChannelOpenHandle)> {
        let Some(target) = self.target.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return None;
        };
        match self.channels.clone().try_acquire_owned() {
            Ok(slot) => Some((target, slot, reply)),
            Err(_) => {
                reply.reject(ChannelOpenFailure::ResourceShortage).await;
                None
            }
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self.password(user, password).await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.publickey(user, key.public_key).await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((target, slot, reply)) = self.channel_slot(reply).await else {
            return Ok(());
        };
        reply.accept().await;
        let (ctx, handle, peer) = (self.ctx.clone(), session.handle(), self.peer);
        tokio::spawn(async move {
            bridge::session_channel(channel, handle, ctx, target, peer).await;
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
        let Some((target, slot, reply)) = self.channel_slot(reply).await else {
            return Ok(());
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
        bridge::forward(channel, reply, &self.ctx, target, port, self.peer, slot).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
