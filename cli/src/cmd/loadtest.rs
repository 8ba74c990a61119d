//! `warren loadtest`: the bundled harness (docs/loadtest.md).
use std::path::PathBuf;

use super::{Ctx, shutdown_on_signals};

#[derive(clap::Args)]
pub struct LoadtestArgs {
    #[command(flatten)]
    pub args: warren_loadtest::Args,
    /// The relay: http://DOMAIN:PORT (loopback) or https://DOMAIN:PORT with --ca
    /// (default: up.json's relay_http_url).
    #[arg(long)]
    pub relay: Option<String>,
    /// CA certificate (PEM) that signed the relay's certificate (trusted
    /// for control's too, for a cluster with a private CA).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// SSH endpoint HOST:PORT for the ssh scenario (default: up.json's relay_ssh).
    #[arg(long)]
    pub ssh: Option<String>,
}

pub async fn run(a: LoadtestArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let LoadtestArgs {
        args,
        relay,
        ca,
        ssh,
    } = a;
    let target = warren_loadtest::Target::resolve(
        ctx.control_url.clone(),
        ctx.api_key.clone(),
        relay,
        ca,
        ssh,
        std::path::Path::new(".warren/up.json"),
    )?;
    let interrupt = shutdown_on_signals();
    let report = warren_loadtest::run(&args, &target, interrupt).await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.markdown());
        eprintln!("report written to {}", args.out.display());
    }
    Ok(())
}
