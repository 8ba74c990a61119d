//! `warren exec` and `warren cp`: the sandbox API from the command line.
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use warren_proto::sandbox::ExecRequest;

use super::Ctx;

/// What `warren exec` exits with when the time limit killed the command
/// (as `timeout(1)` does).
pub const TIMED_OUT: i32 = 124;

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Session id.
    pub id: String,
    /// Time limit, like 30s, 5m (default: 60s; at most 1h).
    #[arg(long, value_parser = crate::parse_duration)]
    pub timeout: Option<u64>,
    /// Working directory in the session (absolute).
    #[arg(long)]
    pub cwd: Option<String>,
    /// An environment variable, NAME=value (repeatable).
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// One argument: run it with the session's `sh -c`; more: the program and
    /// its arguments, as given.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the command, prints its output, and gives its exit code.
pub async fn exec(a: ExecArgs, ctx: &Ctx) -> anyhow::Result<i32> {
    let mut req = ExecRequest {
        cwd: a.cwd,
        timeout_seconds: a.timeout,
        ..Default::default()
    };
    for kv in a.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?}: give NAME=value");
        };
        req.env.insert(k.into(), v.into());
    }
    if a.command.len() == 1 {
        req.command = a.command.into_iter().next();
    } else {
        req.argv = Some(a.command);
    }
    req.to_argv().map_err(anyhow::Error::msg)?;
    let r = ctx.api()?.exec(&a.id, &req).await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let mut out = tokio::io::stdout();
        out.write_all(r.stdout.as_bytes()).await?;
        out.flush().await?;
        let mut err = tokio::io::stderr();
        err.write_all(r.stderr.as_bytes()).await?;
        if r.truncated.stdout || r.truncated.stderr {
            err.write_all(b"warren: output cut at 1 MiB per stream\n")
                .await?;
        }
        if r.timed_out {
            err.write_all(b"warren: the time limit killed the command\n")
                .await?;
        }
        err.flush().await?;
    }
    Ok(match r.exit_code {
        Some(code) => code,
        None => TIMED_OUT,
    })
}

#[derive(clap::Args)]
pub struct CpArgs {
    /// `SESSION:/path` or a local path (`-`: standard input).
    pub src: String,
    /// `SESSION:/path` or a local path (`-`: standard output).
    pub dst: String,
}

/// One side of a copy.
enum End {
    Local(String),
    Remote { id: String, path: String },
}

fn end(s: &str) -> End {
    match s.split_once(':') {
        Some((id, path)) if warren_proto::is_session_id(id) && path.starts_with('/') => {
            End::Remote {
                id: id.into(),
                path: path.into(),
            }
        }
        _ => End::Local(s.into()),
    }
}

fn base_name(p: &str) -> anyhow::Result<&str> {
    Path::new(p)
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{p:?} names no file"))
}

pub async fn cp(a: CpArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let c = ctx.api()?;
    match (end(&a.src), end(&a.dst)) {
        (End::Local(src), End::Remote { id, mut path }) => {
            if path.ends_with('/') {
                if src == "-" {
                    bail!("standard input has no name: give the session path in full");
                }
                path.push_str(base_name(&src)?);
            }
            let (body, length, mode) = if src == "-" {
                let s = tokio_util::io::ReaderStream::new(tokio::io::stdin());
                (reqwest::Body::wrap_stream(s), None, None)
            } else {
                let f = tokio::fs::File::open(&src)
                    .await
                    .with_context(|| format!("opening {src}"))?;
                let meta = f.metadata().await?;
                if !meta.is_file() {
                    bail!("{src} is not a file (warren cp copies one file)");
                }
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o7777;
                let s = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
                (reqwest::Body::wrap_stream(s), Some(meta.len()), Some(mode))
            };
            c.upload(&id, &path, mode, length, body).await?;
        }
        (End::Remote { id, path }, End::Local(dst)) => {
            let d = c.download(&id, &path).await?;
            let mut bytes = Box::pin(d.bytes());
            if dst == "-" {
                let mut out = tokio::io::stdout();
                while let Some(chunk) = bytes.next().await {
                    out.write_all(&chunk?).await?;
                }
                out.flush().await?;
                return Ok(());
            }
            let mut target = PathBuf::from(&dst);
            if target.is_dir() {
                target.push(base_name(&path)?);
            }
            // Beside the target, renamed over it once whole: a cut transfer
            // leaves the old file (or none), never half a file.
            let tmp = target.with_file_name(format!(
                ".{}.warren-part",
                target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("file")
            ));
            let copied = async {
                let mut f = tokio::fs::File::create(&tmp)
                    .await
                    .with_context(|| format!("creating {}", tmp.display()))?;
                while let Some(chunk) = bytes.next().await {
                    f.write_all(&chunk?).await?;
                }
                f.sync_all().await?;
                tokio::fs::rename(&tmp, &target).await?;
                anyhow::Ok(())
            }
            .await;
            if copied.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            copied.with_context(|| format!("writing {}", target.display()))?;
        }
        (End::Remote { .. }, End::Remote { .. }) => {
            bail!(
                "copy between sessions through your machine: warren cp ID:/a file && warren cp file ID2:/b"
            )
        }
        (End::Local(_), End::Local(_)) => {
            bail!("one side must be SESSION:/absolute/path")
        }
    }
    Ok(())
}
