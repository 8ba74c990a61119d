//! The terminal endpoint: HTTP/1.1 + WebSocket at [`PATH`] on a tunnel
//! stream, bridged to a PTY held by the session's `warren-init`.
//!
//! The protocol (messages, query, close codes, offsets) is defined in
//! [`warren_proto::terminal`]; this module serves it.
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warren_init::client::{ClientError, InitConn};
use warren_init::proto::{ErrorCode, Frame, MAX_PAYLOAD, Op};
use warren_proto::share::{ShareGrant, ShareMode};
pub use warren_proto::terminal::{
    ClientMsg, MAX_COMMAND, PATH, ServerMsg, TerminalQuery, close, stream_byte,
};

use super::recorder::Recorders;
use super::shares::{Caller, Ending, ShareBook};
use super::viewers::Viewers;

fn ws_config() -> WebSocketConfig {
    // tungstenite fills its whole read buffer (128 KiB by default) on every
    // read: per open terminal that was most of the agent's memory. Keys and
    // resizes are small; larger frames still grow the buffer as needed.
    WebSocketConfig::default()
        .max_message_size(Some(warren_proto::terminal::MAX_MESSAGE))
        .max_frame_size(Some(warren_proto::terminal::MAX_MESSAGE))
        .read_buffer_size(READ_BUFFER)
}

/// WebSocket read buffer per terminal, in bytes: keys and resizes are a
/// few bytes each, and the stream under it is QUIC's (a smaller read is a
/// copy out of quinn's buffers, not a system call); a paste grows it.
pub const READ_BUFFER: usize = 256;

pub(super) fn closing(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }))
}

/// Serves one terminal WebSocket on `stream` for the session's init, until
/// the client leaves, the agent shuts down (`shutdown`) or the relay the
/// stream came through drains (`relay_draining`); the last two close with
/// 1001 so the client reconnects at once.
#[allow(clippy::too_many_arguments)] // each end and hook is its own
pub async fn serve<S>(
    stream: S,
    init: &crate::serve::initsock::InitTarget,
    shutdown: CancellationToken,
    relay_draining: CancellationToken,
    session_gone: CancellationToken,
    activity: Option<std::sync::Arc<std::sync::atomic::AtomicI64>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    node: Option<NodeView>,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The handshake and the attach run once, at the start: boxed, their
    // state is freed when they end instead of sizing the terminal's
    // long-lived future.
    let Some((mut ws, params, caller)) = Box::pin(handshake(stream)).await? else {
        return Ok(());
    };
    let Some(mut attached) =
        Box::pin(attach(&mut ws, init, &params, &caller, node.as_ref())).await?
    else {
        return Ok(());
    };
    if let (Some(n), Some(t), true) = (&node, attached.terminal, attached.opened) {
        n.recorders.start(
            &n.session,
            init,
            t,
            attached.offset.unwrap_or(0),
            (params.cols, params.rows),
            shutdown.clone(),
        );
    }
    // The query's strings are not needed past the attach.
    drop(params);
    let ends = Ends {
        shutdown,
        relay_draining,
        session_gone,
    };
    // Everything by reference: an async fn's by-value arguments are kept
    // twice in its state (as passed and as moved into the body), and this
    // state lives as long as the terminal.
    pump(
        &mut ws,
        &mut attached,
        &ends,
        activity.as_ref(),
        metrics.as_ref(),
        node.as_ref(),
        &caller,
    )
    .await
}

/// What this node knows beyond one connection: the session's share links,
/// who else is attached, and its recorders.
#[derive(Clone)]
pub struct NodeView {
    pub session: String,
    pub shares: Arc<ShareBook>,
    pub viewers: Arc<Viewers>,
    pub recorders: Arc<Recorders>,
    /// Says that a share link's holder attached (audited by control).
    pub joined: Option<Joined>,
}

/// Told a share link's id and its holder's name when the holder attaches.
pub type Joined = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What ends a terminal connection from outside it.
struct Ends {
    /// The agent stops (close 1001: reconnect).
    shutdown: CancellationToken,
    /// The relay carrying it drains (close 1001: reconnect).
    relay_draining: CancellationToken,
    /// The session was deleted (close 4404).
    session_gone: CancellationToken,
}

