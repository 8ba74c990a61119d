//! The terminal endpoint: HTTP/1.1 + WebSocket at `/_warren/terminal` on a
//! tunnel stream, bridged to a PTY held by the session's `warren-init`.
//!
//! Protocol (CONTRACT.md): binary frames carry terminal bytes both ways;
//! text frames carry JSON control messages. Client → server:
//! `{"type":"resize","cols":C,"rows":R}`. Server → client:
//! `{"type":"hello","terminal":N}` once attached (pass `?terminal=N` to
//! re-attach after a reconnect), `{"type":"exit","code":N}` when the shell
//! ends. Unknown types are ignored.
//!
//! Query: `cols`, `rows`, `terminal` (re-attach), `term` and `lang` (set
//! `TERM`/`LANG` of a new shell), `command` (run `sh -c COMMAND` instead of
//! a login shell) and `mode=exec` (run `command` on pipes, no PTY: SSH
//! `exec` and subsystems). In exec mode every binary frame starts with a
//! stream byte: `0` stdin (client → server), `1` stdout, `2` stderr
//! (server → client); the client ends stdin with `{"type":"eof"}`.
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use warren_init::proto::{Frame, MAX_PAYLOAD, Op};

pub const TERMINAL_PATH: &str = "/_warren/terminal";

/// WebSocket close codes (4000-4999 are the application's).
pub mod close {
    /// The shell ended normally (an `exit` message precedes it).
    pub const NORMAL: u16 = 1000;
    /// The agent is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Missing or bad credentials (relay).
    pub const AUTH: u16 = 4401;
    /// Valid credentials for another session or tenant (relay).
    pub const FORBIDDEN: u16 = 4403;
    /// The session or the terminal asked for does not exist.
    pub const SESSION_GONE: u16 = 4404;
    /// The session's node is not reachable (relay).
    pub const NODE_LOST: u16 = 4502;
    /// The session's init failed.
    pub const INTERNAL: u16 = 4500;
    /// The request cannot be served as asked.
    pub const BAD_REQUEST: u16 = 4400;
}

/// Query parameters of the terminal URL.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TerminalParams {
    pub cols: u16,
    pub rows: u16,
    /// Re-attach to this terminal instead of opening a new shell.
    pub terminal: Option<u32>,
    /// `sh -c` this instead of a login shell.
    pub command: Option<String>,
    /// Run `command` on pipes rather than a PTY.
    pub exec: bool,
    /// `TERM`, `LANG` for a new shell.
    pub env: std::collections::BTreeMap<String, String>,
}

/// Longest `command` accepted, in bytes.
pub const MAX_COMMAND: usize = 8 * 1024;

/// Exec-mode stream bytes.
pub mod stream_byte {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
}

fn env_value_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b))
}

impl TerminalParams {
    /// Parses `cols`, `rows` and `terminal` from a query string; bad values
    /// fall back to defaults rather than failing the connection.
    pub fn from_query(query: Option<&str>) -> Self {
        let mut p = TerminalParams {
            cols: 80,
            rows: 24,
            ..Default::default()
        };
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "cols" => p.cols = v.parse().unwrap_or(80),
                "rows" => p.rows = v.parse().unwrap_or(24),
                "terminal" => p.terminal = v.parse().ok(),
                "command" if v.len() <= MAX_COMMAND && !v.contains('\0') => {
                    p.command = Some(v.into_owned())
                }
                "mode" => p.exec = v == "exec",
                "term" if env_value_ok(&v) => {
                    p.env.insert("TERM".into(), v.into_owned());
                }
                "lang" if env_value_ok(&v) => {
                    p.env.insert("LANG".into(), v.into_owned());
                }
                _ => {}
            }
        }
        let (c, r) = warren_init::proto::clamp_size(p.cols, p.rows);
        p.cols = c;
        p.rows = r;
        p
    }
}

#[derive(Deserialize)]
struct Control {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    cols: u16,
    #[serde(default)]
    rows: u16,
}

/// What a client's text frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMsg {
    /// A new size, already clamped.
    Resize { cols: u16, rows: u16 },
    /// End of the command's stdin (exec mode).
    Eof,
    /// Unknown types, bad JSON, or a message for the other mode.
    Ignored,
}

