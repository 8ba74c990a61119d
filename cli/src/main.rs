//! `warren`: one binary for operators and users (CONTRACT.md).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use warren::client::Client;
use warren::stack::StackOptions;

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "Warren: isolated Linux boxes in the browser and over SSH"
)]
struct Cli {
    /// Control plane URL (else WARREN_CONTROL_URL, else .warren/up.json).
    #[arg(long, global = true, env = "WARREN_CONTROL_URL")]
    control_url: Option<String>,
    /// API key (else WARREN_API_KEY, else .warren/up.json).
    #[arg(long, global = true, env = "WARREN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole stack on this machine: control, relay, one agent.
    Up(UpArgs),
    /// The control plane alone.
    Control {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A relay alone.
    Relay {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A worker's agent: joins with a token once, then reconnects with its credential.
    Agent {
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
    },
    /// Sessions.
    Session {
        #[command(subcommand)]
        cmd: SessionCmd,
    },
    /// Workers (operators).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// The bundled load-test harness (docs/loadtest.md).
    Loadtest {
        #[command(flatten)]
        args: warren_loadtest::Args,
        /// The relay: http://DOMAIN:PORT (loopback) or https://DOMAIN:PORT with --ca
        /// (default: up.json's relay_http_url).
        #[arg(long)]
        relay: Option<String>,
        /// CA certificate (PEM) that signed the relay's certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// SSH endpoint HOST:PORT for the ssh scenario (default: up.json's relay_ssh).
        #[arg(long)]
        ssh: Option<String>,
    },
    /// Your SSH public keys: a registered key opens your tenant's sessions.
    #[command(name = "ssh-key")]
    SshKey {
        #[command(subcommand)]
        cmd: SshKeyCmd,
    },
}

#[derive(Subcommand)]
enum SshKeyCmd {
    /// Register a public key (a .pub file, `-` for stdin).
    Add {
        file: PathBuf,
    },
    Ls,
    Rm {
        id: String,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    #[arg(long, default_value = ".warren")]
    data_dir: PathBuf,
    #[arg(long, default_value = "warren.localhost")]
    domain: String,
    /// Previews at `<port>-<session>.<preview domain>`, another site than
    /// the terminals (default under .localhost: `<first label>-preview.localhost`;
    /// elsewhere previews stay under --domain unless this is given).
    #[arg(long)]
    preview_domain: Option<String>,
    #[arg(long, default_value_t = 8443)]
    https_port: u16,
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    #[arg(long, default_value_t = 2222)]
    ssh_port: u16,
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
}

#[derive(Subcommand)]
enum SessionCmd {
    Create {
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        memory_mb: Option<u64>,
        #[arg(long, value_parser = warren::parse_duration)]
        ttl: Option<u64>,
    },
    Ls,
    Show {
        id: String,
    },
    Rm {
        id: String,
    },
    Token {
        id: String,
    },
    /// Open an SSH shell in the session (your registered key, else a fresh
    /// token as the password); arguments after `--` go to ssh (a command).
    Ssh {
        id: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    Token {
        #[arg(long, value_parser = warren::parse_duration, default_value = "1h")]
        ttl: u64,
    },
    Ls,
    Drain {
        id: String,
    },
    Cordon {
        id: String,
    },
    Uncordon {
        id: String,
    },
    Rm {
        id: String,
    },
}

fn shutdown_on_signals() -> CancellationToken {
    let t = CancellationToken::new();
    let t2 = t.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("\nwarren: shutting down");
        t2.cancel();
    });
    t
}

#[tokio::main]
async fn main() {
    // `warren session ssh` hands ssh a fresh token through SSH_ASKPASS
    // pointing back at this binary: answer its prompt and stop.
    if let Ok(token) = std::env::var(warren::ssh::ASKPASS_ENV) {
        println!("{token}");
        return;
    }
    let cli = Cli::parse();
    let quiet = matches!(
        cli.cmd,
        Cmd::Session { .. } | Cmd::Node { .. } | Cmd::SshKey { .. }
    );
    let filter = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| if quiet { "warn".into() } else { "info".into() });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli).await {
        eprintln!("warren: {e:#}");
        std::process::exit(1);
    }
}