/// Accepts the WebSocket at [`PATH`] and reads the client's query. `None`
/// when the client was refused (its protocol version), with the socket
/// closed.
async fn handshake<S>(
    stream: S,
) -> anyhow::Result<Option<(WebSocketStream<S>, TerminalQuery, Caller)>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let params = Arc::new(Mutex::new(None::<TerminalQuery>));
    let p2 = params.clone();
    let caller = Arc::new(Mutex::new(Caller::default()));
    let c2 = caller.clone();
    #[allow(clippy::result_large_err)] // the signature tungstenite asks for
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != PATH {
            let mut e = ErrorResponse::new(Some(format!(
                "no such endpoint; the terminal is at {PATH}\n"
            )));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        *p2.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(TerminalQuery::parse(req.uri().query()));
        *c2.lock().unwrap_or_else(|e| e.into_inner()) = Caller::from_headers(req.headers());
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
    if let Err(msg) = params.check_version() {
        warn!("terminal client refused: {msg}");
        close_with(&mut ws, closing(close::UNSUPPORTED_VERSION, &msg)).await;
        return Ok(None);
    }
    let caller = caller.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Some((ws, params, caller)))
}

/// A terminal (or command) the client is attached to.
pub(super) struct Attached {
    pub(super) init: InitConn,
    /// A command run with separate streams (`mode=exec`), not a terminal.
    pub(super) exec: bool,
    /// Offset of the next output byte, for a terminal.
    pub(super) offset: Option<u64>,
    /// The terminal, when it is one.
    pub(super) terminal: Option<u32>,
    /// It was opened by this connection (not re-attached).
    pub(super) opened: bool,
    /// The share link it came through.
    pub(super) share: Option<ShareGrant>,
    /// Its place among the link's connections (held while it lasts: never
    /// read, given back when dropped).
    #[allow(dead_code)]
    pub(super) link_seat: Option<super::shares::LinkSeat>,
}

/// Opens, re-attaches or execs what the client asked for at the session's
/// init, and says so in the hello (and a gap, when the resume offset is no
/// longer held). `None` when init refused, with the socket closed.
async fn attach<S>(
    ws: &mut WebSocketStream<S>,
    init: &crate::serve::initsock::InitTarget,
    params: &TerminalQuery,
    caller: &Caller,
    node: Option<&NodeView>,
) -> anyhow::Result<Option<Attached>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(id) = &caller.share {
        return super::shared::attach(ws, init, params, caller, id, node).await;
    }
    let sh = |c: &String| vec!["/bin/sh".to_string(), "-c".to_string(), c.clone()];
    let open = Op::Open {
        cols: params.cols,
        rows: params.rows,
        env: params.env.clone(),
        command: params.command.as_ref().map(sh),
        input: params.input.clone(),
        echo_state: true,
    };
    let exec = params.exec;
    let op = match (&params.command, params.terminal) {
        (Some(c), _) if exec => Op::Exec {
            command: sh(c),
            env: params.env.clone(),
            cwd: None,
            vars: Default::default(),
        },
        (None, _) if exec => {
            close_with(ws, closing(close::BAD_REQUEST, "mode=exec needs a command")).await;
            return Ok(None);
        }
        // A named terminal is re-attached, even when the client also
        // names the command it was started with (an SSH `-t CMD` channel
        // resuming): the command must not run twice.
        (_, Some(terminal)) => Op::Attach {
            terminal,
            cols: params.cols,
            rows: params.rows,
            offset: params.offset,
            watch: false,
            input: params.input.clone(),
            echo_state: true,
        },
        _ => open.clone(),
    };
    let mut replaced = false;
    let op_kind = if matches!(op, Op::Attach { .. }) {
        OpKind::Attach
    } else {
        OpKind::Other
    };
    let attempt = match crate::serve::initsock::request(init, op).await {
        // The shell asked for ended while the client was away: start a new
        // one (the hello names it) rather than leave the user with nothing.
        // Never for a command, which would then run again.
        Err(ClientError::Refused {
            code: ErrorCode::NotFound,
            ..
        }) if params.command.is_none() => {
            replaced = true;
            crate::serve::initsock::request(init, open).await
        }
        other => other,
    };
    let (init, resp) = match attempt {
        Ok(x) => x,
        Err(e) => {
            close_refused(ws, &e).await;
            return Ok(None);
        }
    };
    let offset = (!exec).then_some(resp.offset).flatten();
    let hello = ServerMsg::Hello {
        v: warren_proto::terminal::VERSION,
        terminal: resp.terminal,
        pid: resp.pid,
        offset,
        input: resp.input,
        echo: resp.echo_state,
    };
    ws.send(Message::Text(hello.to_text().into())).await?;
    let opened = !matches!(op_kind, OpKind::Attach) || replaced;
    // The client asked to resume at an offset that is no longer held: say
    // what is lost. (A replaced shell is told by the hello's new terminal.)
    if let (Some(asked), Some(got)) = (params.offset, offset)
        && asked != got
        && !replaced
    {
        // Before what is held: those bytes are lost. Past the end: there
        // never were such bytes (a client's own mistake, or an init that
        // restarted), said as such rather than as a loss.
        let notice = match resp.end {
            Some(end) if asked > end => ServerMsg::Rewound { asked, end },
            _ => ServerMsg::Gap {
                from: asked,
                to: got,
            },
        };
        ws.send(Message::Text(notice.to_text().into())).await?;
    }
    Ok(Some(Attached {
        init,
        exec,
        offset,
        terminal: (!exec).then_some(resp.terminal).flatten(),
        opened: opened && !exec,
        share: None,
        link_seat: None,
    }))
}

