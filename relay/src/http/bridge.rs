//! A terminal after its upgrade: the relay bridges the browser's connection
//! to the tunnel stream itself.
//!
//! Pingora's proxy loop keeps, per upgraded connection, two 64 KiB body
//! buffers, header buffers, a retry buffer and two task channels for as long
//! as the terminal is open: most of the relay's memory per idle terminal
//! (docs/benchmarks.md). Once control's token, the policy and the upstream
//! request filter have passed a terminal's upgrade, this module sends the
//! filtered request itself, reads the agent's answer, takes the downstream
//! connection out of Pingora and copies bytes: output as the QUIC stream's
//! own chunks (no buffer held while idle), input through a 2 KiB buffer.
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::proxy::{ProxyHttp, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_tunnel::TunnelStream;
use warren_tunnel::proto::StreamHeader;

use tracing::warn;

use super::answers::answer;
use super::proxy::{Ctx, RelayProxy, open_failure};
use crate::metrics::Metrics;
use crate::pages::Answer;

/// The agent's answer head (a 101 or an error page's head) is at most this.
const MAX_HEAD: usize = 16 * 1024;
/// How long the agent may take to answer the upgrade once the stream is open.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Input (keys, resizes, pastes) is read from the browser this much at a time.
const INPUT_BUF: usize = 2 * 1024;
/// Output is taken from the QUIC stream in chunks of at most this.
const OUTPUT_CHUNK: usize = 64 * 1024;
/// After the browser stops sending, its last output still reaches it for
/// this long (the agent answers a close frame at once).
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Only HTTP/1.1 connections are taken over: an upgrade exists only there.
pub(super) fn can_bridge(session: &Session) -> bool {
    matches!(*session.downstream_session, ServerSession::H1(_))
}

impl RelayProxy {
    /// Opens the stream, forwards the upgrade and, once the agent has
    /// answered, serves the connection outside Pingora. `Ok(true)`: the
    /// request was answered (bridged, or refused with the error page
    /// Pingora's own path would have shown).
    pub(super) async fn bridge(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        node: &str,
        header: StreamHeader,
    ) -> pingora::Result<bool> {
        // An upgrade carries no body (RFC 6455 clients wait for the 101):
        // bytes before it would be lost with Pingora's buffer.
        let h = &session.req_header().headers;
        let has_body = h.contains_key("transfer-encoding")
            || h.get("content-length")
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            let a = Answer::new(
                400,
                "bad_request",
                "Bad request",
                "A WebSocket upgrade carries no body.",
            );
            return answer(session, a).await;
        }
        let mut req = session.req_header().clone();
        self.upstream_request_filter(session, &mut req, ctx).await?;
        for name in FRAMING_HEADERS {
            while req.remove_header(*name).is_some() {}
        }
        let Some(wire) = http_req_header_to_wire(&req) else {
            return answer(session, open_failure(None)).await;
        };
        let mut up = match self.registry.open_stream(node, &header).await {
            Ok(s) => {
                self.metrics.streams_opened.inc();
                s
            }
            Err(e) => {
                crate::connector::count_failure(&self.metrics, &e);
                return answer(session, open_failure(Some(e))).await;
            }
        };
        let head = async {
            up.write_all(&wire).await?;
            up.flush().await?;
            read_head(&mut up).await
        };
        let (status, head) = match tokio::time::timeout(HEAD_TIMEOUT, head).await {
            Ok(Ok(h)) => h,
            // As Pingora's path: an upstream that answers badly is a 502.
            r => {
                let why = match r {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer in time".to_string(),
                };
                warn!(node, session = %header.session, error = %why, "terminal upgrade not answered");
                return answer(session, open_failure(None)).await;
            }
        };
        let dummy = ServerSession::new_http1(Box::new(tokio::io::duplex(1).0));
        let down = match std::mem::replace(&mut *session.downstream_session, dummy) {
            ServerSession::H1(h1) => h1.into_inner(),
            other => {
                // Checked by `can_bridge`; put it back and let Pingora answer.
                *session.downstream_session = other;
                return pingora::Error::e_explain(
                    pingora::ErrorType::InternalError,
                    "bridge on a non-HTTP/1 session",
                );
            }
        };
        ctx.bridged = Some(status);
        let metrics = self.metrics.clone();
        if status == 101 {
            tokio::spawn(pump(down, up, head, metrics));
        } else {
            // A refusal (its page): the client's bytes never go on.
            tokio::spawn(answer_only(down, up, head));
        }
        Ok(true)
    }
}