fn print(json_out: bool, v: &Value, human: impl FnOnce(&Value) -> String) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human(v));
    }
}

fn session_line(s: &Value) -> String {
    format!(
        "{:<18} {:<9} {:<14} {:>6} MB  {}",
        s["id"].as_str().unwrap_or(""),
        s["status"].as_str().unwrap_or(""),
        s["node"].as_str().unwrap_or(""),
        s["memory_mb"],
        s["image"].as_str().unwrap_or("")
    )
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = || {
        Client::resolve(
            cli.control_url.clone(),
            cli.api_key.clone(),
            std::path::Path::new(".warren"),
        )
    };
    match cli.cmd {
        Cmd::Up(args) => up(args).await,
        Cmd::Control { config } => {
            let cfg: warren_config::ControlConfig =
                warren_config::load("control", config.as_deref())?;
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
        Cmd::Relay { config } => {
            let cfg: warren_config::RelayConfig = warren_config::load("relay", config.as_deref())?;
            let listeners = warren_relay::Listeners::bind(&cfg)?;
            let stop = shutdown_on_signals();
            let control = warren_relay::control_plane(&cfg)?;
            let relay = warren_relay::start(cfg, listeners, control, stop.clone()).await?;
            stop.cancelled().await;
            relay.stopped().await;
            Ok(())
        }
        Cmd::Agent {
            config,
            control,
            join,
            memory_mb,
            data_dir,
            node_id,
            image,
            allow_host_root_sessions,
        } => {
            use warren_config::figment::providers::Serialized;
            let control = control.or(cli.control_url.clone());
            let cfg: warren_config::AgentConfig =
                warren_config::load_with("agent", config.as_deref(), |mut f| {
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
                })?;
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
        Cmd::Session { cmd } => {
            let c = api()?;
            match cmd {
                SessionCmd::Create {
                    image,
                    memory_mb,
                    ttl,
                } => {
                    let mut body = json!({});
                    if let Some(i) = image {
                        body["image"] = json!(i);
                    }
                    if let Some(m) = memory_mb {
                        body["memory_mb"] = json!(m);
                    }
                    if let Some(t) = ttl {
                        body["ttl_seconds"] = json!(t);
                    }
                    let v = c.call("POST", "/v1/sessions", Some(body)).await?;
                    let browser = local_url(&v)
                        .unwrap_or_else(|| v["url"].as_str().unwrap_or("").to_string());
                    print(cli.json, &v, |v| {
                        format!(
                            "session {}\n  browser: {}\n  ssh:     {}\n  expires: in {} min",
                            v["id"].as_str().unwrap_or(""),
                            browser,
                            v["ssh"].as_str().unwrap_or(""),
                            (v["expires_at"].as_i64().unwrap_or(0)
                                - warren_control::store::now_ms() / 1000)
                                / 60
                        )
                    });
                }
                SessionCmd::Ls => {
                    let v = c.call("GET", "/v1/sessions", None).await?;
                    print(cli.json, &v, |v| {
                        v["sessions"]
                            .as_array()
                            .map(|a| a.iter().map(session_line).collect::<Vec<_>>().join("\n"))
                            .unwrap_or_default()
                    });
                }
                SessionCmd::Show { id } => {
                    let v = c.call("GET", &format!("/v1/sessions/{id}"), None).await?;
                    print(cli.json, &v, |v| {
                        serde_json::to_string_pretty(v).unwrap_or_default()
                    });
                }
                SessionCmd::Rm { id } => {
                    c.call("DELETE", &format!("/v1/sessions/{id}"), None)
                        .await?;
                    print(cli.json, &json!({"deleted": id}), |_| {
                        format!("session {id} is stopping")
                    });
                }
                SessionCmd::Ssh { id, args } => {
                    let v = c.call("GET", &format!("/v1/sessions/{id}"), None).await?;
                    let t = c
                        .call("POST", &format!("/v1/sessions/{id}/token"), None)
                        .await?;
                    let (host, port) = v["ssh"]
                        .as_str()
                        .and_then(warren::ssh::endpoint)
                        .context("the control plane names no SSH endpoint for this session")?;
                    let kh =
                        warren::ssh::known_hosts(&c, std::path::Path::new(".warren"), &host, port)
                            .await?;
                    let cmd = warren::ssh::command(
                        &v,
                        t["token"].as_str().unwrap_or_default(),
                        &kh,
                        &args,
                    )?;
                    return warren::ssh::exec(cmd);
                }
                SessionCmd::Token { id } => {
                    let v = c
                        .call("POST", &format!("/v1/sessions/{id}/token"), None)
                        .await?;
                    print(cli.json, &v, |v| {
                        v["token"].as_str().unwrap_or("").to_string()
                    });
                }
            }
            Ok(())
        }
        Cmd::Loadtest {
            args,
            relay,
            ca,
            ssh,
        } => {
            let target = warren_loadtest::Target::resolve(
                cli.control_url.clone(),
                cli.api_key.clone(),
                relay,
                ca,
                ssh,
                std::path::Path::new(".warren/up.json"),
            )?;
            let interrupt = shutdown_on_signals();
            let report = warren_loadtest::run(&args, &target, interrupt).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.markdown());
                eprintln!("report written to {}", args.out.display());
            }
            Ok(())
        }
        Cmd::SshKey { cmd } => {
            let c = api()?;
            match cmd {
                SshKeyCmd::Add { file } => {
                    let text = if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(&file)
                            .with_context(|| format!("reading {}", file.display()))?
                    };
                    let v = c
                        .call(
                            "POST",
                            "/v1/users/me/ssh-keys",
                            Some(json!({"public_key": text.trim()})),
                        )
                        .await?;
                    print(cli.json, &v, |v| {
                        format!(
                            "registered {} ({}): it now opens every session of tenant {}",
                            v["fingerprint"].as_str().unwrap_or(""),
                            v["id"].as_str().unwrap_or(""),
                            v["tenant"].as_str().unwrap_or("")
                        )
                    });
                }
                SshKeyCmd::Ls => {
                    let v = c.call("GET", "/v1/users/me/ssh-keys", None).await?;
                    print(cli.json, &v, |v| {
                        v["keys"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|k| {
                                        format!(
                                            "{:<18} {} {}",
                                            k["id"].as_str().unwrap_or(""),
                                            k["fingerprint"].as_str().unwrap_or(""),
                                            k["comment"].as_str().unwrap_or("")
                                        )
                                    })
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            })
                            .unwrap_or_default()
                    });
                }
                SshKeyCmd::Rm { id } => {
                    c.call("DELETE", &format!("/v1/users/me/ssh-keys/{id}"), None)
                        .await?;
                    print(cli.json, &json!({"deleted": id}), |_| {
                        format!("removed {id}")
                    });
                }
            }
            Ok(())
        }
        Cmd::Node { cmd } => {
            let c = api()?;
            match cmd {
                NodeCmd::Token { ttl } => {
                    let v = c
                        .call(
                            "POST",
                            "/v1/nodes/join-tokens",
                            Some(json!({"ttl_seconds": ttl})),
                        )
                        .await?;
                    print(cli.json, &v, |v| {
                        format!(
                            "{}\n\non the new worker:\n  warren agent --control {} --join {}",
                            v["token"].as_str().unwrap_or(""),
                            c.base,
                            v["token"].as_str().unwrap_or("")
                        )
                    });
                }
                NodeCmd::Ls => {
                    let v = c.call("GET", "/v1/nodes", None).await?;
                    print(cli.json, &v, |v| {
                        v["nodes"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|n| {
                                        format!(
                                            "{:<20} {:<9} {}reserved {} / {} MB, {} sessions",
                                            n["id"].as_str().unwrap_or(""),
                                            n["state"].as_str().unwrap_or(""),
                                            if n["cordoned"] == true {
                                                "cordoned, "
                                            } else {
                                                ""
                                            },
                                            n["reserved_mb"],
                                            n["allocatable_mb"],
                                            n["sessions"]
                                        )
                                    })
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            })
                            .unwrap_or_default()
                    });
                }
                NodeCmd::Drain { id } => node_action(&c, cli.json, &id, "drain").await?,
                NodeCmd::Cordon { id } => node_action(&c, cli.json, &id, "cordon").await?,
                NodeCmd::Uncordon { id } => node_action(&c, cli.json, &id, "uncordon").await?,
                NodeCmd::Rm { id } => {
                    c.call("DELETE", &format!("/v1/nodes/{id}"), None).await?;
                    print(cli.json, &json!({"removed": id}), |_| {
                        format!("node {id} removed")
                    });
                }
            }
            Ok(())
        }
    }
}

