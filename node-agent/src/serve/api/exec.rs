//! `POST /_warren/api/exec`: one command on pipes, its output bounded, its
//! time limited. At the limit the connection to init is dropped, and init
//! kills the command's process group.
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use warren_init::proto::{Frame, MAX_PAYLOAD, Op};
use warren_proto::sandbox::{ExecRequest, ExecResult, MAX_EXEC_BODY, MAX_OUTPUT, Truncated};

use super::ApiError;
use crate::serve::initsock::{self, InitTarget};

/// One output stream, kept up to [`MAX_OUTPUT`] bytes.
#[derive(Default)]
struct Kept {
    bytes: Vec<u8>,
    cut: bool,
}

impl Kept {
    fn push(&mut self, b: &[u8]) {
        let room = MAX_OUTPUT.saturating_sub(self.bytes.len());
        if b.len() > room {
            self.cut = true;
        }
        self.bytes.extend_from_slice(&b[..b.len().min(room)]);
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

pub(super) async fn run(
    State(init): State<Arc<InitTarget>>,
    body: axum::body::Body,
) -> Result<Json<ExecResult>, ApiError> {
    // A request trickled in slowly would hold a tunnel stream: 30 s for it.
    let body = tokio::time::timeout(
        Duration::from_secs(30),
        axum::body::to_bytes(body, MAX_EXEC_BODY),
    )
    .await
    .map_err(|_| ApiError::bad("the exec request did not arrive within 30 s"))?
    .map_err(|_| ApiError::bad(format!("an exec request is at most {MAX_EXEC_BODY} bytes")))?;
    let req: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("not an exec request: {e}")))?;
    let argv = req.to_argv().map_err(ApiError::bad)?;
    let limit = Duration::from_secs(req.timeout().map_err(ApiError::bad)?);
    let op = Op::Exec {
        command: argv,
        env: Default::default(),
        cwd: req.cwd.clone(),
        vars: req.env.clone(),
    };
    let started = Instant::now();
    let (conn, _) = initsock::request(&init, op).await?;
    let (mut sink, mut frames) = conn.split();
    let stdin = req.stdin.unwrap_or_default().into_bytes();
    let (mut out, mut err) = (Kept::default(), Kept::default());
    let ran = tokio::time::timeout(limit, async {
        // Fed alongside the output: a command that fills its stdout before
        // reading all its stdin must not stall either side.
        let feed = async {
            for chunk in stdin.chunks(MAX_PAYLOAD) {
                sink.send(Frame::Data(Bytes::copy_from_slice(chunk)))
                    .await?;
            }
            sink.send(Frame::Eof).await
        };
        let collect = async {
            while let Some(frame) = frames.next().await {
                match frame {
                    Ok(Frame::Data(b)) => out.push(&b),
                    Ok(Frame::Stderr(b)) => err.push(&b),
                    Ok(Frame::Exit(code)) => return Some(code),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
            None
        };
        // The command's end ends the feeding too: one that exits without
        // reading its stdin must not leave the request waiting on it.
        tokio::pin!(feed, collect);
        let mut fed = false;
        loop {
            tokio::select! {
                _ = &mut feed, if !fed => fed = true,
                code = &mut collect => break code,
            }
        }
    })
    .await;
    let (exit_code, timed_out) = match ran {
        Ok(Some(code)) => (Some(code), false),
        Ok(None) => {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "session_error",
                "the session's init ended the command without an exit status",
            ));
        }
        // Dropping the connection (below) makes init kill the group.
        Err(_) => (None, true),
    };
    Ok(Json(ExecResult {
        exit_code,
        stdout: out.text(),
        stderr: err.text(),
        duration_ms: started.elapsed().as_millis() as u64,
        timed_out,
        truncated: Truncated {
            stdout: out.cut,
            stderr: err.cut,
        },
    }))
}
