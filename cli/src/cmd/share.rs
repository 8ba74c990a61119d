//! `warren session share|shares|unshare|recordings|recording`: share links
//! to a session's terminal, and its terminals' recordings.
use clap::Subcommand;
use serde_json::{Value, json};

use super::{Ctx, print};

#[derive(Subcommand)]
pub enum ShareCmd {
    /// A link that opens the session's terminal for someone else:
    /// `--read` (the default) shows it live and drops their keys,
    /// `--write` lets them type too. Links expire (`--ttl`, default 1h)
    /// and can be revoked (`warren session unshare`).
    Share {
        id: String,
        #[arg(long, conflicts_with = "write")]
        read: bool,
        #[arg(long)]
        write: bool,
        /// How long it works, like 30m or 2h (at most 7 days).
        #[arg(long, value_parser = crate::parse_duration)]
        ttl: Option<u64>,
        /// A label the others watching see.
        #[arg(long)]
        name: Option<String>,
        /// Show this terminal only (default: any open one, oldest first).
        #[arg(long)]
        terminal: Option<u32>,
    },
    /// The session's live share links.
    Shares { id: String },
    /// Revoke a share link: its holders are cut off within a second or two.
    Unshare { id: String, share: String },
    /// The session's terminal recordings.
    Recordings { id: String },
    /// One terminal's recording as asciicast v2 on stdout
    /// (`warren session recording ID 1 > t.cast; asciinema play t.cast`).
    Recording { id: String, terminal: u32 },
}

fn share_line(s: &Value) -> String {
    format!(
        "{:<14} {:<5} expires {}  {}",
        s["id"].as_str().unwrap_or(""),
        s["mode"].as_str().unwrap_or(""),
        s["expires_at"].as_i64().unwrap_or(0),
        s["name"].as_str().unwrap_or("")
    )
}

pub async fn run(cmd: ShareCmd, ctx: &Ctx) -> anyhow::Result<()> {
    let c = ctx.api()?;
    match cmd {
        ShareCmd::Share {
            id,
            read: _,
            write,
            ttl,
            name,
            terminal,
        } => {
            let mut body = json!({ "mode": if write { "write" } else { "read" } });
            if let Some(t) = ttl {
                body["ttl_seconds"] = json!(t);
            }
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(t) = terminal {
                body["terminal"] = json!(t);
            }
            let v = c
                .call("POST", &format!("/v1/sessions/{id}/share"), Some(body))
                .await?;
            print(ctx.json, &v, |v| {
                format!(
                    "{}\n  link: {}",
                    share_line(v),
                    v["url"].as_str().unwrap_or("")
                )
            });
        }
        ShareCmd::Shares { id } => {
            let v = c
                .call("GET", &format!("/v1/sessions/{id}/shares"), None)
                .await?;
            print(ctx.json, &v, |v| {
                v["shares"]
                    .as_array()
                    .map(|a| a.iter().map(share_line).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            });
        }
        ShareCmd::Unshare { id, share } => {
            c.call("DELETE", &format!("/v1/sessions/{id}/shares/{share}"), None)
                .await?;
            print(ctx.json, &json!({"revoked": share}), |_| {
                format!("share link {share} revoked")
            });
        }
        ShareCmd::Recordings { id } => {
            let v = c
                .call("GET", &format!("/v1/sessions/{id}/recordings"), None)
                .await?;
            print(ctx.json, &v, |v| {
                v["recordings"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|r| {
                                format!(
                                    "terminal {:<4} {:>9} bytes{}  {}",
                                    r["terminal"],
                                    r["bytes"],
                                    if r["truncated"] == true {
                                        " (truncated)"
                                    } else {
                                        ""
                                    },
                                    r["url"].as_str().unwrap_or("")
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default()
            });
        }
        ShareCmd::Recording { id, terminal } => {
            let v = c
                .call(
                    "GET",
                    &format!("/v1/sessions/{id}/recordings/{terminal}"),
                    None,
                )
                .await?;
            match v {
                Value::String(s) => print!("{s}"),
                other => println!("{other}"),
            }
        }
    }
    Ok(())
}
