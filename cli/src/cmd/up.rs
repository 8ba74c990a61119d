//! `warren up`: the whole stack on this machine, a first session, and
//! `.warren/up.json` for the other commands.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::client::Client;
use crate::stack::StackOptions;
use anyhow::Context;
use warren_proto::api::UpFile;

use super::{HOST_ROOT_WARNING, shutdown_on_signals};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the stack keeps its state, and writes up.json.
    #[arg(long, default_value = ".warren")]
    data_dir: PathBuf,
    /// Sessions are `<id>.<domain>` (anything under .localhost needs no DNS).
    #[arg(long, default_value = "warren.localhost")]
    domain: String,
    /// Previews at `<port>-<session>.<preview domain>`, another site than
    /// the terminals (default under .localhost: `<first label>-preview.localhost`;
    /// elsewhere previews stay under --domain unless this is given).
    #[arg(long)]
    preview_domain: Option<String>,
    /// The relay's HTTPS port (all addresses).
    #[arg(long, default_value_t = 8443)]
    https_port: u16,
    /// The relay's plain-HTTP port (loopback only).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// The relay's SSH port (all addresses).
    #[arg(long, default_value_t = 2222)]
    ssh_port: u16,
    /// The control plane's API port (loopback only).
    #[arg(long, default_value_t = 7000)]
    api_port: u16,
    /// UDP port of the relay's tunnel listener.
    #[arg(long, default_value_t = 7443)]
    tunnel_port: u16,
    /// Memory the local agent offers to sessions (default: host memory less a reserve).
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Session image (built by scripts/build-images.sh if missing).
    #[arg(long, default_value = "warren/session:dind")]
    image: String,
    /// Install the development CA into the system trust store.
    #[arg(long)]
    trust: bool,
    /// Never run sessions as root on this machine. Without it, where Docker
    /// has no user-namespace remapping (so no isolated Docker-in-Docker),
    /// `warren up`, made for one user on their own machine, runs
    /// Docker-in-Docker sessions as host root and says so (docs/security.md).
    #[arg(long)]
    isolated: bool,
    /// Keep N sessions started ahead of demand: `N` of the session image,
    /// or `IMAGE=N`; repeatable. A create with no options (or that image
    /// and the default size) then takes one at once.
    #[arg(long = "pool", value_name = "[IMAGE=]N", value_parser = parse_pool)]
    pools: Vec<warren_config::PoolConfig>,
}

/// `--pool [IMAGE=]N`.
fn parse_pool(s: &str) -> Result<warren_config::PoolConfig, String> {
    let (image, n) = match s.rsplit_once('=') {
        Some((image, n)) => (Some(image.to_string()), n),
        None => (None, s),
    };
    let size: u32 = n
        .parse()
        .map_err(|_| format!("{n:?} is not a number of warm sessions (expected [IMAGE=]N)"))?;
    let pool = warren_config::PoolConfig {
        image,
        memory_mb: None,
        cpus: None,
        disk_mb: None,
        size,
    };
    pool.check().map_err(|e| e.to_string())?;
    Ok(pool)
}

fn find_script(name: &str) -> Option<PathBuf> {
    let mut dirs = vec![std::env::current_dir().ok()?];
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().map(|p| p.to_path_buf()));
    }
    dirs.into_iter()
        .map(|d| d.join("scripts").join(name))
        .find(|p| p.is_file())
}

