//! `warren ssh-key`: the public keys that open your tenant's sessions.
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::{Ctx, print};

#[derive(Subcommand)]
pub enum SshKeyCmd {
    /// Register a public key (a .pub file, `-` for stdin).
    Add { file: PathBuf },
    /// Your registered keys.
    Ls,
    /// Unregister a key (by its id from `ls`).
    Rm { id: String },
}

pub async fn run(cmd: SshKeyCmd, ctx: &Ctx) -> anyhow::Result<()> {
    let c = ctx.api()?;
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
            print(ctx.json, &v, |v| {
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
            print(ctx.json, &v, |v| {
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
            print(ctx.json, &json!({"deleted": id}), |_| {
                format!("removed {id}")
            });
        }
    }
    Ok(())
}
