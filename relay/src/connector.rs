//! Pingora ↔ QUIC: a custom L4 connector that opens a tunnel stream to the
//! session's node and hands Pingora a virtual socket over it.
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use warren_tunnel::TunnelStream;
use warren_tunnel::proto::StreamHeader;
use warren_tunnel::server::{OpenError, Registry};

use crate::metrics::Metrics;

struct QuicSocket(TunnelStream);

impl std::fmt::Debug for QuicSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuicSocket")
    }
}

impl AsyncRead for QuicSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl VirtualSocket for QuicSocket {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        // QUIC has its own keepalive and no Nagle.
        Ok(())
    }
}

/// Opens one tunnel stream per upstream connection. Why it failed is left in
/// `failure` for the error page.
pub struct TunnelConnector {
    pub registry: Arc<Registry>,
    pub node: String,
    pub header: StreamHeader,
    pub failure: Arc<Mutex<Option<OpenError>>>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TunnelConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TunnelConnector({} → {:?})", self.node, self.header.kind)
    }
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(
        &self,
        _addr: &pingora::protocols::l4::socket::SocketAddr,
    ) -> pingora::Result<Stream> {
        match self.registry.open_stream(&self.node, &self.header).await {
            Ok(s) => {
                self.metrics.streams_opened.inc();
                Ok(Stream::from(VirtualSocketStream::new(Box::new(
                    QuicSocket(s),
                ))))
            }
            Err(e) => {
                count_failure(&self.metrics, &e);
                let msg = e.to_string();
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                pingora::Error::e_explain(pingora::ErrorType::ConnectError, msg)
            }
        }
    }
}

/// Counts a stream that could not be opened, by why.
pub fn count_failure(metrics: &Metrics, e: &OpenError) {
    let reason = match e {
        OpenError::NodeNotConnected(_) => "node_not_connected",
        OpenError::Timeout(..) => "timeout",
        OpenError::Rejected { .. } => "rejected",
        OpenError::Connection(_) => "connection",
    };
    metrics.streams_failed.with_label_values(&[reason]).inc();
}