async fn node_action(c: &Client, json_out: bool, id: &str, action: &str) -> anyhow::Result<()> {
    c.call("POST", &format!("/v1/nodes/{id}/{action}"), None)
        .await?;
    print(json_out, &json!({"node": id, "action": action}), |_| {
        format!("node {id}: {action} done")
    });
    Ok(())
}

/// Under `warren up`, the loopback HTTP URL of a session: it opens without
/// a certificate warning (browsers treat `*.localhost` as secure).
fn local_url(v: &Value) -> Option<String> {
    let up: Value = serde_json::from_str(&std::fs::read_to_string(".warren/up.json").ok()?).ok()?;
    let http = up["relay_http_url"].as_str()?;
    let port = http.rsplit_once(':')?.1;
    let (id, token) = (v["id"].as_str()?, v["token"].as_str()?);
    Some(format!(
        "http://{id}.{}:{port}/?token={token}",
        up["domain"].as_str()?
    ))
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

const HOST_ROOT_WARNING: &str = "warren: WARNING: sessions run as root on this host (host-root Docker-in-Docker): \
any session can take this machine and every other session on it. Never offer this to other people; \
production workers run the isolated default profile (docs/security.md).";

async fn up(args: UpArgs) -> anyhow::Result<()> {
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
    let stack = warren::stack::start(StackOptions {
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
        warren::ssh::known_hosts_lines(&["localhost", "127.0.0.1", &domain], ssh_port, &host_key),
    )?;
    let up = json!({
        "control_url": stack.control_url,
        "relay_https_url": format!("https://{domain}:{https_port}"),
        "relay_http_url": format!("http://{domain}:{http_port}"),
        "relay_ssh": format!("localhost:{ssh_port}"),
        "ssh_host_key": host_key,
        "ssh_host_key_fingerprint": fingerprint,
        "ssh_known_hosts": known_hosts,
        "domain": domain,
        "preview_domain": preview_domain,
        "admin_api_key": stack.admin_key,
        "ca_cert": stack.ca_file,
    });
    std::fs::write(data_dir.join("up.json"), serde_json::to_string_pretty(&up)?)?;
    // A session ready to use.
    let client = Client::resolve(
        Some(stack.control_url.clone()),
        Some(stack.admin_key.clone()),
        &data_dir,
    )?;
    let s = client
        .call("POST", "/v1/sessions", Some(json!({})))
        .await
        .context("creating the first session")?;
    let id = s["id"].as_str().unwrap_or_default();
    let token = s["token"].as_str().unwrap_or_default();
    println!(
        "\nWarren is up.\n\n  open:     http://{id}.{domain}:{http_port}/?token={token}\n  (https:   {})\n  ssh:      {}\n            host key {fingerprint}\n            (or: warren session ssh {id})\n  previews: http://PORT-{id}.{}:{http_port}/ (a server on PORT in the session)\n\n  API:      {}\n  admin key: {}\n  CA:       {}\n  written:  {}\n\nnext:\n  warren session create        a new session (prints its URL)\n  warren session ls\n  warren node token            a join token for another worker\n\nCtrl-C stops everything.",
        s["url"].as_str().unwrap_or(""),
        s["ssh"].as_str().unwrap_or(""),
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
