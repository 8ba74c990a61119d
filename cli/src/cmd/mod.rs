//! The `warren` subcommands, one module each; [`crate::cli`] holds the
//! command line and hands each subcommand to its module.
pub mod loadtest;
pub mod node;
pub mod sandbox;
pub mod serve;
pub mod session;
pub mod share;
pub mod snapshot;
pub mod ssh_key;
pub mod up;

use crate::client::Client;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What every subcommand may need from the global flags.
pub struct Ctx {
    pub json: bool,
    pub control_url: Option<String>,
    pub api_key: Option<String>,
}

impl Ctx {
    /// The API client: flags, then the environment, then `.warren/up.json`.
    pub fn api(&self) -> anyhow::Result<Client> {
        Ok(Client::resolve(
            self.control_url.clone(),
            self.api_key.clone(),
            std::path::Path::new(".warren"),
        )?)
    }
}

pub const HOST_ROOT_WARNING: &str = "warren: WARNING: sessions run as root on this host (host-root Docker-in-Docker): \
any session can take this machine and every other session on it. Never offer this to other people; \
production workers run the isolated default profile (docs/security.md).";

pub fn print(json_out: bool, v: &Value, human: impl FnOnce(&Value) -> String) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human(v));
    }
}

pub fn shutdown_on_signals() -> CancellationToken {
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