async fn image_exists(image: &str) -> bool {
    tokio::process::Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let UpArgs {
        data_dir,
        domain,
        preview_domain,
        https_port,
        http_port,
        ssh_port,
        api_port,
        tunnel_port,
        memory_mb,
        image,
        trust,
        isolated,
        pools,
    } = args;
    // Images first, with progress on the terminal.
    if !image_exists(&image).await {
        let which = match image.as_str() {
            "warren/session:dind" => "dind",
            "warren/session:mini" => "mini",
            other => anyhow::bail!("image {other} is missing; pull or build it first"),
        };
        let script = find_script("build-images.sh")
            .context("scripts/build-images.sh not found: run warren up from the repository")?;
        eprintln!("warren: building session image {image} (about a minute)…");
        let st = tokio::process::Command::new("bash")
            .arg(&script)
            .arg(which)
            .status()
            .await?;
        if !st.success() {
            anyhow::bail!("building {image} failed");
        }
    }
    let stop = shutdown_on_signals();
    let any = |p: u16| -> SocketAddr { SocketAddr::from(([0, 0, 0, 0], p)) };
    let lo = |p: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], p)) };
    let preview_domain = preview_domain.or_else(|| {
        let (first, rest) = domain.split_once('.')?;
        (rest == "localhost").then(|| format!("{first}-preview.localhost"))
    });
    let stack = crate::stack::start(StackOptions {
        data_dir: data_dir.clone(),
        domain: domain.clone(),
        preview_domain: preview_domain.clone(),
        https: any(https_port),
        http: Some(lo(http_port)),
        api: lo(api_port),
        tunnel: lo(tunnel_port),
        ssh: Some(any(ssh_port)),
        memory_mb,
        image: image.clone(),
        network: "warren-sessions".into(),
        node_id: "local".into(),
        labels: BTreeMap::new(),
        session_memory_mb: 1024,
        allow_host_root_sessions: !isolated,
        record_terminals: true,
        pools,
    })
    .await?;
    let profile = stack.agent.runtime().security();
    if profile.is_host_root() {
        eprintln!(
            "{HOST_ROOT_WARNING}\nwarren: (warren up is for one user on their own machine; --isolated turns this off)"
        );
    } else {
        eprintln!("warren: sessions run {}", profile.describe());
    }
    if trust {
        let dest = PathBuf::from("/usr/local/share/ca-certificates/warren-dev-ca.crt");
        std::fs::copy(&stack.ca_file, &dest)
            .with_context(|| format!("installing the CA at {} (run as root)", dest.display()))?;
        let st = tokio::process::Command::new("update-ca-certificates")
            .status()
            .await?;
        eprintln!(
            "warren: development CA installed into the system trust store ({})",
            if st.success() {
                "ok"
            } else {
                "update-ca-certificates failed"
            }
        );
    }
    let (host_key, fingerprint) = stack.relay.ssh_host_key.clone().unwrap_or_default();
    let known_hosts = std::path::absolute(data_dir.join("known_hosts"))?;
    std::fs::write(
        &known_hosts,
        crate::ssh::known_hosts_lines(&["localhost", "127.0.0.1", &domain], ssh_port, &host_key),
    )?;
    let up = UpFile {
        control_url: stack.control_url.clone(),
        relay_https_url: format!("https://{domain}:{https_port}"),
        relay_http_url: format!("http://{domain}:{http_port}"),
        relay_ssh: format!("localhost:{ssh_port}"),
        ssh_host_key: host_key,
        ssh_host_key_fingerprint: fingerprint.clone(),
        ssh_known_hosts: known_hosts,
        domain: domain.clone(),
        preview_domain: preview_domain.clone(),
        admin_api_key: stack.admin_key.clone(),
        ca_cert: stack.ca_file.clone(),
    };
    std::fs::write(data_dir.join("up.json"), serde_json::to_string_pretty(&up)?)?;
    // A session ready to use.
    let client = Client::resolve(
        Some(stack.control_url.clone()),
        Some(stack.admin_key.clone()),
        &data_dir,
    )?;
    let s = client
        .create_session(&Default::default())
        .await
        .context("creating the first session")?;
    let id = &s.id;
    let token = s.token.as_deref().unwrap_or_default();
    println!(
        "\nWarren is up.\n\n  open:     http://{id}.{domain}:{http_port}/?token={token}\n  (https:   {})\n  ssh:      {}\n            host key {fingerprint}\n            (or: warren session ssh {id})\n  previews: http://PORT-{id}.{}:{http_port}/ (a server on PORT in the session)\n\n  API:      {}\n  admin key: {}\n  CA:       {}\n  written:  {}\n\nnext:\n  warren session create        a new session (prints its URL)\n  warren session ls\n  warren node token            a join token for another worker\n\nCtrl-C stops everything.",
        s.url,
        s.ssh,
        preview_domain.as_deref().unwrap_or(&domain),
        stack.control_url,
        stack.admin_key,
        stack.ca_file.display(),
        data_dir.join("up.json").display()
    );
    stop.cancelled().await;
    stack.stop.cancel();
    stack.tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stack.tracker.wait()).await;
    Ok(())
}