/// Request headers that frame a body: an upgrade has none, and the agent
/// is never told otherwise.
const FRAMING_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "proxy-connection",
    "proxy-authorization",
];

/// Reads the agent's response head: its status and every byte read so far
/// (the head, and any frames that followed it in the same read).
async fn read_head(up: &mut TunnelStream) -> std::io::Result<(u16, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let code = resp.code.unwrap_or(0);
                return Ok((code, buf.freeze()));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return Err(std::io::Error::other("bad response head")),
        }
        if up.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Sends the agent's refusal (its head and page) to the client and closes.
async fn answer_only(down: Stream, mut up: TunnelStream, head: Bytes) {
    let mut down = down;
    let copy = async {
        down.write_all(&head).await?;
        while let Some(chunk) = up
            .recv
            .read_chunk(OUTPUT_CHUNK, true)
            .await
            .map_err(std::io::Error::other)?
        {
            down.write_all(&chunk.bytes).await?;
        }
        down.flush().await?;
        down.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, copy).await;
}

/// How one direction of a bridged connection ended.
enum End {
    /// The browser ended its side (or the upstream refused its input): its
    /// last output still reaches it, for [`CLOSE_GRACE`].
    Graceful,
    /// The browser's connection failed: nothing more can reach it.
    Broken,
}

/// A write to the browser that makes no progress for this long ends the
/// connection (a client that stopped reading holds nothing for ever).
const WRITE_STALL: Duration = Duration::from_secs(60);

