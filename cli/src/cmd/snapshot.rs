//! `warren snapshot`: save a session's files as an image of your tenant,
//! list and remove them; `warren session create --image
//! warren-snapshot/NAME` starts from one.
use clap::Subcommand;
use serde_json::{Value, json};

use super::{Ctx, print};

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Save a running session's filesystem (not its memory).
    Create {
        /// Session id.
        id: String,
        /// A name unique in your tenant (default: made up).
        #[arg(long)]
        name: Option<String>,
    },
    /// Your tenant's snapshots.
    Ls,
    /// Forget a snapshot (its worker removes the image).
    Rm { name: String },
}

fn line(s: &Value) -> String {
    format!(
        "{:<24} {:>8} MB  from {}  on {}",
        s["image"].as_str().unwrap_or(""),
        s["size_bytes"].as_i64().unwrap_or(0) >> 20,
        s["session"].as_str().unwrap_or(""),
        s["node"].as_str().unwrap_or("")
    )
}

pub async fn run(cmd: SnapshotCmd, ctx: &Ctx) -> anyhow::Result<()> {
    let c = ctx.api()?;
    match cmd {
        SnapshotCmd::Create { id, name } => {
            let body = name.map(|n| json!({ "name": n }));
            let v = c
                .call("POST", &format!("/v1/sessions/{id}/snapshot"), body)
                .await?;
            print(ctx.json, &v, |v| {
                format!(
                    "{}\n  start from it: warren session create --image {}",
                    line(v),
                    v["image"].as_str().unwrap_or("")
                )
            });
        }
        SnapshotCmd::Ls => {
            let v = c.call("GET", "/v1/snapshots", None).await?;
            print(ctx.json, &v, |v| {
                v["snapshots"]
                    .as_array()
                    .map(|a| a.iter().map(line).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            });
        }
        SnapshotCmd::Rm { name } => {
            c.call("DELETE", &format!("/v1/snapshots/{name}"), None)
                .await?;
            print(ctx.json, &json!({"deleted": name}), |_| {
                format!("snapshot {name} deleted")
            });
        }
    }
    Ok(())
}
