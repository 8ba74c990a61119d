//! A terminal connection that came through a share link: it attaches to a
//! terminal already open (the link's own, the one asked for, or the
//! oldest), as a watcher when the link is read-only, and never opens a
//! shell or runs a command. An unknown, revoked or expired link is refused.
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use warren_init::proto::Op;
use warren_proto::share::ShareMode;
use warren_proto::terminal::{ServerMsg, TerminalQuery, close};

use super::shares::Caller;
use super::terminal::{Attached, NodeView, close_refused, close_with, closing};

/// A share link's holder: attaches to a terminal already open (the link's
/// own, the one asked for, or the oldest), as a watcher when the link is
/// read-only; never opens a shell or runs a command. An unknown, revoked
/// or expired link is refused.
pub(super) async fn attach<S>(
    ws: &mut WebSocketStream<S>,
    init: &crate::serve::initsock::InitTarget,
    params: &TerminalQuery,
    caller: &Caller,
    id: &str,
    node: Option<&NodeView>,
) -> anyhow::Result<Option<Attached>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let grant = match node {
        Some(n) => n.shares.lookup(&n.session, id).await,
        None => None,
    };
    let Some(grant) = grant else {
        let why = "this share link was revoked or has expired";
        close_with(ws, closing(close::FORBIDDEN, why)).await;
        return Ok(None);
    };
    let Some(seat) = node.and_then(|n| n.shares.seat(&grant.id)) else {
        let why = "this share link has as many connections open as it may";
        close_with(ws, closing(close::FORBIDDEN, why)).await;
        return Ok(None);
    };
    if params.exec || params.command.is_some() {
        let why = "a share link attaches to open terminals; it runs no command";
        close_with(ws, closing(close::FORBIDDEN, why)).await;
        return Ok(None);
    }
    let terminal = match (grant.terminal, params.terminal) {
        (Some(pinned), Some(asked)) if pinned != asked => {
            let why = format!("this share link shows terminal {pinned} only");
            close_with(ws, closing(close::FORBIDDEN, &why)).await;
            return Ok(None);
        }
        (Some(t), _) | (None, Some(t)) => Some(t),
        (None, None) => oldest_terminal(init).await,
    };
    let Some(terminal) = terminal else {
        let why = "nothing to show yet: the session has no open terminal";
        close_with(ws, closing(close::SESSION_GONE, why)).await;
        return Ok(None);
    };
    let read_only = grant.mode == ShareMode::Read;
    let op = Op::Attach {
        terminal,
        cols: params.cols,
        rows: params.rows,
        offset: params.offset,
        watch: read_only,
        input: params.input.clone().filter(|_| !read_only),
        echo_state: !read_only,
    };
    let (init, resp) = match crate::serve::initsock::request(init, op).await {
        Ok(x) => x,
        Err(e) => {
            close_refused(ws, &e).await;
            return Ok(None);
        }
    };
    let hello = ServerMsg::Hello {
        v: warren_proto::terminal::VERSION,
        terminal: resp.terminal,
        pid: None,
        offset: resp.offset,
        input: resp.input,
        echo: resp.echo_state,
    };
    ws.send(Message::Text(hello.to_text().into())).await?;
    let access = ServerMsg::Access {
        mode: grant.mode.as_str().into(),
    };
    ws.send(Message::Text(access.to_text().into())).await?;
    if let (Some(asked), Some(got)) = (params.offset, resp.offset)
        && asked != got
    {
        let gap = ServerMsg::Gap {
            from: asked,
            to: got,
        };
        ws.send(Message::Text(gap.to_text().into())).await?;
    }
    if let Some(joined) = node.and_then(|n| n.joined.as_ref()) {
        joined(&grant.id, caller.name.as_deref().unwrap_or(""));
    }
    Ok(Some(Attached {
        init,
        exec: false,
        offset: resp.offset,
        terminal: resp.terminal,
        opened: false,
        share: Some(grant),
        link_seat: Some(seat),
    }))
}

/// The session's oldest open terminal, if any.
async fn oldest_terminal(init: &crate::serve::initsock::InitTarget) -> Option<u32> {
    let (_, r) = crate::serve::initsock::request(init, Op::List).await.ok()?;
    r.terminals?.iter().map(|t| t.terminal).min()
}
