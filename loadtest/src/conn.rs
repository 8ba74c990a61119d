//! The ways a load-test terminal reaches a shell: the relay's WebSocket
//! (plain HTTP on loopback, or TLS with a CA), SSH through the relay, or
//! Docker's own exec with a TTY (the `--baseline direct` path).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use warren_proto::input::InputStream;
use warren_proto::terminal::{Cursor, PATH, ServerMsg, TerminalQuery};

/// One terminal: bytes in, bytes out.
#[async_trait]
pub trait Term: Send {
    async fn send(&mut self, data: &[u8]) -> anyhow::Result<()>;
    /// The next output; `None` when the terminal ended.
    async fn recv(&mut self) -> anyhow::Result<Option<Bytes>>;
}

/// Where the relay's terminal WebSocket is.
#[derive(Clone)]
pub struct RelayTarget {
    /// TCP address to connect to (the relay's HTTP or HTTPS listener).
    pub addr: SocketAddr,
    pub domain: String,
    /// `Some`: TLS with this client configuration (the CA to trust).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl RelayTarget {
    pub fn tls_config(ca_pem: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        let mut rd = ca_pem;
        let mut n = 0;
        for c in rustls_pemfile_certs(&mut rd)? {
            roots.add(c).context("adding the CA")?;
            n += 1;
        }
        if n == 0 {
            bail!("the CA file holds no certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}

fn rustls_pemfile_certs(
    rd: &mut &[u8],
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(rd)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the CA PEM")
}

/// Anything a WebSocket can run over (TCP, TLS over TCP).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Hears of terminal drops and resumes (for the report).
pub type OnDrop = Arc<dyn Fn(&str) + Send + Sync>;

/// How long a terminal whose socket broke tries to resume before the drop
/// counts as a failure: as long as a page keeps trying, about a minute.
pub(crate) const RESUME_WINDOW: Duration = Duration::from_secs(60);

/// A terminal over the relay's WebSocket. When the socket breaks before the
/// shell ended it reconnects with `terminal=N&offset=K`, as the page does,
/// and goes on with exactly the bytes after K. Every drop is still counted
/// the moment it happens (`on_drop("terminal dropped")`), and each resume
/// that worked too (`on_drop("terminal resumed")`).
pub struct WsTerm {
    ws: Ws,
    relay: RelayTarget,
    session: String,
    token: String,
    query: TerminalQuery,
    cursor: Cursor,
    exited: bool,
    on_drop: Option<OnDrop>,
    /// Keystrokes kept until the terminal acknowledges them, sent again
    /// after a resume from where the terminal stands (exactly once).
    input: InputStream,
    /// Off for a terminal that keeps no input streams (an older init).
    tracked: bool,
}

/// Opens the session's terminal through the relay, running `command` if
/// given. `on_drop` hears of every drop of the socket and every resume.
pub async fn open_ws(
    relay: &RelayTarget,
    session: &str,
    token: &str,
    command: Option<&str>,
    on_drop: Option<OnDrop>,
) -> anyhow::Result<Box<dyn Term>> {
    let input = InputStream::new(format!("lt{:030x}", rand::random::<u128>() >> 8));
    let query = TerminalQuery {
        command: command.map(str::to_string),
        input: Some(input.id.clone()),
        ..Default::default()
    };
    let ws = connect(relay, session, token, &query).await?;
    Ok(Box::new(WsTerm {
        ws,
        relay: relay.clone(),
        session: session.into(),
        token: token.into(),
        query,
        cursor: Cursor::default(),
        exited: false,
        on_drop,
        input,
        tracked: true,
    }))
}

async fn connect(
    relay: &RelayTarget,
    session: &str,
    token: &str,
    query: &TerminalQuery,
) -> anyhow::Result<Ws> {
    // The token goes in a header: the relay takes commands only with a
    // Bearer token, never from a URL.
    let query = query.to_query();
    let bearer = format!("Bearer {token}");
    let host = format!("{session}.{}", relay.domain);
    let tcp = tokio::net::TcpStream::connect(relay.addr)
        .await
        .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let port = relay.addr.port();
    let (url, io): (String, Box<dyn Io>) = match &relay.tls {
        None => (format!("ws://{host}:{port}{PATH}?{query}"), Box::new(tcp)),
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(host.clone())?;
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
            (format!("wss://{host}:{port}{PATH}?{query}"), Box::new(tls))
        }
    };
    let (ws, _) = tokio_tungstenite::client_async(request(&url, &bearer)?, io)
        .await
        .map_err(ws_error)?;
    Ok(ws)
}

fn request(
    url: &str,
    bearer: &str,
) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", bearer.parse().context("token")?);
    Ok(req)
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> anyhow::Error {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(r) => anyhow::anyhow!("http {}", r.status().as_u16()),
        other => anyhow::anyhow!("websocket: {other}"),
    }
}

impl WsTerm {
    /// Reconnects at the cursor's offset; `false` when that did not work
    /// within [`RESUME_WINDOW`] (or there is nothing to resume).
    async fn resume(&mut self) -> bool {
        if self.exited {
            return false; // the shell ended: not a drop
        }
        if let Some(f) = &self.on_drop {
            f("terminal dropped");
        }
        if self.cursor.terminal.is_none() {
            return false;
        }
        self.cursor.resume(&mut self.query);
        let deadline = tokio::time::Instant::now() + RESUME_WINDOW;
        let mut wait = Duration::from_millis(50);
        let mut resumed = false;
        while tokio::time::Instant::now() < deadline {
            if let Ok(ws) = connect(&self.relay, &self.session, &self.token, &self.query).await {
                self.ws = ws;
                if self.send_again().await {
                    resumed = true;
                    break;
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
        if resumed && let Some(f) = &self.on_drop {
            f("terminal resumed");
        }
        resumed
    }
}

impl WsTerm {
    /// After a reconnect: reads the hello and sends again what the terminal
    /// has not written of this stream. `false` if the socket failed first.
    async fn send_again(&mut self) -> bool {
        let hello = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let m = ServerMsg::parse(&t);
                        if matches!(m, ServerMsg::Hello { .. }) {
                            return Some(m);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return None,
                }
            }
        })
        .await;
        let Ok(Some(hello)) = hello else { return false };
        self.cursor.on_message(&hello);
        let written = match hello {
            ServerMsg::Hello { input, .. } => input,
            _ => None,
        };
        self.tracked = written.is_some();
        let again = self.input.resend(written.unwrap_or(u64::MAX));
        again.is_empty()
            || self
                .ws
                .send(Message::Binary(Bytes::from(again)))
                .await
                .is_ok()
    }
}

#[async_trait]
impl Term for WsTerm {
    async fn send(&mut self, data: &[u8]) -> anyhow::Result<()> {
        if self.tracked {
            self.input
                .push(data)
                .map_err(|e| anyhow::anyhow!("input: {e}"))?;
        }
        let msg = Message::Binary(Bytes::copy_from_slice(data));
        if self.ws.send(msg).await.is_ok() {
            return Ok(());
        }
        // Kept keystrokes go to the resumed terminal (from where it stands)
        // rather than being lost or typed twice.
        if self.resume().await {
            return Ok(());
        }
        bail!("websocket: the connection was lost")
    }

    async fn recv(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    self.cursor.on_bytes(b.len());
                    return Ok(Some(b));
                }
                Some(Ok(Message::Text(t))) => {
                    // hello, exit, gap: not terminal bytes; a hello of
                    // another protocol version ends the run with its reason.
                    let m = ServerMsg::parse(&t);
                    if let Err(e) = m.check_version() {
                        bail!("{e}");
                    }
                    if matches!(m, ServerMsg::Exit { .. }) {
                        self.exited = true;
                    }
                    if let ServerMsg::InputAck { offset, .. } = m {
                        self.input.ack(offset);
                    }
                    if let ServerMsg::Hello { input, .. } = m {
                        self.tracked = input.is_some();
                    }
                    self.cursor.on_message(&m);
                }
                Some(Ok(Message::Close(f))) => {
                    // A server going away (relay or agent restarting) is
                    // resumed; any other close ends the terminal.
                    let going_away = f.as_ref().is_some_and(|f| {
                        u16::from(f.code) == warren_proto::terminal::close::GOING_AWAY
                    });
                    if going_away && self.resume().await {
                        continue;
                    }
                    return Ok(None);
                }
                Some(Ok(_)) => continue,
                None | Some(Err(_)) if self.resume().await => continue,
                None => return Ok(None),
                Some(Err(e)) => bail!("websocket: {e}"),
            }
        }
    }
}