#[derive(PartialEq)]
enum OpKind {
    Attach,
    Other,
}

/// Carries bytes both ways between the client and init until one side
/// ends, the agent shuts down or the relay drains.
async fn pump<S>(
    ws: &mut WebSocketStream<S>,
    attached: &mut Attached,
    ends: &Ends,
    activity: Option<&std::sync::Arc<std::sync::atomic::AtomicI64>>,
    metrics: Option<&Arc<crate::metrics::Metrics>>,
    node: Option<&NodeView>,
    caller: &Caller,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The link's seat stays in `attached` (the caller's) while this runs.
    let (exec, offset, terminal) = (attached.exec, attached.offset, attached.terminal);
    let share = attached.share.as_ref();
    let init = &mut attached.init;
    let read_only = share.is_some_and(|g| g.mode == ShareMode::Read);
    // Everyone on this terminal is told who is attached, now and on change.
    let mut seat = match (node, terminal) {
        (Some(n), Some(t)) => Some(n.viewers.join(&n.session, t, caller.name.clone())),
        _ => None,
    };
    if let Some(seat) = &mut seat {
        let w = seat.rx.borrow_and_update().clone();
        let msg = ServerMsg::Viewers {
            count: w.count,
            names: w.names,
        };
        ws.send(Message::Text(msg.to_text().into())).await?;
    }
    // A share link's connection ends with its link. Boxed, and only for a
    // link: its timers would otherwise sit in every terminal's future.
    let mut link_ended: std::pin::Pin<Box<dyn std::future::Future<Output = Ending> + Send + '_>> =
        match (node, share) {
            (Some(n), Some(g)) => Box::pin(n.shares.ended(&n.session, &g.id)),
            _ => Box::pin(std::future::pending()),
        };
    let touch = || {
        if let Some(a) = activity {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            a.store(now, std::sync::atomic::Ordering::Relaxed);
        }
    };
    // Counters looked up once, not per frame (a labelled lookup locks).
    let byte_counters = metrics.map(|m| {
        (
            m.terminal_bytes.with_label_values(&["in"]),
            m.terminal_bytes.with_label_values(&["out"]),
        )
    });
    // A frame read ahead while coalescing output.
    let mut held = None;
    // Offset just past the last byte sent (for gap notices).
    let mut sent = offset.unwrap_or(0);
    touch();
    loop {
        tokio::select! {
            _ = ends.session_gone.cancelled() => {
                close_with(ws, closing(close::SESSION_GONE, "the session was deleted")).await;
                return Ok(());
            }
            _ = ends.shutdown.cancelled() => {
                close_with(ws, closing(close::GOING_AWAY, "agent shutting down")).await;
                return Ok(());
            }
            _ = ends.relay_draining.cancelled() => {
                close_with(ws, closing(close::GOING_AWAY, "relay draining")).await;
                return Ok(());
            }
            ending = &mut link_ended => {
                let code = match ending {
                    Ending::Revoked => close::FORBIDDEN,
                    Ending::Expired => close::AUTH,
                };
                close_with(ws, closing(code, ending.reason())).await;
                return Ok(());
            }
            changed = async {
                match &mut seat {
                    Some(s) => s.rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_ok()
                    && let Some(s) = &mut seat
                {
                    let w = s.rx.borrow_and_update().clone();
                    let msg = ServerMsg::Viewers { count: w.count, names: w.names };
                    ws.send(Message::Text(msg.to_text().into())).await?;
                }
            }
            msg = ws.next() => match msg {
                // A read-only link's keys go nowhere (init drops a
                // watcher's input too).
                Some(Ok(Message::Binary(_))) if read_only => {}
                Some(Ok(Message::Binary(b))) => {
                    // Keys and output are activity; pings and resizes are not
                    // (an open tab alone does not keep a session from idling).
                    touch();
                    if let Some((bytes_in, _)) = &byte_counters {
                        bytes_in.inc_by(b.len() as u64);
                    }
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
                Some(Ok(Message::Text(t))) => match ClientMsg::parse(&t) {
                    ClientMsg::Resize { cols, rows } if !exec && !read_only => {
                        let _ = init.send(Frame::Resize { cols, rows }).await;
                        if let (Some(n), Some(t)) = (node, terminal) {
                            let (c, r) = warren_proto::terminal::clamp_size(cols, rows);
                            n.recorders.resized(&n.session, t, c, r);
                        }
                    }
                    ClientMsg::Ping { t } => {
                        ws.send(Message::Text(ServerMsg::Pong { t }.to_text().into())).await?;
                    }
                    ClientMsg::Eof if exec => {
                        let _ = init.send(Frame::Eof).await;
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {} // ping/pong are answered by tungstenite
                Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                    debug!("terminal message over the limit: {e}");
                    let why = format!("a message is limited to {} bytes", warren_proto::terminal::MAX_MESSAGE);
                    close_with(ws, closing(close::MESSAGE_TOO_BIG, &why)).await;
                    return Ok(());
                }
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
                    touch();
                    ws.send(Message::Binary(tagged(stream_byte::STDOUT, &b))).await?;
                }
                Some(Ok(Frame::Stderr(b))) if exec => {
                    touch();
                    ws.send(Message::Binary(tagged(stream_byte::STDERR, &b))).await?;
                }
                Some(Ok(Frame::Data(b))) => {
                    touch();
                    sent += b.len() as u64;
                    if let Some((_, bytes_out)) = &byte_counters {
                        bytes_out.inc_by(b.len() as u64);
                    }
                    ws.feed(Message::Binary(b)).await?;
                    // Coalesce whatever else is ready before one flush.
                    // Anything else that was ready (the exit) is kept for
                    // the next turn, not dropped.
                    loop {
                        match futures_util::FutureExt::now_or_never(init.next()) {
                            Some(Some(Ok(Frame::Data(more)))) => {
                                sent += more.len() as u64;
                                ws.feed(Message::Binary(more)).await?
                            }
                            Some(other) => {
                                held = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    ws.flush().await?;
                }
                Some(Ok(Frame::InputAck { offset, noecho })) => {
                    let ack = ServerMsg::InputAck {
                        offset,
                        noecho: noecho.unwrap_or(false),
                    };
                    ws.send(Message::Text(ack.to_text().into())).await?;
                }
                Some(Ok(Frame::Skip(to))) => {
                    // This client fell further behind than init keeps.
                    let gap = ServerMsg::Gap { from: sent, to };
                    sent = to;
                    ws.send(Message::Text(gap.to_text().into())).await?;
                }
                Some(Ok(Frame::Exit(code))) => {
                    let exit = ServerMsg::Exit { code };
                    ws.send(Message::Text(exit.to_text().into())).await?;
                    close_with(ws, closing(close::NORMAL, "shell exited")).await;
                    return Ok(());
                }
                Some(Ok(_)) | Some(Err(_)) | None => {
                    close_with(ws, closing(close::INTERNAL, "the session's terminal ended unexpectedly")).await;
                    return Ok(());
                }
            },
        }
    }
}

/// Closes a connection init refused: 4404 when the terminal is gone, else
/// 4500, with init's reason.
pub(super) async fn close_refused<S>(ws: &mut WebSocketStream<S>, e: &ClientError)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = match e {
        ClientError::Refused {
            code: ErrorCode::NotFound,
            ..
        } => close::SESSION_GONE,
        _ => close::INTERNAL,
    };
    close_with(ws, closing(code, &truncate(&e.to_string()))).await;
}

/// Sends a close frame and waits briefly for the client's, so the stream
/// is not torn down while the client still writes (its reads would fail
/// before it saw our last messages).
pub(super) async fn close_with<S>(ws: &mut WebSocketStream<S>, msg: Message)
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

pub(super) fn truncate(s: &str) -> String {
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
    fn close_reasons_fit() {
        assert!(truncate(&"é".repeat(200)).len() <= 123);
    }
}
