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
use warren_proto::terminal::{PATH, ServerMsg, TerminalQuery};

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

pub struct WsTerm<S> {
    ws: tokio_tungstenite::WebSocketStream<S>,
}

/// Opens the session's terminal through the relay, running `command` if given.
pub async fn open_ws(
    relay: &RelayTarget,
    session: &str,
    token: &str,
    command: Option<&str>,
) -> anyhow::Result<Box<dyn Term>> {
    // The token goes in a header: the relay takes commands only with a
    // Bearer token, never from a URL.
    let query = TerminalQuery {
        command: command.map(str::to_string),
        ..Default::default()
    }
    .to_query();
    let bearer = format!("Bearer {token}");
    let host = format!("{session}.{}", relay.domain);
    let tcp = tokio::net::TcpStream::connect(relay.addr)
        .await
        .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let port = relay.addr.port();
    match &relay.tls {
        None => {
            let url = format!("ws://{host}:{port}{PATH}?{query}");
            let (ws, _) = tokio_tungstenite::client_async(request(&url, &bearer)?, tcp)
                .await
                .map_err(ws_error)?;
            Ok(Box::new(WsTerm { ws }))
        }
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(host.clone())?;
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
            let url = format!("wss://{host}:{port}{PATH}?{query}");
            let (ws, _) = tokio_tungstenite::client_async(request(&url, &bearer)?, tls)
                .await
                .map_err(ws_error)?;
            Ok(Box::new(WsTerm { ws }))
        }
    }
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

#[async_trait]
impl<S> Term for WsTerm<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    async fn send(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(data)))
            .await
            .map_err(|e| anyhow::anyhow!("websocket: {e}"))
    }

    async fn recv(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
                Some(Ok(Message::Text(t))) => {
                    // hello, exit, gap: not terminal bytes; a hello of
                    // another protocol version ends the run with its reason.
                    if let Err(e) = ServerMsg::parse(&t).check_version() {
                        bail!("{e}");
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => continue,
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
