//! `warren control`, `warren relay`, `warren agent`: each part on its own.
use std::path::PathBuf;

use anyhow::Context;

use super::{Ctx, HOST_ROOT_WARNING, shutdown_on_signals};

pub async fn control(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = warren_config::load_control(config.as_deref())?;
    let l = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let stop = shutdown_on_signals();
    let r = warren_control::start(cfg, l, stop).await?;
    if let Some(k) = &r.admin_key {
        println!("admin API key (shown once): {k}");
    }
    let _ = r.task.await;
    Ok(())
}

pub async fn relay(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = warren_config::load_relay(config.as_deref())?;
    let listeners = warren_relay::Listeners::bind(&cfg)?;
    let stop = shutdown_on_signals();
    let control = warren_relay::control_plane(&cfg)?;
    let relay = warren_relay::start(cfg, listeners, control, stop.clone()).await?;
    stop.cancelled().await;
    relay.stopped().await;
    Ok(())
}

/// `warren agent`: a worker's agent. Joins with a token once, then
/// reconnects with its credential.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// Agent config file (docs/configuration.md, config/examples/agent.toml).
    /// `WARREN_AGENT_*` variables override it, and these flags override both.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Control plane URL to join and report to (`control_url`; the
    /// global `--control-url` means the same).
    #[arg(long)]
    control: Option<String>,
    /// One-time join token from `warren node token` (needs a control URL).
    #[arg(long)]
    join: Option<String>,
    /// Memory offered to sessions in MB (`memory_mb`; default: host memory less a reserve).
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Where the credential and per-session state are kept (`data_dir`;
    /// default /var/lib/warren/agent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Node id to join as (`node_id`; default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// Default session image (`docker.default_image`; default warren/session:dind).
    #[arg(long)]
    image: Option<String>,
    /// Run sessions as root on this worker (privileged Docker-in-Docker):
    /// any tenant can then take this host and every session on it. Off by
    /// default: sessions run in the isolated `default` profile
    /// (docs/security.md).
    #[arg(long)]
    allow_host_root_sessions: bool,
}

pub async fn agent(args: AgentArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let AgentArgs {
        config,
        control,
        join,
        memory_mb,
        data_dir,
        node_id,
        image,
        allow_host_root_sessions,
    } = args;
    use warren_config::figment::providers::Serialized;
    let control = control.or(ctx.control_url.clone());
    let cfg = warren_config::load_agent(
        config.as_deref(),
        Box::new(|mut f| {
            if let Some(v) = control {
                f = f.merge(Serialized::default("control_url", v));
            }
            if let Some(v) = memory_mb {
                f = f.merge(Serialized::default("memory_mb", v));
            }
            if let Some(v) = data_dir {
                f = f.merge(Serialized::default("data_dir", v));
            }
            if let Some(v) = node_id {
                f = f.merge(Serialized::default("node_id", v));
            }
            if let Some(v) = image {
                f = f.merge(Serialized::default("docker.default_image", v));
            }
            if allow_host_root_sessions {
                f = f.merge(Serialized::default("docker.allow_host_root_sessions", true));
            }
            f
        }),
    )?;
    if cfg.docker.allow_host_root_sessions {
        eprintln!("{HOST_ROOT_WARNING}");
    }
    let stop = shutdown_on_signals();
    let opts = warren_agent::RunOptions {
        join_token: join,
        ..Default::default()
    };
    warren_agent::run(cfg, opts, stop).await
}
