//! A node agent without Docker (sshx's `Runner::Echo` idea): terminals
//! echo what is typed, ports answer a tiny HTTP page. With it the relay's
//! routing, token, cookie and origin rules run end to end, over the real
//! tunnel, on a machine without Docker.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use warren_proto::terminal::{PATH, ServerMsg, VERSION};
use warren_tunnel::client::{PendingStream, StreamHandler};
use warren_tunnel::proto::{StreamHeader, StreamKind};

/// The terminal id every fake terminal has.
pub const FAKE_TERMINAL: u32 = 1;
/// Longest request head a fake port reads.
const MAX_HEAD: usize = 64 * 1024;

/// Serves every session it is asked for: a terminal stream is the
/// terminal WebSocket at [`PATH`] (the protocol's `hello`, then binary
/// frames echoed back); a port stream answers one HTTP request with 200
/// and a body naming the session, the port and the request line.
#[derive(Default)]
pub struct FakeAgent {
    streams: AtomicUsize,
}

impl FakeAgent {
    pub fn new() -> Arc<FakeAgent> {
        Arc::default()
    }

    /// Streams relays opened to this agent so far (a refused request
    /// should never have reached it).
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl StreamHandler for FakeAgent {
    async fn handle(&self, header: StreamHeader, stream: PendingStream) {
        self.streams.fetch_add(1, Ordering::SeqCst);
        let Ok(s) = stream.accept().await else {
            return;
        };
        match header.kind {
            StreamKind::Terminal => {
                let _ = echo_terminal(s).await;
            }
            StreamKind::Port(port) => {
                let _ = answer_http(s, &header.session, port).await;
            }
            // The sandbox API answers like a port: a plain HTTP answer
            // naming what was asked for.
            StreamKind::Api | StreamKind::Snapshot => {
                let _ = answer_http(s, &header.session, 0).await;
            }
        }
    }
}

/// The terminal WebSocket: a `hello` for terminal [`FAKE_TERMINAL`] at
/// offset 0, then every binary frame back as it came.
async fn echo_terminal<S>(s: S) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[allow(clippy::result_large_err)] // the signature tungstenite asks for
    let at_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == PATH {
            Ok(resp)
        } else {
            let mut not_found = ErrorResponse::new(Some(format!("no {}", req.uri().path())));
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(s, at_path).await?;
    let hello = ServerMsg::Hello {
        v: VERSION,
        terminal: Some(FAKE_TERMINAL),
        pid: None,
        offset: Some(0),
        input: None,
        echo: false,
    };
    ws.send(Message::Text(hello.to_text().into())).await?;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Binary(b) => ws.send(Message::Binary(b)).await?,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

/// One HTTP/1.1 answer: 200, `connection: close`, and a body saying what
/// was asked of whom.
async fn answer_http<S>(mut s: S, session: &str, port: u16) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let request_line = head.lines().next().unwrap_or_default();
    let body = format!("fake agent: session {session}, port {port}: {request_line}\n");
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(answer.as_bytes()).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TestTunnel, WAIT};
    use warren_tunnel::server::OpenError;

    fn header(kind: StreamKind) -> StreamHeader {
        StreamHeader {
            session: "s1".into(),
            kind,
            request_id: "r1".into(),
            client_addr: None,
        }
    }

    #[tokio::test]
    async fn terminals_echo_and_ports_answer_over_the_tunnel() {
        let tunnel = TestTunnel::start();
        let fake = FakeAgent::new();
        let _node = tunnel.connect("fake-node", fake.clone()).await;
        let registry = tunnel.registry();
        let open = |kind| async move { registry.open_stream("fake-node", &header(kind)).await };

        let s = open(StreamKind::Terminal).await.unwrap();
        let url = format!("ws://s1.warren.localhost{PATH}?v={VERSION}");
        let (ws, _) = tokio_tungstenite::client_async(url, s).await.unwrap();
        let mut term = crate::Term::new(ws).await;
        assert_eq!(term.terminal, Some(FAKE_TERMINAL));
        term.run("echo me", "echo me").await;

        let s = open(StreamKind::Terminal).await.unwrap();
        match tokio_tungstenite::client_async("ws://s1.warren.localhost/elsewhere", s).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
            Err(e) => panic!("expected a 404, got {e}"),
            Ok(_) => panic!("a WebSocket away from the terminal path opened"),
        }

        let mut s = open(StreamKind::Port(8080)).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(
            got.ends_with("fake agent: session s1, port 8080: GET /x HTTP/1.1\n"),
            "{got}"
        );
        assert_eq!(fake.streams(), 3);
        assert!(matches!(
            tunnel
                .registry()
                .open_stream("nobody", &header(StreamKind::Port(1)))
                .await,
            Err(OpenError::NodeNotConnected(_))
        ));
    }
}