async fn stalled<F, T>(f: F) -> std::io::Result<T>
where
    F: std::future::Future<Output = std::io::Result<T>>,
{
    tokio::time::timeout(WRITE_STALL, f)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// `first` and the output already received after it, up to
/// [`OUTPUT_CHUNK`], to go out in one write: a WebSocket frame arrives as
/// several QUIC packets, each its own chunk, and a write each was a send
/// (and a TLS record) per packet. Nothing waits: what has not arrived goes
/// in the next write. What ended the gathering comes with the bytes, so
/// bytes taken from the stream are written before an end or an error.
fn gather(recv: &mut quinn::RecvStream, first: Bytes) -> (Bytes, Gathered) {
    use futures_util::FutureExt;
    // Only the chunks after the first: no allocation when none is waiting.
    let mut rest: Vec<Bytes> = Vec::new();
    let mut len = first.len();
    let mut then = Gathered::More;
    while len < OUTPUT_CHUNK {
        match recv.read_chunk(OUTPUT_CHUNK - len, true).now_or_never() {
            Some(Ok(Some(c))) => {
                len += c.bytes.len();
                rest.push(c.bytes);
            }
            Some(Ok(None)) => {
                then = Gathered::End;
                break;
            }
            Some(Err(e)) => {
                then = Gathered::Failed(std::io::Error::other(e));
                break;
            }
            None => break,
        }
    }
    if rest.is_empty() {
        return (first, then);
    }
    // Sized exactly: a browser that reads slowly holds this while its
    // write waits.
    let mut out = BytesMut::with_capacity(len);
    out.extend_from_slice(&first);
    for p in &rest {
        out.extend_from_slice(p);
    }
    (out.freeze(), then)
}

/// What followed the bytes [`gather`] took.
enum Gathered {
    /// Maybe more to come.
    More,
    /// The agent finished the stream.
    End,
    /// The stream failed (reset, the tunnel lost).
    Failed(std::io::Error),
}

/// Copies both ways until the agent ends the stream, the browser's
/// connection fails, or one side ended and [`CLOSE_GRACE`] passed.
async fn pump(down: Stream, mut up: TunnelStream, head: Bytes, metrics: Arc<Metrics>) {
    metrics.connections.inc();
    let (mut dr, mut dw) = tokio::io::split(down);
    let to_client_bytes = metrics.bytes_relayed.with_label_values(&["to_client"]);
    let from_client_bytes = metrics.bytes_relayed.with_label_values(&["from_client"]);
    let (send, recv) = (&mut up.send, &mut up.recv);
    let to_client = async {
        stalled(dw.write_all(&head)).await?;
        drop(head);
        stalled(dw.flush()).await?;
        while let Some(chunk) = recv
            .read_chunk(OUTPUT_CHUNK, true)
            .await
            .map_err(std::io::Error::other)?
        {
            let (out, then) = gather(recv, chunk.bytes);
            to_client_bytes.inc_by(out.len() as u64);
            stalled(dw.write_all(&out)).await?;
            drop(out);
            stalled(dw.flush()).await?;
            match then {
                Gathered::More => {}
                Gathered::End => break,
                Gathered::Failed(e) => return Err(e),
            }
        }
        stalled(dw.shutdown()).await
    };
    let from_client = async {
        let mut buf = [0u8; INPUT_BUF];
        loop {
            let n = match dr.read(&mut buf).await {
                Ok(0) => {
                    let _ = send.finish();
                    return End::Graceful;
                }
                Ok(n) => n,
                Err(_) => {
                    let _ = send.reset(0u32.into());
                    return End::Broken;
                }
            };
            from_client_bytes.inc_by(n as u64);
            // The agent closed its side (a close frame is on its way).
            if send.write_all(&buf[..n]).await.is_err() {
                return End::Graceful;
            }
        }
    };
    tokio::pin!(to_client);
    tokio::select! {
        _ = &mut to_client => {}
        end = from_client => {
            if let End::Graceful = end {
                let _ = tokio::time::timeout(CLOSE_GRACE, to_client).await;
            }
        }
    }
    metrics.connections.dec();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const IDLE: Duration = Duration::from_secs(10);

    /// A relay-side and a node-side QUIC connection on loopback, with the
    /// tunnel's own TLS and transport settings (endpoints kept alive).
    async fn pair() -> (quinn::Connection, quinn::Connection, [quinn::Endpoint; 2]) {
        use warren_tunnel::tls;
        let (cert, key) = tls::self_signed(&["warren.localhost"]).unwrap();
        let server_cfg = tls::server_config(cert.as_bytes(), key.as_bytes(), IDLE).unwrap();
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(tls::client_config(Some(cert.as_bytes()), IDLE).unwrap());
        let addr = server.local_addr().unwrap();
        let (relay, node) = tokio::join!(
            async { server.accept().await.unwrap().await.unwrap() },
            async {
                client
                    .connect(addr, "warren.localhost")
                    .unwrap()
                    .await
                    .unwrap()
            }
        );
        (relay, node, [server, client])
    }

    #[tokio::test]
    async fn gathered_output_keeps_every_byte_in_order_and_the_end() {
        let (relay, node, _endpoints) = pair().await;
        // The relay opens the stream, as for a terminal.
        let (mut send, mut recv) = relay.open_bi().await.unwrap();
        send.write_all(b"h").await.unwrap();
        let (mut node_send, mut node_recv) = node.accept_bi().await.unwrap();
        let mut head = [0u8; 1];
        node_recv.read_exact(&mut head).await.unwrap();
        // Many writes (frames of the stream), then the end; beside the
        // reads, as flow control lets the writer run only so far ahead.
        let pieces: Vec<String> = (0..300u32)
            .map(|i| format!("frame-{i};").repeat(40))
            .collect();
        let want = pieces.concat().into_bytes();
        let writer = tokio::spawn(async move {
            for p in pieces {
                node_send.write_all(p.as_bytes()).await.unwrap();
            }
            node_send.finish().unwrap();
            node_send
        });
        let mut got = Vec::new();
        let read = async {
            loop {
                let Some(c) = recv.read_chunk(OUTPUT_CHUNK, true).await.unwrap() else {
                    return;
                };
                let (out, then) = gather(&mut recv, c.bytes);
                assert!(out.len() <= OUTPUT_CHUNK, "{}", out.len());
                got.extend_from_slice(&out);
                match then {
                    Gathered::More => {}
                    Gathered::End => return,
                    Gathered::Failed(e) => panic!("the stream failed: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("all output within the deadline");
        drop(writer.await.unwrap());
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes out of order or changed");
    }
}
