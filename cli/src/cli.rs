//! The command line: its flags and subcommands, each handed to its module
//! in [`crate::cmd`]. In the library, not the binary: the binary then
//! compiles almost nothing, and every generic the commands use (the
//! configuration's deserialisers, each spawned future) is compiled once,
//! here, instead of once here for `warren::stack` and again in the binary
//! (docs/benchmarks.md, "A fresh clone to a terminal").

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cmd;

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
    Up(cmd::up::UpArgs),
    /// The control plane alone.
    Control {
        /// Control config file (docs/configuration.md); `WARREN_CONTROL_*` override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A relay alone.
    Relay {
        /// Relay config file (docs/configuration.md); `WARREN_RELAY_*` override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A worker's agent: joins with a token once, then reconnects with its credential.
    Agent(cmd::serve::AgentArgs),
    /// Sessions.
    Session {
        #[command(subcommand)]
        cmd: cmd::session::SessionCmd,
    },
    /// Workers (operators).
    Node {
        #[command(subcommand)]
        cmd: cmd::node::NodeCmd,
    },
    /// The bundled load-test harness (docs/loadtest.md).
    Loadtest(cmd::loadtest::LoadtestArgs),
    /// Snapshots: a session's files saved as an image of your tenant.
    Snapshot {
        #[command(subcommand)]
        cmd: cmd::snapshot::SnapshotCmd,
    },
    /// Run a command in a session: `warren exec ID -- CMD…` (its exit code
    /// is warren's; 124 when the time limit killed it).
    Exec(cmd::sandbox::ExecArgs),
    /// Copy a file into or out of a session: `warren cp FILE ID:/path`,
    /// `warren cp ID:/path FILE` (`-`: standard input or output).
    Cp(cmd::sandbox::CpArgs),
    /// Your SSH public keys: a registered key opens your tenant's sessions.
    #[command(name = "ssh-key")]
    SshKey {
        #[command(subcommand)]
        cmd: cmd::ssh_key::SshKeyCmd,
    },
}

/// The `warren` command: parses the command line and runs it.
#[tokio::main]
pub async fn main() {
    // `warren session ssh` hands ssh a fresh token through SSH_ASKPASS
    // pointing back at this binary: answer its prompt and stop.
    if let Ok(token) = std::env::var(crate::ssh::ASKPASS_ENV) {
        println!("{token}");
        return;
    }
    let cli = Cli::parse();
    let quiet = matches!(
        cli.cmd,
        Cmd::Session { .. } | Cmd::Node { .. } | Cmd::SshKey { .. } | Cmd::Exec(_) | Cmd::Cp(_)
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = cmd::Ctx {
        json: cli.json,
        control_url: cli.control_url,
        api_key: cli.api_key,
    };
    match cli.cmd {
        Cmd::Up(args) => cmd::up::up(args).await,
        Cmd::Control { config } => cmd::serve::control(config).await,
        Cmd::Relay { config } => cmd::serve::relay(config).await,
        Cmd::Agent(args) => cmd::serve::agent(args, &ctx).await,
        Cmd::Session { cmd } => cmd::session::run(cmd, &ctx).await,
        Cmd::Node { cmd } => cmd::node::run(cmd, &ctx).await,
        Cmd::SshKey { cmd } => cmd::ssh_key::run(cmd, &ctx).await,
        Cmd::Loadtest(args) => cmd::loadtest::run(args, &ctx).await,
        Cmd::Exec(args) => {
            let code = cmd::sandbox::exec(args, &ctx).await?;
            std::process::exit(code)
        }
        Cmd::Cp(args) => cmd::sandbox::cp(args, &ctx).await,
        Cmd::Snapshot { cmd } => cmd::snapshot::run(cmd, &ctx).await,
    }
}
