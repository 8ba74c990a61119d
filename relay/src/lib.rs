//! `warren-relay`: the edge.
//!
//! Pingora (rustls) terminates TLS with a wildcard certificate and routes by
//! Host and SNI: `<sid>.<domain>` serves the embedded terminal page and
//! proxies `/_warren/terminal`; `<port>-<sid>.<domain>` proxies everything to
//! that port of the session; `api.<domain>` goes to the control plane. Every
//! upstream connection is a QUIC stream to the session's node, opened by a
//! custom L4 connector. Session tokens (Ed25519 JWTs) are checked here,
//! before anything reaches an agent.
//!
//! # Layout
//! - [`host`]: Host/SNI → route; [`auth`]: JWT verification; [`pages`]:
//!   error answers. Plain functions, tested alone.
//! - [`access`]: the one access rule (token, session, scope → grant or
//!   denial) for the web and SSH; [`limits`]: per-address counters.
//! - [`routes`]: the [`ControlPlane`] trait (routes, node credentials, SSH
//!   keys, audit, refresh grants) with a cache, and its static backing;
//!   [`control`]: its backing by control's internal API.
//! - [`http`]: the Pingora callbacks around a pure policy function
//!   ([`http::decide`]); [`connector`]: Pingora ↔ QUIC.
//! - [`ssh`]: the SSH server, bridging channels to terminal WebSockets.
//! - [`certs`]: certificates; [`metrics`]: Prometheus; [`assets`]: the web UI.
#![forbid(unsafe_code)]

pub mod access;
pub mod assets;
pub mod auth;
pub mod certs;
pub mod conn_cap;
pub mod connector;
pub mod control;
pub mod host;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod pages;
pub mod routes;
pub mod ssh;

use std::any::Any;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{ListenerConfig, TlsAccept};
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::protocols::tls::TlsRef;
use pingora::server::configuration::ServerConf;
use pingora::services::Service as _;
use tokio_util::sync::CancellationToken;
use tracing::info;
use warren_config::RelayConfig;
use warren_tunnel::server::{NodeAuthenticator, Registry};

use crate::access::Access;
use crate::auth::{KeySource, Verifier};
use crate::http::{Policy, RelayProxy, Sni};
use crate::metrics::Metrics;
use crate::routes::{ControlPlane, RouteCache};

/// Sockets the relay serves on, bound by the caller (tests use port 0).
pub struct Listeners {
    pub https: std::net::TcpListener,
    pub http: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
    pub tunnel: std::net::UdpSocket,
    /// SSH (2222 by default); `None` serves no SSH.
    pub ssh: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds the addresses in the configuration.
    pub fn bind(cfg: &RelayConfig) -> anyhow::Result<Self> {
        let tcp = |a| std::net::TcpListener::bind(a).with_context(|| format!("binding {a}"));
        Ok(Self {
            https: tcp(cfg.https.listen)?,
            http: cfg.http.as_ref().map(|h| tcp(h.listen)).transpose()?,
            admin: cfg.admin.as_ref().map(|h| tcp(h.listen)).transpose()?,
            tunnel: std::net::UdpSocket::bind(cfg.tunnel.listen)
                .with_context(|| format!("binding UDP {}", cfg.tunnel.listen))?,
            ssh: cfg.ssh.as_ref().map(|h| tcp(h.listen)).transpose()?,
        })
    }
}

/// A running relay.
pub struct Relay {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub verifier: Arc<Verifier>,
    pub routes: Arc<RouteCache>,
    /// The development CA clients should trust, when one was made.
    pub ca_file: Option<std::path::PathBuf>,
    /// The SSH host key (`ssh-ed25519 …`) and its fingerprint, when SSH is served.
    pub ssh_host_key: Option<(String, String)>,
    tasks: tokio_util::task::TaskTracker,
}

impl Relay {
    /// Waits until every task has stopped (after `shutdown` was cancelled).
    pub async fn stopped(self) {
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
    }
}

struct SniCapture;

#[async_trait]
impl TlsAccept for SniCapture {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        tls.server_name()
            .map(|n| Arc::new(Sni(n.to_string())) as Arc<dyn Any + Send + Sync>)
    }
}

/// The PEM CA named by `control.ca_file`, if any.
fn control_ca(cfg: &RelayConfig) -> anyhow::Result<Option<String>> {
    match cfg.control.as_ref().and_then(|c| c.ca_file.as_ref()) {
        Some(p) => Ok(Some(std::fs::read_to_string(p).with_context(|| {
            format!("reading control.ca_file {}", p.display())
        })?)),
        None => Ok(None),
    }
}

