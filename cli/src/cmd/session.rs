//! `warren session`: create, list, show, remove, token, ssh; sharing and
//! recordings live in [`super::share`].
use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use warren_proto::api::UpFile;

use super::{Ctx, print};

#[derive(Subcommand)]
pub enum SessionCmd {
    /// A new session; prints its browser link and ssh command.
    Create {
        /// Image (default: the control plane's).
        #[arg(long)]
        image: Option<String>,
        /// Memory limit in MB (default: the control plane's).
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Lifetime, like 90s, 30m, 2h (default: the control plane's).
        #[arg(long, value_parser = crate::parse_duration)]
        ttl: Option<u64>,
        /// Writable disk in MB (default: the control plane's).
        #[arg(long)]
        disk_mb: Option<u64>,
        /// What it may reach beyond Warren: `none` (default), `internet`
        /// (where the operator allows it) or CIDRs, comma-separated.
        #[arg(long)]
        egress: Option<String>,
    },
    /// Your live sessions (`--all`: ended ones too).
    Ls {
        #[arg(long)]
        all: bool,
    },
    /// One session, in full.
    Show { id: String },
    /// Stop and remove a session.
    Rm { id: String },
    /// A fresh session token (terminal and preview).
    Token { id: String },
    /// Open an SSH shell in the session (your registered key, else a fresh
    /// token as the password); arguments after `--` go to ssh (a command).
    Ssh {
        id: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
    #[command(flatten)]
    Sharing(super::share::ShareCmd),
}

pub async fn run(cmd: SessionCmd, ctx: &Ctx) -> anyhow::Result<()> {
    let c = ctx.api()?;
    match cmd {
        SessionCmd::Sharing(cmd) => return super::share::run(cmd, ctx).await,
        SessionCmd::Create {
            image,
            memory_mb,
            ttl,
            disk_mb,
            egress,
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
            if let Some(d) = disk_mb {
                body["disk_mb"] = json!(d);
            }
            if let Some(e) = egress {
                body["egress"] = match e.as_str() {
                    "none" | "internet" => json!(e),
                    list => json!(list.split(',').map(str::trim).collect::<Vec<_>>()),
                };
            }
            let v = c.call("POST", "/v1/sessions", Some(body)).await?;
            let browser =
                local_url(&v).unwrap_or_else(|| v["url"].as_str().unwrap_or("").to_string());
            print(ctx.json, &v, |v| {
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
        SessionCmd::Ls { all } => {
            let mut v = c.call("GET", "/v1/sessions", None).await?;
            if !all && let Some(list) = v["sessions"].as_array_mut() {
                list.retain(|s| {
                    matches!(
                        s["status"].as_str(),
                        Some("pending" | "running" | "stopping")
                    )
                });
            }
            print(ctx.json, &v, |v| {
                v["sessions"]
                    .as_array()
                    .map(|a| a.iter().map(session_line).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            });
        }
        SessionCmd::Show { id } => {
            let v = c.call("GET", &format!("/v1/sessions/{id}"), None).await?;
            print(ctx.json, &v, |v| {
                serde_json::to_string_pretty(v).unwrap_or_default()
            });
        }
        SessionCmd::Rm { id } => {
            c.call("DELETE", &format!("/v1/sessions/{id}"), None)
                .await?;
            print(ctx.json, &json!({"deleted": id}), |_| {
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
                .and_then(crate::ssh::endpoint)
                .context("the control plane names no SSH endpoint for this session")?;
            let kh =
                crate::ssh::known_hosts(&c, std::path::Path::new(".warren"), &host, port).await?;
            let cmd = crate::ssh::command(&v, t["token"].as_str().unwrap_or_default(), &kh, &args)?;
            return crate::ssh::exec(cmd);
        }
        SessionCmd::Token { id } => {
            let v = c
                .call("POST", &format!("/v1/sessions/{id}/token"), None)
                .await?;
            print(ctx.json, &v, |v| {
                v["token"].as_str().unwrap_or("").to_string()
            });
        }
    }
    Ok(())
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

/// Under `warren up`, the loopback HTTP URL of a session: it opens without
/// a certificate warning (browsers treat `*.localhost` as secure).
fn local_url(v: &Value) -> Option<String> {
    let up = UpFile::read(std::path::Path::new(".warren/up.json")).ok()??;
    let port = up.relay_http_url.rsplit_once(':')?.1.to_string();
    let (id, token) = (v["id"].as_str()?, v["token"].as_str()?);
    Some(format!("http://{id}.{}:{port}/?token={token}", up.domain))
}