/// SSH through the relay (session token as the password), a PTY and `command`.
pub struct SshTerm {
    channel: russh::Channel<russh::client::Msg>,
    _handle: russh::client::Handle<AcceptKey>,
}

pub struct AcceptKey;

impl russh::client::Handler for AcceptKey {
    type Error = russh::Error;
    // The harness measures, it does not pin: the host key is whatever the
    // relay under test presents.
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

pub async fn open_ssh(
    addr: SocketAddr,
    session: &str,
    token: &str,
    command: &str,
) -> anyhow::Result<Box<dyn Term>> {
    let config = Arc::new(russh::client::Config {
        inactivity_timeout: Some(Duration::from_secs(600)),
        nodelay: true,
        ..Default::default()
    });
    let mut handle = russh::client::connect(config, addr, AcceptKey)
        .await
        .map_err(|e| anyhow::anyhow!("ssh connect: {e}"))?;
    let auth = handle
        .authenticate_password(session, token)
        .await
        .map_err(|e| anyhow::anyhow!("ssh auth: {e}"))?;
    if !auth.success() {
        bail!("ssh auth refused");
    }
    let channel = handle.channel_open_session().await?;
    channel
        .request_pty(false, "xterm-256color", 80, 24, 0, 0, &[])
        .await?;
    channel.exec(true, command).await?;
    Ok(Box::new(SshTerm {
        channel,
        _handle: handle,
    }))
}

#[async_trait]
impl Term for SshTerm {
    async fn send(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.channel
            .data_bytes(Bytes::copy_from_slice(data))
            .await
            .map_err(|e| anyhow::anyhow!("ssh: {e}"))
    }

