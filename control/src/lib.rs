//! `warren-control`: the control plane.
//!
//! Tenants, API keys (stored hashed), sessions with TTL and idle timeout,
//! scheduling by memory headroom (spread or binpack, reserved in the same
//! transaction as the choice), short-lived Ed25519 session tokens with a
//! JWKS, worker join tokens, drain/cordon, an audit log. The store is sqlx
//! on SQLite by default and PostgreSQL for several replicas.
//!
//! Agents talk to the internal API: join (a one-time token for a node
//! credential), heartbeat (memory and the state of their sessions), and
//! watch (a long poll on a version index for the sessions they should run).
//! Relays ask it for `session → node` routes and to check node credentials.
#![forbid(unsafe_code)]

pub mod api;
pub mod edge;
pub mod images;
pub mod issuer;
pub mod limits;
pub mod pieces;
pub mod sshkeys;
pub mod starting;
pub mod store;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_config::ControlConfig;

use crate::store::{NewAudit, Store};
pub use issuer::Issuer;

pub use warren_proto::is_session_id;

pub struct Control {
    pub cfg: ControlConfig,
    pub store: Store,
    pub issuer: Issuer,
    /// Creates waiting for their session to leave `pending`.
    pub starting: starting::Starting,
    pub limits: limits::Limits,
    /// Placement latency: a create's answer, from the request to the
    /// session running (or failing).
    pub placement: prometheus::Histogram,
    /// Cancelled when the API stops: long-lived answers (event streams)
    /// end then instead of holding the shutdown up.
    pub stopping: CancellationToken,
    /// The way to sessions for exec and files (`None`: no relay known).
    pub edge: Option<edge::Edge>,
    /// Writes recording pieces in groups (one transaction for many).
    pub pieces: pieces::Pieces,
}

/// A running control plane.
pub struct Running {
    pub control: Arc<Control>,
    /// The admin key, when this start made it (first start without one configured).
    pub admin_key: Option<String>,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn database_url(cfg: &ControlConfig) -> String {
    match &cfg.database_url {
        Some(u) => u.expose().to_string(),
        None => format!("sqlite://{}", cfg.data_dir.join("warren.db").display()),
    }
}

/// Opens the store, makes the default tenant, the admin key and the signing
/// key if missing, and serves the API on `listener` until `shutdown`.
// Boxed here, and not an `async fn`, so that control's async code (every
// future it awaits and spawns) is compiled once, in this crate, which
// builds beside the others: an `async fn` awaited from another crate is
// compiled in that crate, and the `warren` binary's library compiled all
// of it again, alone at the end of the build (docs/benchmarks.md, "A
// fresh clone to a terminal").
pub fn start(
    cfg: ControlConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> futures_util::future::BoxFuture<'static, anyhow::Result<Running>> {
    Box::pin(start_control(cfg, listener, shutdown))
}

async fn start_control(
    cfg: ControlConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    // A pool's image reaches every worker: it passes what a create's
    // would (the engine's grammar, the allowed registries and images), or
    // workers would keep warm what no tenant may claim.
    for (i, p) in api::internal::warm_pools(&cfg).iter().enumerate() {
        let bad = |e: String| anyhow::anyhow!("invalid value for `pools[{i}].image`: {e}");
        warren_proto::validate::image_reference(&p.image).map_err(bad)?;
        if warren_proto::sandbox::is_snapshot_name(&p.image) {
            return Err(bad(
                "a snapshot belongs to one tenant; it cannot be warmed".into()
            ));
        }
        if let Some(registry) = api::image_registry(&p.image)
            && !cfg
                .sessions
                .allowed_registries
                .iter()
                .any(|r| r == registry)
        {
            return Err(bad(format!(
                "{registry} is not in sessions.allowed_registries"
            )));
        }
        images::image_allowed(&p.image, "", &cfg.sessions.allowed_images).map_err(bad)?;
    }
    let store = Store::open(&database_url(&cfg))
        .await
        .context("opening the database")?;
    let d = &cfg.sessions;
    store
        .ensure_tenant(
            "default",
            "default",
            d.tenant_max_sessions as i64,
            d.tenant_max_memory_mb as i64,
        )
        .await?;
    let mut made_admin = None;
    match &cfg.admin_api_key {
        Some(k) => {
            store.ensure_admin_key("default", k.expose()).await?;
        }
        None => {
            let file = cfg.data_dir.join("admin.key");
            if !file.exists() {
                let key = store::random_secret("wa");
                store.add_api_key("default", &key, true).await?;
                warren_config::write_private(&file, key.as_bytes())?;
                info!(file = %file.display(), "made an admin API key");
                made_admin = Some(key);
            }
        }
    }
    let (kid, pem) = store.signing_key().await?;
    let x = store
        .public_keys()
        .await?
        .into_iter()
        .find(|(k, _)| *k == kid)
        .map(|(_, x)| x)
        .context("the signing key has no public half")?;
    let issuer = Issuer::new(kid, &pem, &x, cfg.sessions.token_ttl_secs).context("signing key")?;
    let edge = edge::Edge::new(&cfg);
    let pieces = pieces::Pieces::start(store.clone());
    let control = Arc::new(Control {
        cfg,
        store,
        pieces,
        issuer,
        starting: Default::default(),
        limits: Default::default(),
        placement: prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "warren_control_placement_seconds",
                "session create to running (placement, container start, report)",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
        )
        .context("placement histogram")?,
        stopping: shutdown.clone(),
        edge,
    });
    info!(addr = %listener.local_addr()?, db = %redact(&database_url(&control.cfg)), "control plane listening");

