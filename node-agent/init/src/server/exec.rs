//! `exec`: a command on pipes for one client (SSH `exec`, subsystems).
use super::*;

/// How an `exec` runs, besides its argv.
pub(super) struct How {
    /// Variables a terminal client may set (checked as for shells).
    pub env: std::collections::BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// Any variables, on the tenant's own behalf (the sandbox API).
    pub vars: std::collections::BTreeMap<String, String>,
}

/// Checks the sandbox API's variables by the API's own rule.
fn check_vars(
    vars: &std::collections::BTreeMap<String, String>,
) -> Result<(), (ErrorCode, String)> {
    warren_proto::sandbox::check_env(vars).map_err(|m| (ErrorCode::BadEnv, m))
}

impl Server {
    /// Runs a command on pipes for one client: stdin from its `Data` frames,
    /// stdout and stderr back apart, then its exit code. The command's
    /// process group is killed if the client goes first.
    pub(super) async fn exec(
        &self,
        mut framed: Framed<UnixStream, InitCodec>,
        command: Vec<String>,
        how: How,
    ) -> io::Result<()> {
        use std::os::unix::process::CommandExt;
        use std::process::Stdio;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let How { env, cwd, vars } = how;
        let prepared = check_env(&env)
            .and_then(|()| check_vars(&vars))
            .and_then(|()| {
                if command.is_empty() {
                    return Err((ErrorCode::BadCommand, "exec needs a command".into()));
                }
                command_of(&command)
            });
        let mut cmd = match prepared {
            Ok(c) => c,
            Err((code, msg)) => return reply(&mut framed, Response::error(code, msg)).await,
        };
        in_home(&mut cmd);
        if let Some(dir) = &cwd {
            let p = Path::new(dir);
            if !p.is_dir() {
                let (code, msg) = if p.exists() {
                    (
                        ErrorCode::NotADirectory,
                        format!("working directory {dir} is not a directory"),
                    )
                } else {
                    (
                        ErrorCode::NotFound,
                        format!("working directory {dir} does not exist in the session"),
                    )
                };
                return reply(&mut framed, Response::error(code, msg)).await;
            }
            cmd.current_dir(dir);
        }
        cmd.envs(&vars)
            .envs(&env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let (mut child, mut exit_rx) = match self.reaper.spawn_child(&mut cmd) {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("cannot run {}: {e}", command[0]);
                return reply(&mut framed, Response::error(ErrorCode::SpawnFailed, msg)).await;
            }
        };
        let pid = child.id() as i32;
        let kill = move || {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
        };
        let pipes = (|| {
            let stdin = child.stdin.take().map(tokio::process::ChildStdin::from_std);
            let stdout = child
                .stdout
                .take()
                .map(tokio::process::ChildStdout::from_std);
            let stderr = child
                .stderr
                .take()
                .map(tokio::process::ChildStderr::from_std);
            match (stdin, stdout, stderr) {
                (Some(i), Some(o), Some(e)) => Ok((i?, o?, e?)),
                _ => Err(io::Error::other("pipes missing")),
            }
        })();
        drop(child); // the reaper collects its status
        let (stdin, mut stdout, mut stderr) = match pipes {
            Ok(p) => p,
            Err(e) => {
                kill();
                return reply(
                    &mut framed,
                    Response::error(ErrorCode::SpawnFailed, e.to_string()),
                )
                .await;
            }
        };
        let resp = Response {
            ok: true,
            pid: Some(pid),
            ..Default::default()
        };
        framed
            .send(Frame::Response(resp))
            .await
            .map_err(io::Error::other)?;
        let (mut sink, mut stream) = framed.split();
        // Input on its own task: a command that does not read its stdin
        // must not stop us from draining its stdout (or the client's EOF).
        let mut input = tokio::spawn(async move {
            let mut stdin = Some(stdin);
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(Frame::Data(b)) => {
                        if let Some(w) = stdin.as_mut()
                            && w.write_all(&b).await.is_err()
                        {
                            stdin = None; // the command closed its stdin
                        }
                    }
                    Ok(Frame::Eof) => stdin = None,
                    Ok(Frame::Resize { .. }) => {}
                    _ => break,
                }
            }
        });
        let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 16 * 1024]);
        let (mut out_open, mut err_open) = (true, true);
        let mut code: Option<i32> = None;
        // After the exit, output still in the pipes is sent; a background
        // job that keeps them open is not waited for long.
        let mut drain_until: Option<tokio::time::Instant> = None;
        let result: io::Result<()> = async {
            loop {
                if code.is_some() && !out_open && !err_open {
                    break;
                }
                let deadline = drain_until.unwrap_or_else(|| {
                    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
                });
                tokio::select! {
                    r = stdout.read(&mut out_buf), if out_open => match r {
                        Ok(0) | Err(_) => out_open = false,
                        Ok(n) => sink.send(Frame::Data(Bytes::copy_from_slice(&out_buf[..n]))).await.map_err(io::Error::other)?,
                    },
                    r = stderr.read(&mut err_buf), if err_open => match r {
                        Ok(0) | Err(_) => err_open = false,
                        Ok(n) => sink.send(Frame::Stderr(Bytes::copy_from_slice(&err_buf[..n]))).await.map_err(io::Error::other)?,
                    },
                    c = &mut exit_rx, if code.is_none() => {
                        code = Some(c.unwrap_or(-1));
                        drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                    _ = &mut input => {
                        // The client went away: nobody wants the result.
                        kill();
                        return Ok(());
                    }
                    _ = tokio::time::sleep_until(deadline), if drain_until.is_some() => break,
                }
            }
            sink.send(Frame::Exit(code.unwrap_or(-1))).await.map_err(io::Error::other)?;
            Ok(())
        }
        .await;
        input.abort();
        result
    }
}
