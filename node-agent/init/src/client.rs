//! The agent's side of the init wire.
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::proto::{ErrorCode, Frame, InitCodec, Op, PROTOCOL_VERSION, Request, Response};

pub type InitConn = Framed<UnixStream, InitCodec>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the session's init: {0}")]
    Connect(std::io::Error),
    #[error("session init did not answer in time")]
    Timeout,
    #[error("session init closed the connection")]
    Closed,
    #[error("session init protocol error: {0}")]
    Protocol(String),
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
}

/// Sends one request; on success returns the connection (for `open` and
/// `attach`, now carrying terminal frames) and the response.
pub async fn request(socket: &Path, op: Op) -> Result<(InitConn, Response), ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(ClientError::Connect)?;
    request_on(stream, op).await
}

/// Like [`request`], on a stream the caller connected (and verified).
pub async fn request_on(stream: UnixStream, op: Op) -> Result<(InitConn, Response), ClientError> {
    // Both buffers start small (tokio-util's default is 8 KiB each): an
    // agent holds two of these per open terminal (its own and the
    // recorder's). The read buffer grows to a whole frame when output comes.
    let mut framed = Framed::with_capacity(stream, InitCodec, READ_CAPACITY);
    let fut = async {
        framed
            .send(Frame::Request(Request {
                version: PROTOCOL_VERSION,
                op,
            }))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        match framed.next().await {
            Some(Ok(Frame::Response(r))) => Ok(r),
            Some(Ok(other)) => Err(ClientError::Protocol(format!(
                "expected a response, got {other:?}"
            ))),
            Some(Err(e)) => Err(ClientError::Protocol(e.to_string())),
            None => Err(ClientError::Closed),
        }
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| ClientError::Timeout)??;
    if !resp.ok {
        return Err(ClientError::Refused {
            code: resp.code.unwrap_or(ErrorCode::Unknown),
            message: resp.message.unwrap_or_default(),
        });
    }
    // The request is sent: what is written from here on is keys and
    // resizes (or nothing, for a recorder), so the write buffer starts over
    // empty and grows only to what is written.
    *framed.write_buffer_mut() = bytes::BytesMut::new();
    Ok((framed, resp))
}

/// Initial read buffer of an init connection, in bytes: enough for the
/// response and an echo; output grows it to the frame it reads.
const READ_CAPACITY: usize = 256;