    let app = api::router(control.clone());
    let sd = shutdown.clone();
    // Background work is tracked and stopped with the API, never aborted.
    let tasks = tokio_util::task::TaskTracker::new();
    let background = shutdown.child_token();
    tasks.spawn(reap(control.clone(), background.clone()));
    tasks.spawn(follow(control.clone(), background.clone()));
    tasks.close();
    let tls = match &control.cfg.tls {
        Some(t) => Some(tls::acceptor(t).context("control's TLS certificate")?),
        None => None,
    };
    let task = tokio::spawn(async move {
        tls::serve(listener, tls, app, sd).await;
        background.cancel();
        tasks.wait().await;
    });
    Ok(Running {
        control,
        admin_key: made_admin,
        task,
    })
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(a), Some(b)) if b > a => format!("{}://***{}", &url[..a], &url[b..]),
        _ => url.to_string(),
    }
}

/// Follows desired-state changes for every watch on this replica: at once
/// after a local change, every 500 ms for other replicas'.
async fn follow(c: Arc<Control>, shutdown: CancellationToken) {
    loop {
        // Registered before looking, so a change made meanwhile is not missed.
        let local = c.store.changed();
        tokio::pin!(local);
        local.as_mut().enable();
        if let Err(e) = c.store.follow_changes().await {
            warn!("following desired-state changes: {e}");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = local => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

/// How long session events are kept for `Last-Event-ID`, and how many.
const EVENTS_MAX_AGE_MS: i64 = 24 * 3600 * 1000;
const EVENTS_KEPT: i64 = 100_000;

/// Marks silent nodes lost and stops expired or idle sessions, every second.
async fn reap(c: Arc<Control>, shutdown: CancellationToken) {
    let timeout = c.cfg.scheduler.heartbeat_timeout_secs as i64 * 1000;
    let grace = c.cfg.scheduler.node_lost_grace_secs as i64 * 1000;
    let grant_idle_ms = c.cfg.auth.grant_idle_secs as i64 * 1000;
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match c.store.mark_lost(timeout, grace).await {
            Ok((unreachable, lost)) => {
                for n in &unreachable {
                    warn!(node = %n, "node unreachable: no heartbeat; its sessions stay up");
                }
                for n in &lost {
                    warn!(node = %n, "node lost: no heartbeat");
                }
                let moved = unreachable
                    .iter()
                    .map(|n| ("node.unreachable", n))
                    .chain(lost.iter().map(|n| ("node.lost", n)));
                for (action, n) in moved {
                    c.store
                        .audit(NewAudit {
                            actor: "control",
                            tenant: "",
                            action,
                            target: n,
                            detail: "no heartbeat",
                            ..NewAudit::OK
                        })
                        .await;
                }
            }
            Err(e) => warn!("lost-node check failed: {e}"),
        }
        match c.store.expire().await {
            Ok(expired) => {
                for (id, tenant, reason) in &expired {
                    info!(session = %id, %reason, "stopping session");
                    c.store
                        .audit(NewAudit {
                            actor: "control",
                            tenant,
                            action: "session.expire",
                            target: id,
                            detail: reason,
                            ..NewAudit::OK
                        })
                        .await;
                }
            }
            Err(e) => warn!("expiry check failed: {e}"),
        }
        // Grants of sessions that ended, or idle past their time, go
        // (about once a minute: a grant is refused on use anyway).
        if tick.is_multiple_of(60)
            && let Err(e) = c.store.purge_grants(grant_idle_ms).await
        {
            warn!("grant purge failed: {e}");
        }
        // Snapshots whose commit never finished (control restarted
        // mid-commit): forgotten, and their workers remove the images.
        if tick.is_multiple_of(60)
            && let Err(e) = c
                .store
                .purge_unfinished_snapshots(api::SNAPSHOT_COMMIT_LIMIT_MS)
                .await
        {
            warn!("snapshot purge failed: {e}");
        }
        // Ended share links, and recordings past their keeping time.
        if tick.is_multiple_of(60) {
            let now = crate::store::now_ms();
            if let Err(e) = c.store.purge_shares(now - 3600 * 1000).await {
                warn!("share purge failed: {e}");
            }
            let keep = c.cfg.sessions.recording_keep_hours as i64 * 3600 * 1000;
            if let Err(e) = c.store.purge_recordings(now - keep).await {
                warn!("recording purge failed: {e}");
            }
        }
        // Session events are for streams to catch up, not an archive.
        if tick.is_multiple_of(60)
            && let Err(e) = c.store.prune_events(EVENTS_MAX_AGE_MS, EVENTS_KEPT).await
        {
            warn!("event prune failed: {e}");
        }
        tick = tick.wrapping_add(1);
    }
}
