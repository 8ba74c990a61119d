//! A terminal WebSocket client and a browser-like TLS connection.
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use warren_proto::terminal::{ClientMsg, Cursor, ServerMsg};

use crate::WAIT;

/// A terminal WebSocket client ([`warren_proto::terminal`]): keeps the
/// output, the terminal id, the offset and the gaps it was told about.
pub struct Term<S> {
    pub ws: WebSocketStream<S>,
    pub out: String,
    pub terminal: Option<u32>,
    pub exit: Option<i32>,
    /// Where this client stands in the terminal's output.
    pub cursor: Cursor,
    /// Every `gap` notice received, as `(from, to)`.
    pub gaps: Vec<(u64, u64)>,
    /// `(asked, end)` of each resume asked past the end of the output.
    pub rewound: Vec<(u64, u64)>,
    /// The latest `viewers` message: count and names.
    pub viewers: Option<(usize, Vec<String>)>,
    /// The `access` message a share link gets: `read` or `write`.
    pub access: Option<String>,
    /// The close frame's code, once the server closed.
    pub close_code: Option<u16>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Term<S> {
    /// Wraps a connected WebSocket and waits for the server's hello.
    pub async fn new(ws: WebSocketStream<S>) -> Self {
        match Self::try_new(ws).await {
            Ok(t) => t,
            Err(code) => panic!("closed before hello (close code {code:?})"),
        }
    }

    /// Like [`Self::new`], but a server that closes before its hello is
    /// `Err` with its close code.
    pub async fn try_new(ws: WebSocketStream<S>) -> Result<Self, Option<u16>> {
        let mut t = Term {
            ws,
            out: String::new(),
            terminal: None,
            exit: None,
            cursor: Cursor::default(),
            gaps: Vec::new(),
            rewound: Vec::new(),
            viewers: None,
            access: None,
            close_code: None,
        };
        let r = tokio::time::timeout(WAIT, async {
            while t.terminal.is_none() {
                if t.step().await.is_none() {
                    return false;
                }
            }
            true
        })
        .await;
        match r {
            Ok(true) => Ok(t),
            _ => Err(t.close_code),
        }
    }

    /// Handles one message; `None` once the socket closed.
    async fn step(&mut self) -> Option<()> {
        match self.ws.next().await? {
            Ok(Message::Binary(b)) => {
                self.cursor.on_bytes(b.len());
                self.out.push_str(&String::from_utf8_lossy(&b))
            }
            Ok(Message::Text(t)) => {
                let msg = ServerMsg::parse(&t);
                if let Err(e) = msg.check_version() {
                    panic!("{e}");
                }
                self.cursor.on_message(&msg);
                match msg {
                    ServerMsg::Hello { terminal, .. } => self.terminal = terminal,
                    ServerMsg::Exit { code } => self.exit = Some(code),
                    ServerMsg::Gap { from, to } => self.gaps.push((from, to)),
                    ServerMsg::Rewound { asked, end } => self.rewound.push((asked, end)),
                    ServerMsg::Viewers { count, names } => self.viewers = Some((count, names)),
                    ServerMsg::Access { mode } => self.access = Some(mode),
                    ServerMsg::Pong { .. } | ServerMsg::InputAck { .. } => {}
                    ServerMsg::Unknown => {}
                }
            }
            Ok(Message::Close(f)) => {
                if let Some(f) = &f {
                    eprintln!("terminal closed: {} {}", u16::from(f.code), f.reason);
                }
                self.close_code = f.map(|f| u16::from(f.code));
                return None;
            }
            Err(_) => return None,
            Ok(_) => {}
        }
        Some(())
    }

    /// Reads until the server closes the connection (within `wait`); its
    /// close code, if it sent one.
    pub async fn wait_close(&mut self, wait: Duration) -> Option<u16> {
        let closed =
            tokio::time::timeout(wait, async { while self.step().await.is_some() {} }).await;
        assert!(
            closed.is_ok(),
            "the connection was not closed within {wait:?}"
        );
        self.close_code
    }

    /// Reads until the latest `viewers` message counts `count`.
    pub async fn wait_viewers(&mut self, count: usize) -> Vec<String> {
        let r = tokio::time::timeout(WAIT, async {
            while self.viewers.as_ref().is_none_or(|v| v.0 != count) {
                if self.step().await.is_none() {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(
            matches!(r, Ok(true)),
            "viewers never counted {count}: {:?}",
            self.viewers
        );
        self.viewers.clone().map(|v| v.1).unwrap_or_default()
    }

    pub async fn send(&mut self, line: &str) {
        self.ws
            .send(Message::Binary(format!("{line}\n").into_bytes().into()))
            .await
            .unwrap();
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) {
        let m = ClientMsg::Resize { cols, rows }.to_text();
        self.ws.send(Message::Text(m.into())).await.unwrap();
    }

    /// Waits until the output (since the last call) contains `needle`.
    pub async fn expect(&mut self, needle: &str) -> String {
        self.expect_within(needle, WAIT).await
    }

    pub async fn expect_within(&mut self, needle: &str, wait: Duration) -> String {
        let r = tokio::time::timeout(wait, async {
            while !self.out.contains(needle) {
                if self.step().await.is_none() {
                    return false;
                }
            }
            true
        })
        .await;
        let out = std::mem::take(&mut self.out);
        assert!(
            matches!(r, Ok(true)),
            "did not see {needle:?}; output was:\n{out}"
        );
        out
    }

    /// Types a command and waits for a marker it prints (computed by the
    /// shell, so the echo of the command line does not count).
    pub async fn run(&mut self, cmd: &str, marker: &str) -> String {
        self.send(cmd).await;
        self.expect(marker).await
    }

    pub async fn wait_exit(&mut self) -> i32 {
        tokio::time::timeout(WAIT, async {
            while self.exit.is_none() {
                if self.step().await.is_none() {
                    break;
                }
            }
        })
        .await
        .expect("no exit");
        self.exit.expect("closed without an exit message")
    }
}

/// A TLS connection to `addr` as a browser would open it to `host` (SNI set,
/// HTTP/1.1 by ALPN), trusting only the CA in `ca_pem`.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    host: &str,
    ca_pem: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in warren_tunnel::tls::certs_from_pem(ca_pem).unwrap() {
        roots.add(c).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}
