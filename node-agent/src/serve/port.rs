//! Preview streams: a tunnel stream to a TCP port of the session container.
use warren_tunnel::client::PendingStream;
use warren_tunnel::proto::codes;

use crate::SessionInfo;
use crate::{Agent, PORT_CONNECT_TIMEOUT};

impl Agent {
    /// A stream to TCP `port` of the session container.
    pub(crate) async fn serve_port(&self, stream: PendingStream, session: &SessionInfo, port: u16) {
        let Some(ip) = session.ip else {
            return stream
                .reject(
                    codes::SESSION_NOT_READY,
                    "the session has no network address",
                )
                .await;
        };
        let tcp = tokio::time::timeout(
            PORT_CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((ip, port)),
        )
        .await;
        let mut tcp = match tcp {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let msg = format!(
                    "nothing answers on port {port} in session {}: {e}",
                    session.id
                );
                return stream.reject(codes::PORT_UNREACHABLE, &msg).await;
            }
            Err(_) => {
                let msg = format!(
                    "port {port} in session {} did not answer in time",
                    session.id
                );
                return stream.reject(codes::PORT_UNREACHABLE, &msg).await;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(mut s) = stream.accept().await else {
            return;
        };
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            r = tokio::io::copy_bidirectional(&mut s, &mut tcp) => {
                if let Err(e) = r {
                    tracing::debug!("port stream ended: {e}");
                }
            }
        }
    }
}
