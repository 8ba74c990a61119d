//! `warren node`: join tokens, list, drain, cordon, uncordon, remove.
use crate::client::Client;
use clap::Subcommand;
use serde_json::json;

use super::{Ctx, print};

#[derive(Subcommand)]
pub enum NodeCmd {
    /// A one-time join token for a new worker.
    Token {
        /// How long the token may be used, like 30m, 1h.
        #[arg(long, value_parser = crate::parse_duration, default_value = "1h")]
        ttl: u64,
    },
    /// Workers, their state and memory.
    Ls,
    /// Stop a worker's sessions and give it no new ones.
    Drain { id: String },
    /// Give a worker no new sessions.
    Cordon { id: String },
    /// Give a worker new sessions again.
    Uncordon { id: String },
    /// Forget a worker (its sessions become lost); it may join again.
    Rm { id: String },
}

pub async fn run(cmd: NodeCmd, ctx: &Ctx) -> anyhow::Result<()> {
    let c = ctx.api()?;
    match cmd {
        NodeCmd::Token { ttl } => {
            let v = c
                .call(
                    "POST",
                    "/v1/nodes/join-tokens",
                    Some(json!({"ttl_seconds": ttl})),
                )
                .await?;
            print(ctx.json, &v, |v| {
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
            print(ctx.json, &v, |v| {
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
        NodeCmd::Drain { id } => node_action(&c, ctx.json, &id, "drain").await?,
        NodeCmd::Cordon { id } => node_action(&c, ctx.json, &id, "cordon").await?,
        NodeCmd::Uncordon { id } => node_action(&c, ctx.json, &id, "uncordon").await?,
        NodeCmd::Rm { id } => {
            c.call("DELETE", &format!("/v1/nodes/{id}"), None).await?;
            print(ctx.json, &json!({"removed": id}), |_| {
                format!("node {id} removed")
            });
        }
    }
    Ok(())
}

async fn node_action(c: &Client, json_out: bool, id: &str, action: &str) -> anyhow::Result<()> {
    c.call("POST", &format!("/v1/nodes/{id}/{action}"), None)
        .await?;
    print(json_out, &json!({"node": id, "action": action}), |_| {
        format!("node {id}: {action} done")
    });
    Ok(())
}