/// The control plane `cfg` names: control's internal API when `control` is
/// set, else the static `routes` with the tunnel's shared node secret.
pub fn control_plane(cfg: &RelayConfig) -> anyhow::Result<Arc<dyn ControlPlane>> {
    Ok(match &cfg.control {
        Some(c) => Arc::new(control::ControlClient::with_ca(
            &c.url,
            c.secret.expose(),
            control_ca(cfg)?.as_deref(),
        )?),
        None => {
            let s = routes::StaticRoutes::new(cfg.tunnel.node_secret.expose());
            for r in &cfg.routes {
                s.insert(&r.session, &r.node, &r.tenant);
            }
            Arc::new(s)
        }
    })
}

/// Starts the relay on `listeners`; it runs until `shutdown` is cancelled.
/// `control` is the relay's one view of the control plane
/// ([`control_plane`] builds it from the configuration).
// Boxed here, and not an `async fn`, so that the relay's async code (every
// future it awaits and spawns) is compiled once, in this crate, which
// builds beside the others: an `async fn` awaited from another crate is
// compiled in that crate, and the `warren` binary's library compiled all
// of it again, alone at the end of the build (docs/benchmarks.md, "A
// fresh clone to a terminal").
pub fn start(
    cfg: RelayConfig,
    listeners: Listeners,
    control: Arc<dyn ControlPlane>,
    shutdown: CancellationToken,
) -> futures_util::future::BoxFuture<'static, anyhow::Result<Relay>> {
    Box::pin(start_relay(cfg, listeners, control, shutdown))
}