/// Parses a client control message (CONTRACT.md: unknown types are ignored).
pub fn parse_control(text: &str, exec: bool) -> ControlMsg {
    let Ok(c) = serde_json::from_str::<Control>(text) else {
        return ControlMsg::Ignored;
    };
    match c.kind.as_str() {
        "resize" if !exec => {
            let (cols, rows) = warren_init::proto::clamp_size(c.cols, c.rows);
            ControlMsg::Resize { cols, rows }
        }
        "eof" if exec => ControlMsg::Eof,
        _ => ControlMsg::Ignored,
    }
}

fn ws_config() -> WebSocketConfig {
    // tungstenite fills its whole read buffer (128 KiB by default) on every
    // read: per open terminal that was most of the agent's memory. Keys and
    // resizes are small; larger frames still grow the buffer as needed.
    WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
        .read_buffer_size(READ_BUFFER)
}

/// WebSocket read buffer per terminal, in bytes.
pub const READ_BUFFER: usize = 8 * 1024;

fn closing(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }))
}

/// Serves one terminal WebSocket on `stream` for the session's init.
pub async fn serve<S>(
    stream: S,
    init: &crate::initsock::InitTarget,
    shutdown: CancellationToken,
    activity: Option<std::sync::Arc<std::sync::atomic::AtomicI64>>,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let params = Arc::new(Mutex::new(None::<TerminalParams>));
    let p2 = params.clone();
    #[allow(clippy::result_large_err)] // the signature tungstenite asks for
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != TERMINAL_PATH {
            let mut e = ErrorResponse::new(Some(format!(
                "no such endpoint; the terminal is at {TERMINAL_PATH}\n"
            )));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        *p2.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(TerminalParams::from_query(req.uri().query()));
        Ok(resp)
    };
    let mut ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config()))
            .await?;
    let params = params
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();

    let sh = |c: &String| vec!["/bin/sh".to_string(), "-c".to_string(), c.clone()];
    let open = Op::Open {
        cols: params.cols,
        rows: params.rows,
        env: params.env.clone(),
        command: params.command.as_ref().map(sh),
    };
    let exec = params.exec;
    let op = match (&params.command, params.terminal) {
        (Some(c), _) if exec => Op::Exec {
            command: sh(c),
            env: params.env.clone(),
        },
        (None, _) if exec => {
            close_with(
                &mut ws,
                closing(close::BAD_REQUEST, "mode=exec needs a command"),
            )
            .await;
            return Ok(());
        }
        (None, Some(terminal)) => Op::Attach {
            terminal,
            cols: params.cols,
            rows: params.rows,
        },
        _ => open.clone(),
    };
    let attempt = match crate::initsock::request(init, op).await {
        // The shell asked for ended while the client was away: start a new
        // one (the hello names it) rather than leave the user with nothing.
        Err(warren_init::client::ClientError::Refused { code, .. }) if code == "not_found" => {
            crate::initsock::request(init, open).await
        }
        other => other,
    };
    let (mut init, resp) = match attempt {
        Ok(x) => x,
        Err(e) => {
            let code = match &e {
                warren_init::client::ClientError::Refused { code, .. } if code == "not_found" => {
                    close::SESSION_GONE
                }
                _ => close::INTERNAL,
            };
            close_with(&mut ws, closing(code, &truncate(&e.to_string()))).await;
            return Ok(());
        }
    };
    let hello = serde_json::json!({"type": "hello", "terminal": resp.terminal, "pid": resp.pid});
    ws.send(Message::Text(hello.to_string().into())).await?;

    let touch = || {
        if let Some(a) = &activity {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            a.store(now, std::sync::atomic::Ordering::Relaxed);
        }
    };
    // A frame read ahead while coalescing output.
    let mut held = None;
    loop {
        touch();
        tokio::select! {
            _ = shutdown.cancelled() => {
                close_with(&mut ws, closing(close::GOING_AWAY, "agent shutting down")).await;
                return Ok(());
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let data = match (exec, b.first()) {
                        (false, _) => &b[..],
                        (true, Some(&stream_byte::STDIN)) => &b[1..],
                        (true, _) => continue, // no other stream flows this way
                    };
                    for chunk in data.chunks(MAX_PAYLOAD) {
                        // A write can fail because the command just ended:
                        // its exit (already sent by init) is still to be read.
                        if init.send(Frame::Data(Bytes::copy_from_slice(chunk))).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Text(t))) => match parse_control(&t, exec) {
                    ControlMsg::Resize { cols, rows } => {
                        let _ = init.send(Frame::Resize { cols, rows }).await;
                    }
                    ControlMsg::Eof => {
                        let _ = init.send(Frame::Eof).await;
                    }
                    ControlMsg::Ignored => {}
                },
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {} // ping/pong are answered by tungstenite
                Some(Err(e)) => {
                    debug!("terminal websocket error: {e}");
                    return Ok(());
                }
            },
            frame = async {
                match held.take() {
                    Some(f) => f,
                    None => init.next().await,
                }
            } => match frame {
                Some(Ok(Frame::Data(b))) if exec => {
                    ws.send(Message::Binary(tagged(stream_byte::STDOUT, &b))).await?;
                }
                Some(Ok(Frame::Stderr(b))) if exec => {
                    ws.send(Message::Binary(tagged(stream_byte::STDERR, &b))).await?;
                }
                Some(Ok(Frame::Data(b))) => {
                    ws.feed(Message::Binary(b)).await?;
                    // Coalesce whatever else is ready before one flush.
                    // Anything else that was ready (the exit) is kept for
                    // the next turn, not dropped.
                    loop {
                        match futures_util::FutureExt::now_or_never(init.next()) {
                            Some(Some(Ok(Frame::Data(more)))) => ws.feed(Message::Binary(more)).await?,
                            Some(other) => {
                                held = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    ws.flush().await?;
                }
                Some(Ok(Frame::Exit(code))) => {
                    let exit = serde_json::json!({"type": "exit", "code": code});
                    ws.send(Message::Text(exit.to_string().into())).await?;
                    close_with(&mut ws, closing(close::NORMAL, "shell exited")).await;
                    return Ok(());
                }
                Some(Ok(_)) | Some(Err(_)) | None => {
                    close_with(&mut ws, closing(close::INTERNAL, "the session's terminal ended unexpectedly")).await;
                    return Ok(());
                }
            },
        }
    }
}

/// Sends a close frame and waits briefly for the client's, so the stream
/// is not torn down while the client still writes (its reads would fail
/// before it saw our last messages).
async fn close_with<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, msg: Message)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = ws.send(msg).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

