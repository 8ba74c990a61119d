//! SSH channels to the session: a session channel (shell, command, `sftp`)
//! becomes the terminal WebSocket over a tunnel stream, resumed where it
//! stood when the stream is lost; `direct-tcpip` becomes a `port N` stream.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info, warn};
use warren_proto::input::{InputStream, MAX_PENDING};
use warren_proto::terminal::{self, ClientMsg, Cursor, ServerMsg, TerminalQuery, stream_byte};
use warren_tunnel::TunnelStream;
use warren_tunnel::proto::{ReplyCode, StreamHeader, StreamKind};
use warren_tunnel::server::OpenError;

use super::server::{SshContext, Target};

/// Time to open the tunnel stream and the terminal handshake.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Finds an `sftp-server` where Debian, Alpine and Fedora put it.
const SFTP_COMMAND: &str = "for p in /usr/lib/openssh/sftp-server /usr/lib/ssh/sftp-server \
     /usr/libexec/openssh/sftp-server /usr/libexec/sftp-server; do \
     [ -x \"$p\" ] && exec \"$p\"; done; \
     echo 'warren: this session image has no sftp-server (install openssh-sftp-server)' >&2; exit 127";
/// A shell without a PTY (`ssh -T`).
const PLAIN_SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi";

/// Bridges a `direct-tcpip` channel to port `port` of the session.
pub(super) async fn forward(
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    ctx: &SshContext,
    target: Target,
    port: u16,
    peer: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let mut tunnel = match open_stream(ctx, &target, StreamKind::Port(port), peer).await {
        Ok(s) => s,
        Err(e) => {
            debug!(session = %target.session, port, "ssh forward refused: {e}");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    reply.accept().await;
    tokio::spawn(async move {
        let mut ch = channel.into_stream();
        if let Err(e) = tokio::io::copy_bidirectional(&mut ch, &mut tunnel).await {
            debug!("ssh forward ended: {e}");
        }
        drop(slot);
    });
}

async fn open_stream(
    ctx: &SshContext,
    target: &Target,
    kind: StreamKind,
    peer: SocketAddr,
) -> Result<TunnelStream, String> {
    let header = StreamHeader {
        session: target.session.clone(),
        kind,
        request_id: format!("ssh{:013x}", rand::random::<u64>() >> 12),
        client_addr: Some(peer),
    };
    match ctx.registry.open_stream(&target.route.node, &header).await {
        Ok(s) => {
            ctx.metrics.streams_opened.inc();
            Ok(s)
        }
        Err(OpenError::NodeNotConnected(_)) => Err(format!(
            "session {}'s node is not connected to this relay right now",
            target.session
        )),
        Err(OpenError::Rejected {
            code: ReplyCode::SessionNotFound,
            message,
        }) => {
            ctx.access.routes.invalidate(&target.session).await;
            Err(format!("session {} is gone ({message})", target.session))
        }
        Err(e) => Err(format!("cannot reach session {}: {e}", target.session)),
    }
}

/// What a session channel was asked to run.
enum Run {
    Shell,
    Command(String),
    Sftp,
    /// `attach N`: join terminal N (one the browser or another client has
    /// open), resuming at its recent output, instead of a new shell.
    Attach(u32),
}

/// `attach N` as the whole command: the terminal number.
fn attach_command(c: &str) -> Option<u32> {
    let n = c.trim().strip_prefix("attach ")?.trim();
    (!n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

#[derive(Default)]
struct Pty {
    term: String,
    cols: u16,
    rows: u16,
}

fn dim(v: u32, default: u16) -> u16 {
    if v == 0 { default } else { v.min(1000) as u16 }
}

fn env_ok(name: &str) -> bool {
    matches!(name, "TERM" | "LANG")
}

/// What a session channel asked for before running: the program, its
/// PTY (if any) and the environment it may set (`TERM`, `LANG`).
struct Request {
    run: Run,
    pty: Option<Pty>,
    env: BTreeMap<String, String>,
}

/// Answers a channel's setup requests until it asks to run something;
/// `None` if it closes first.
async fn channel_request(
    rx: &mut russh::ChannelReadHalf,
    handle: &Handle,
    id: russh::ChannelId,
) -> Option<Request> {
    let mut pty: Option<Pty> = None;
    let mut env = BTreeMap::new();
    let reply = |ok: bool, want: bool| async move {
        if want {
            let _ = if ok {
                handle.channel_success(id).await
            } else {
                handle.channel_failure(id).await
            };
        }
    };
    let run = loop {
        match rx.wait().await {
            Some(ChannelMsg::RequestPty {
                want_reply,
                term,
                col_width,
                row_height,
                ..
            }) => {
                pty = Some(Pty {
                    term,
                    cols: dim(col_width, 80),
                    rows: dim(row_height, 24),
                });
                reply(true, want_reply).await;
            }
            Some(ChannelMsg::SetEnv {
                want_reply,
                variable_name,
                variable_value,
            }) => {
                let ok = env_ok(&variable_name);
                if ok {
                    env.insert(variable_name, variable_value);
                }
                reply(ok, want_reply).await;
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            }) => {
                if let Some(p) = pty.as_mut() {
                    p.cols = dim(col_width, p.cols);
                    p.rows = dim(row_height, p.rows);
                }
            }
            Some(ChannelMsg::RequestShell { want_reply }) => {
                reply(true, want_reply).await;
                break Run::Shell;
            }
            Some(ChannelMsg::Exec {
                want_reply,
                command,
            }) => {
                let ok = command.len() <= terminal::MAX_COMMAND;
                reply(ok, want_reply).await;
                if !ok {
                    continue;
                }
                let command = String::from_utf8_lossy(&command).into_owned();
                break match attach_command(&command) {
                    Some(n) => Run::Attach(n),
                    None => Run::Command(command),
                };
            }
            Some(ChannelMsg::RequestSubsystem { want_reply, name }) => {
                let ok = name == "sftp";
                reply(ok, want_reply).await;
                if ok {
                    break Run::Sftp;
                }
            }
            Some(ChannelMsg::Eof) => {}
            Some(ChannelMsg::Close) | None => return None,
            // Agent forwarding (`ssh -A`, common in users' configs) is
            // refused and the channel carries on, as OpenSSH's server does
            // when it is off: russh has answered it already (the handler's
            // default), and a second failure here would be taken by the
            // client as the answer to its next request ("exec request
            // failed").
            Some(ChannelMsg::AgentForward { .. }) => {}
            Some(ChannelMsg::RequestX11 { want_reply, .. }) => {
                reply(false, want_reply).await;
            }
            Some(_) => {}
        }
    };

    Some(Request { run, pty, env })
}

/// One session channel: wait for its request, then bridge it to the
/// session's terminal over the tunnel.
pub(super) async fn session_channel(
    channel: Channel<Msg>,
    handle: Handle,
    ctx: Arc<SshContext>,
    target: Target,
    peer: SocketAddr,
) {
    let id = channel.id();
    let (mut rx, tx) = channel.split();
    let Some(Request { run, pty, env }) = channel_request(&mut rx, &handle, id).await else {
        return;
    };

    // The terminal URL: a PTY for shells and `ssh -t CMD`, pipes otherwise.
    let (mut query, exec) = terminal_query(&run, pty.as_ref(), &env);
    // What was typed and not yet acknowledged, sent again after a resume
    // (PTY channels; the terminal writes each byte once). Named in the
    // first connection's query already.
    let mut input = (!exec).then(|| {
        let id = format!("ssh{:029x}", rand::random::<u128>() >> 12);
        query.input = Some(id.clone());
        InputStream::new(id)
    });
    // Input is sent once the connection's hello said where the stream
    // stands; `tracked` is off for a terminal that keeps no input streams
    // (an older init): then input is sent as it comes, as before.
    let mut hello_seen = false;
    let mut tracked = true;

    let mut out = tx.make_writer();
    let mut err = tx.make_writer_ext(Some(1));
    let finish = |code: u32| {
        let tx = &tx;
        async move {
            let _ = tx.exit_status(code).await;
            let _ = tx.eof().await;
            let _ = tx.close().await;
        }
    };

    let connected = connect_terminal(&ctx, &target, peer, &query).await;
    let mut ws = match connected {
        Ok(ws) => ws,
        Err(msg) => {
            let _ = err.write_all(format!("warren: {msg}\r\n").as_bytes()).await;
            let _ = err.flush().await;
            finish(255).await;
            return;
        }
    };
    ctx.metrics.ssh_channels.inc();

    let mut code: Option<i32> = None;
    let mut gone: Option<String> = None;
    // Where this channel stands in the terminal's output, so that a stream
    // lost to a node or relay hiccup resumes exactly (PTY channels only:
    // an exec's pipes do not outlive their stream).
    let mut cursor = Cursor::default();
    // What was typed and not yet acknowledged, sent again after a resume
    // (PTY channels; the terminal writes each byte once).
    loop {
        let mut lost: Option<String> = None;
        // While the terminal has this much unacknowledged, the channel is not
        // read (SSH flow control holds the client back).
        let room = !tracked || input.as_ref().is_none_or(|i| i.pending() < MAX_PENDING);
        tokio::select! {
            m = rx.wait(), if room => match m {
                Some(ChannelMsg::Data { data }) if tracked && input.is_some() => {
                    if let Some(i) = input.as_mut() {
                        i.push_over(&data);
                    }
                    // Before the hello, kept: the hello sends it.
                    if hello_seen && ws.send(Message::Binary(data.to_vec().into())).await.is_err() {
                        lost = Some("the connection to the session was lost".into());
                    }
                }
                Some(ChannelMsg::Data { data }) => {
                    let frame = if exec {
                        let mut v = Vec::with_capacity(data.len() + 1);
                        v.push(stream_byte::STDIN);
                        v.extend_from_slice(&data);
                        v
                    } else {
                        data.to_vec()
                    };
                    if ws.send(Message::Binary(frame.into())).await.is_err() {
                        lost = Some("the connection to the session was lost".into());
                    }
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) if !exec => {
                    let msg = ClientMsg::Resize { cols: dim(col_width, 80), rows: dim(row_height, 24) };
                    let _ = ws.send(Message::Text(msg.to_text().into())).await;
                }
                Some(ChannelMsg::Eof) if exec => {
                    let _ = ws.send(Message::Text(ClientMsg::Eof.to_text().into())).await;
                }
                Some(ChannelMsg::Close) | None => {
                    let _ = ws.close(None).await;
                    return;
                }
                Some(_) => {}
            },
            f = ws.next() => match f {
                Some(Ok(Message::Binary(b))) => {
                    if !exec {
                        cursor.on_bytes(b.len());
                    }
                    let written = match (exec, b.first()) {
                        (false, _) => out.write_all(&b).await,
                        (true, Some(&stream_byte::STDOUT)) => out.write_all(&b[1..]).await,
                        (true, Some(&stream_byte::STDERR)) => err.write_all(&b[1..]).await,
                        (true, _) => Ok(()),
                    };
                    if written.is_err() {
                        let _ = ws.close(None).await;
                        return;
                    }
                }
                Some(Ok(Message::Text(t))) => match ServerMsg::parse(&t) {
                    ServerMsg::Exit { code: c } => code = Some(c),
                    hello @ ServerMsg::Hello { .. } => {
                        if let Err(msg) = hello.check_version() {
                            warn!(session = %target.session, "terminal refused: {msg}");
                            gone = Some(msg);
                            break;
                        }
                        cursor.on_message(&hello);
                        // Send again what the terminal has not written
                        // (all of it, to a terminal without input streams,
                        // which is then sent untracked from here on).
                        if let (Some(i), ServerMsg::Hello { input: written, .. }) = (input.as_mut(), &hello) {
                            tracked = written.is_some();
                            let again = i.resend(written.unwrap_or(0));
                            if !tracked {
                                i.ack(u64::MAX);
                            }
                            if !again.is_empty() && ws.send(Message::Binary(again.into())).await.is_err() {
                                lost = Some("the connection to the session was lost".into());
                            }
                        }
                        hello_seen = true;
                    }
                    ServerMsg::InputAck { offset, .. } => {
                        if let Some(i) = input.as_mut() {
                            i.ack(offset);
                        }
                    }
                    ServerMsg::Gap { from, to } => {
                        cursor.on_message(&ServerMsg::Gap { from, to });
                        let lost = to.saturating_sub(from);
                        warn!(session = %target.session, lost, "ssh bridge fell behind the terminal; output skipped");
                        let _ = err.write_all(format!("\r\nwarren: {lost} bytes of output were skipped\r\n").as_bytes()).await;
                    }
                    // The hello set where output continues.
                    ServerMsg::Rewound { .. }
                    | ServerMsg::Viewers { .. }
                    | ServerMsg::Access { .. }
                    | ServerMsg::Pong { .. }
                    | ServerMsg::Unknown => {}
                },
                Some(Ok(Message::Close(frame))) => {
                    if code.is_none() {
                        let going_away = frame.as_ref().is_some_and(|f| u16::from(f.code) == terminal::close::GOING_AWAY);
                        let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                        let why = if why.is_empty() { "the session's terminal closed".to_string() } else { why };
                        // An agent that restarts says so: its shells live on.
                        if going_away {
                            lost = Some(why);
                        } else {
                            gone = Some(why);
                            break;
                        }
                    } else {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                other => {
                    if code.is_some() {
                        break;
                    }
                    lost = Some(format!("the stream ended: {:?}", other.map(|r| r.err())));
                }
            },
        }
        let Some(why) = lost else { continue };
        if exec || cursor.terminal.is_none() {
            warn!(session = %target.session, "terminal stream ended early: {why}");
            gone = Some("the session's node was lost".into());
            break;
        }
        // Resume where this channel stands; the user sees nothing but a pause.
        info!(session = %target.session, offset = ?cursor.offset, "terminal stream lost ({why}); resuming");
        cursor.resume(&mut query);
        match resume_terminal(&ctx, &target, peer, &query).await {
            Ok(new) => {
                ws = new;
                hello_seen = false;
            }
            Err(msg) => {
                gone = Some(msg);
                break;
            }
        }
    }
    let _ = out.flush().await;
    if let Some(msg) = gone {
        let _ = err
            .write_all(format!("\r\nwarren: {msg}\r\n").as_bytes())
            .await;
        let _ = err.flush().await;
    }
    // Exit codes of signals (128+n) pass as they are; anything odd is 255.
    let status = code.and_then(|c| u32::try_from(c).ok()).unwrap_or(255);
    finish(status).await;
}

/// How long an SSH channel keeps trying to resume a lost terminal stream.
const RESUME_WINDOW: Duration = Duration::from_secs(30);

type TerminalSocket = tokio_tungstenite::WebSocketStream<TunnelStream>;

/// Opens the terminal WebSocket over a tunnel stream.
async fn connect_terminal(
    ctx: &SshContext,
    target: &Target,
    peer: SocketAddr,
    query: &TerminalQuery,
) -> Result<TerminalSocket, String> {
    let url = format!(
        "ws://{}.ssh{}?{}",
        target.session,
        terminal::PATH,
        query.to_query()
    );
    tokio::time::timeout(OPEN_TIMEOUT, async {
        let stream = open_stream(ctx, target, StreamKind::Terminal, peer).await?;
        // A small read buffer: tungstenite touches all of it on every read.
        let config = WebSocketConfig::default()
            .max_message_size(Some(terminal::MAX_MESSAGE))
            .max_frame_size(Some(terminal::MAX_MESSAGE))
            .read_buffer_size(16 * 1024);
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| format!("the session's terminal did not answer: {e}"))
    })
    .await
    .unwrap_or_else(|_| Err("the session's node did not answer in time".into()))
}

/// Reconnects a lost terminal stream (the node or its tunnel came back),
/// for up to [`RESUME_WINDOW`], with backoff.
async fn resume_terminal(
    ctx: &SshContext,
    target: &Target,
    peer: SocketAddr,
    query: &TerminalQuery,
) -> Result<TerminalSocket, String> {
    let deadline = tokio::time::Instant::now() + RESUME_WINDOW;
    let mut wait = Duration::from_millis(100);
    loop {
        match connect_terminal(ctx, target, peer, query).await {
            Ok(ws) => return Ok(ws),
            Err(e) if tokio::time::Instant::now() + wait >= deadline => {
                return Err(format!(
                    "the session's terminal was lost and did not come back ({e})"
                ));
            }
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The agent's terminal query for what the channel asked to run, and
/// whether it runs on pipes (exec mode).
fn terminal_query(
    run: &Run,
    pty: Option<&Pty>,
    env: &BTreeMap<String, String>,
) -> (TerminalQuery, bool) {
    let mut q = TerminalQuery::default();
    let (command, exec) = match (run, pty) {
        (Run::Attach(n), _) => {
            q.terminal = Some(*n);
            (None, false)
        }
        (Run::Sftp, _) => (Some(SFTP_COMMAND), true),
        (Run::Shell, None) => (Some(PLAIN_SHELL), true),
        (Run::Command(c), None) => (Some(c.as_str()), true),
        (Run::Shell, Some(_)) => (None, false),
        (Run::Command(c), Some(_)) => (Some(c.as_str()), false),
    };
    q.command = command.map(str::to_string);
    q.exec = exec;
    let term = match pty {
        Some(p) => {
            (q.cols, q.rows) = terminal::clamp_size(p.cols, p.rows);
            Some(p.term.as_str()).filter(|t| !t.is_empty())
        }
        None => env.get("TERM").map(String::as_str),
    };
    if let Some(t) = term {
        q.env.insert("TERM".into(), t.into());
    }
    if let Some(l) = env.get("LANG") {
        q.env.insert("LANG".into(), l.clone());
    }
    (q, exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_is_the_whole_command() {
        assert_eq!(attach_command("attach 3"), Some(3));
        assert_eq!(attach_command(" attach  12 "), Some(12));
        assert_eq!(attach_command("attach"), None);
        assert_eq!(attach_command("attach 1; rm -rf /"), None);
        assert_eq!(attach_command("attach 99999999999"), None);
        assert_eq!(attach_command("echo attach 1"), None);
        let (q, exec) = terminal_query(&Run::Attach(4), None, &BTreeMap::new());
        assert_eq!((q.terminal, q.command, exec), (Some(4), None, false));
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(dim(0, 80), 80);
        assert_eq!(dim(100_000, 80), 1000);
        assert_eq!(dim(132, 80), 132);
    }
}