async fn start_relay(
    cfg: RelayConfig,
    listeners: Listeners,
    control: Arc<dyn ControlPlane>,
    shutdown: CancellationToken,
) -> anyhow::Result<Relay> {
    let certs = match (&cfg.https.cert_file, &cfg.https.key_file) {
        (Some(c), Some(k)) => certs::CertPaths {
            cert: c.clone(),
            key: k.clone(),
            ca: None,
        },
        _ => certs::dev_certificate(&cfg.data_dir, &cfg.domain, cfg.preview_domain.as_deref())?,
    };
    let cert_pem =
        std::fs::read(&certs.cert).with_context(|| format!("reading {}", certs.cert.display()))?;
    let key_pem =
        std::fs::read(&certs.key).with_context(|| format!("reading {}", certs.key.display()))?;
    let metrics = Arc::new(Metrics::new());
    let source = match (&cfg.auth.jwks_file, &cfg.auth.jwks_url) {
        (Some(f), _) => KeySource::File(f.clone()),
        (None, Some(u)) => KeySource::Url(u.clone()),
        (None, None) => anyhow::bail!("auth: set jwks_file or jwks_url"),
    };
    let verifier = Verifier::with_ca(&cfg.auth.audience, source, control_ca(&cfg)?.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("loading session-token keys: {e}"))?
        .with_metrics(metrics.clone());
    let registry = Arc::new(Registry::default());
    let routes = Arc::new(RouteCache::new(control.clone(), Duration::from_secs(30)));
    let tasks = tokio_util::task::TaskTracker::new();

    // The tunnel listener (QUIC), with the same certificate.
    // Kept in the data dir so that after a crash the restarted relay's
    // stateless resets reach the agents of the old one within a keepalive.
    let reset_file = cfg.data_dir.join("tunnel-reset.key");
    let reset = warren_tunnel::reset::ResetKey::load_or_create(&reset_file)
        .with_context(|| format!("tunnel reset key {}", reset_file.display()))?;
    let endpoint = warren_tunnel::server::from_socket_with_reset(
        listeners.tunnel,
        &cert_pem,
        &key_pem,
        warren_tunnel::DEFAULT_IDLE_TIMEOUT,
        &reset,
    )?;
    info!(addr = %endpoint.local_addr()?, "tunnel listening");
    tasks.spawn(warren_tunnel::server::serve(
        endpoint,
        registry.clone(),
        control.clone() as Arc<dyn NodeAuthenticator>,
        shutdown.clone(),
    ));
    {
        let (registry, metrics, shutdown) = (registry.clone(), metrics.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                metrics.tunnel_nodes.set(registry.node_ids().len() as i64);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
    }

    crate::http::answers::set_hsts_max_age(cfg.https.hsts_max_age_secs);
    // The HTTP(S) proxy on Pingora, driven on this runtime.
    let conf = Arc::new(ServerConf::default());
    let proxy = RelayProxy {
        refresh_limiter: crate::limits::FailureLimiter::new(
            crate::http::REFRESH_LIMIT,
            std::time::Duration::from_secs(60),
        ),
        exchange_limiter: crate::limits::FailureLimiter::new(
            crate::http::EXCHANGE_LIMIT,
            std::time::Duration::from_secs(60),
        ),
        control_tls: match &cfg.control {
            Some(c) => {
                crate::http::proxy::ControlTls::from_url(&c.url, control_ca(&cfg)?.as_deref())?
            }
            None => None,
        },
        policy: Policy {
            domain: cfg.domain.clone(),
            preview_domain: cfg.preview_domain.clone(),
            control: cfg.control_upstream,
        },
        access: Access {
            verifier: verifier.clone(),
            routes: routes.clone(),
        },
        registry: registry.clone(),
        metrics: metrics.clone(),
        control: control.clone(),
    };
    let mut service = pingora::proxy::http_proxy_service_with_name(&conf, proxy, "warren-relay");
    let fds: pingora::server::ListenFds =
        Arc::new(parking_lot::Mutex::new(pingora::server::Fds::new()));
    let https_addr = listeners.https.local_addr()?.to_string();
    let cert_path = certs.cert.to_string_lossy().to_string();
    let key_path = certs.key.to_string_lossy().to_string();
    let mut tls = TlsSettings::with_callbacks(Box::new(SniCapture))
        .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
    tls.set_certificate_chain_file(&cert_path)
        .map_err(|e| anyhow::anyhow!("certificate {cert_path}: {e}"))?;
    tls.set_private_key_file(&key_path)
        .map_err(|e| anyhow::anyhow!("key {key_path}: {e}"))?;
    tls.enable_h2();
    listeners.https.set_nonblocking(true)?;
    fds.lock()
        .add(https_addr.clone(), listeners.https.into_raw_fd());
    // No read buffer in front of TLS: Pingora's default is 64 KiB per
    // connection, where rustls reads its records itself (measured: 8.5 KB
    // less resident memory per idle terminal). Uploads cost a few more reads.
    service.add_listener(
        ListenerConfig::tcp(&https_addr)
            .tls(tls)
            .l4_buffer(L4BufferSettings::default().read(0)),
    );
    // Connections per client address, capped before the TLS handshake.
    service
        .endpoints()
        .set_pre_tls_callback(Arc::new(crate::conn_cap::PerAddress::new(
            cfg.https.max_connections_per_address,
        )));
    info!(addr = %https_addr, domain = %cfg.domain, "https listening");
    if let Some(http) = listeners.http {
        let addr = http.local_addr()?.to_string();
        http.set_nonblocking(true)?;
        fds.lock().add(addr.clone(), http.into_raw_fd());
        service.add_listener(
            ListenerConfig::tcp(&addr).l4_buffer(L4BufferSettings::default().read(0)),
        );
        info!(%addr, "plain http listening (loopback only)");
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            shutdown.cancelled().await;
            let _ = tx.send(true);
        });
    }
    tasks.spawn(async move {
        service.start_service(Some(fds), rx, 1).await;
    });

    if let Some(admin) = listeners.admin {
        admin.set_nonblocking(true)?;
        let admin = tokio::net::TcpListener::from_std(admin)?;
        info!(addr = %admin.local_addr()?, "admin (metrics) listening");
        let m = metrics.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let m = m.clone();
                    async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok\n" }));
        let sd = shutdown.clone();
        tasks.spawn(async move {
            let _ = axum::serve(admin, app)
                .with_graceful_shutdown(async move { sd.cancelled().await })
                .await;
        });
    }
    let mut ssh_host_key = None;
    if let Some(listener) = listeners.ssh {
        let key = ssh::host_key(&cfg.data_dir)?;
        let line = ssh::public_line(&key);
        let fp = ssh::fingerprint(key.public_key());
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        info!(addr = %listener.local_addr()?, fingerprint = %fp, "ssh listening");
        let ctx = Arc::new(ssh::SshContext {
            access: Access {
                verifier: verifier.clone(),
                routes: routes.clone(),
            },
            source: control.clone(),
            registry: registry.clone(),
            limiter: Default::default(),
            preauth: Default::default(),
            login_grace: ssh::LOGIN_GRACE,
            metrics: metrics.clone(),
        });
        tasks.spawn(ssh::serve(listener, key, ctx, shutdown.clone()));
        // Users pin the host key from the API: keep telling control until
        // it has heard (it may start after the relay).
        let (source, sd, l2, fp2) = (control.clone(), shutdown.clone(), line.clone(), fp.clone());
        tasks.spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                match source.publish_host_key(&l2, &fp2).await {
                    Ok(()) => return,
                    Err(e) => tracing::debug!("publishing the SSH host key: {e}"),
                }
                tokio::select! {
                    _ = sd.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
        ssh_host_key = Some((line, fp));
    }
    Ok(Relay {
        registry,
        metrics,
        verifier,
        routes,
        ca_file: certs.ca,
        ssh_host_key,
        tasks,
    })
}