fn tagged(stream: u8, data: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(stream);
    v.extend_from_slice(data);
    v.into()
}

fn truncate(s: &str) -> String {
    // Close reasons are limited to 123 bytes.
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_is_bounded() {
        assert_eq!(
            TerminalParams::from_query(Some("cols=132&rows=50&terminal=3")),
            TerminalParams {
                cols: 132,
                rows: 50,
                terminal: Some(3),
                ..Default::default()
            }
        );
        let p = TerminalParams::from_query(Some(
            "mode=exec&command=echo%20hi&term=xterm-256color&lang=en_US.UTF-8",
        ));
        assert!(p.exec && p.command.as_deref() == Some("echo hi"));
        assert_eq!(p.env["TERM"], "xterm-256color");
        assert_eq!(p.env["LANG"], "en_US.UTF-8");
        // Hostile values are dropped, not passed to the shell's environment.
        let p = TerminalParams::from_query(Some("term=x%0Ay&lang=$(reboot)"));
        assert!(p.env.is_empty());
        let long = "x".repeat(MAX_COMMAND + 1);
        assert!(
            TerminalParams::from_query(Some(&format!("command={long}")))
                .command
                .is_none()
        );
        let p = TerminalParams::from_query(Some("cols=99999&rows=-1&terminal=x"));
        assert_eq!((p.cols, p.rows, p.terminal), (80, 24, None));
        let p = TerminalParams::from_query(Some("cols=0&rows=5000"));
        assert_eq!((p.cols, p.rows), (1, 1000));
        assert_eq!(TerminalParams::from_query(None).cols, 80);
    }

    #[test]
    fn close_reasons_fit() {
        assert!(truncate(&"é".repeat(200)).len() <= 123);
    }
}