    async fn recv(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            match self.channel.wait().await {
                Some(russh::ChannelMsg::Data { data }) => return Ok(Some(data)),
                Some(russh::ChannelMsg::ExtendedData { data, .. }) => return Ok(Some(data)),
                Some(russh::ChannelMsg::Close) | Some(russh::ChannelMsg::Eof) | None => {
                    return Ok(None);
                }
                Some(_) => continue,
            }
        }
    }
}

/// `docker exec -it` as the Docker CLI does it: an exec with a TTY, attached.
pub struct ExecTerm {
    output: std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

pub async fn open_exec(
    docker: &bollard::Docker,
    container: &str,
    command: &str,
) -> anyhow::Result<Box<dyn Term>> {
    let exec = docker
        .create_exec(
            container,
            bollard::exec::CreateExecOptions {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(true),
                cmd: Some(vec!["/bin/sh", "-c", command]),
                ..Default::default()
            },
        )
        .await?;
    match docker
        .start_exec(
            &exec.id,
            Some(bollard::exec::StartExecOptions {
                detach: false,
                tty: true,
                ..Default::default()
            }),
        )
        .await?
    {
        bollard::exec::StartExecResults::Attached { output, input } => {
            Ok(Box::new(ExecTerm { output, input }))
        }
        bollard::exec::StartExecResults::Detached => bail!("docker exec detached"),
    }
}

#[async_trait]
impl Term for ExecTerm {
    async fn send(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.input.write_all(data).await?;
        self.input.flush().await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<Option<Bytes>> {
        match self.output.next().await {
            Some(Ok(o)) => Ok(Some(o.into_bytes())),
            Some(Err(e)) => bail!("docker: {e}"),
            None => Ok(None),
        }
    }
}
