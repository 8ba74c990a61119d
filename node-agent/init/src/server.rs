//! The terminal server inside a session container: holds PTYs, fans their
//! output out to every attached client, keeps a replay buffer, and serves
//! the [`crate::proto`] wire on a Unix socket.
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::unix::AsyncFd;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::proto::{self, ErrorCode, Frame, InitCodec, Op, Request, Response, TerminalInfo};
use crate::pty;
use crate::reaper::Reaper;

/// Output kept per terminal by default, in bytes: what a client that
/// reconnects with an offset can resume from.
pub const REPLAY_BYTES: usize = 2 * 1024 * 1024;
/// Smallest and largest replay buffer `--replay-bytes` may ask for.
pub const REPLAY_RANGE: std::ops::RangeInclusive<usize> = 64 * 1024..=64 * 1024 * 1024;
/// What an attach without an offset replays (the recent screen), in bytes.
pub const ATTACH_TAIL: usize = 64 * 1024;
/// Terminals one session may hold at once.
pub const MAX_TERMINALS: usize = 256;
/// Clients connected to the socket at once.
const MAX_CLIENTS: usize = 256;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Environment variables a client may set on a new shell.
fn env_allowed(k: &str) -> bool {
    matches!(k, "TERM" | "LANG" | "COLORTERM" | "TZ") || k.starts_with("LC_")
}

pub struct Options {
    pub socket: PathBuf,
    /// A shell with no client attached for this long is hung up.
    pub detached_timeout: Duration,
    /// Answer only peers outside this process's PID namespace (the agent on
    /// the host). Processes of the session itself, root included, see a
    /// non-zero peer pid and are refused: they must not speak the init
    /// protocol as the agent. Off only for in-process tests.
    pub agent_only: bool,
    /// Output kept per terminal ([`REPLAY_BYTES`] by default). It lives in
    /// init, so it counts against the session's own memory limit.
    pub replay_bytes: usize,
}

/// Whether a connecting peer may speak the init protocol.
///
/// `SO_PEERCRED` reports a peer's pid as seen from our PID namespace, and 0
/// when the peer lives outside it (or in no namespace we can see). Every
/// process of the session, and of containers nested in it, has a pid here.
pub fn peer_allowed(agent_only: bool, peer_pid: Option<i32>) -> bool {
    !agent_only || peer_pid == Some(0)
}

struct TermState {
    /// The most recent output: bytes `[end - replay.len(), end)`.
    replay: VecDeque<u8>,
    /// Output offset just past the last byte the shell wrote.
    end: u64,
    clients: usize,
    exit: Option<i32>,
    detached_since: Option<Instant>,
    hup_sent: Option<Instant>,
}

/// One PTY and its output. The reader appends to the replay buffer and
/// wakes the clients; each client copies from its own offset at its own
/// pace. So the shell never waits for a client: one that falls behind by
/// more than the buffer skips ahead (and is told), and nobody else notices.
struct Terminal {
    id: u32,
    pid: i32,
    master: AsyncFd<OwnedFd>,
    state: Mutex<TermState>,
    /// Signalled on new output and on the exit.
    wake: watch::Sender<()>,
    replay_cap: usize,
}

/// What a client can send next.
struct Chunk {
    /// The client's offset was no longer held: it continues from here.
    skipped_to: Option<u64>,
    data: Vec<u8>,
    exit: Option<i32>,
}

impl Terminal {
    fn lock(&self) -> std::sync::MutexGuard<'_, TermState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the shell's output; never waits for a client.
    fn push(&self, chunk: &[u8]) {
        {
            let mut st = self.lock();
            st.replay.extend(chunk);
            let excess = st.replay.len().saturating_sub(self.replay_cap);
            st.replay.drain(..excess);
            st.end += chunk.len() as u64;
        }
        self.wake.send_replace(());
    }

    fn finish(&self, code: i32) {
        self.lock().exit = Some(code);
        self.wake.send_replace(());
    }

    /// Up to `max` bytes of output from offset `pos`.
    fn read_from(&self, pos: u64, max: usize) -> Chunk {
        let st = self.lock();
        let start = st.end - st.replay.len() as u64;
        let (skipped_to, pos) = if pos < start {
            (Some(start), start)
        } else {
            (None, pos.min(st.end))
        };
        let i = (pos - start) as usize;
        let n = (st.replay.len() - i).min(max);
        let (a, b) = st.replay.as_slices();
        let mut data = Vec::with_capacity(n);
        if i < a.len() {
            let e = (i + n).min(a.len());
            data.extend_from_slice(&a[i..e]);
            data.extend_from_slice(&b[..n - (e - i)]);
        } else {
            data.extend_from_slice(&b[i - a.len()..i - a.len() + n]);
        }
        let exit = if n == 0 { st.exit } else { None };
        Chunk {
            skipped_to,
            data,
            exit,
        }
    }

    /// Where an attach starts: `offset` when it is still held, else the
    /// oldest byte held (a gap), or the recent screen without an offset.
    fn attach_at(&self, offset: Option<u64>) -> u64 {
        let st = self.lock();
        let start = st.end - st.replay.len() as u64;
        match offset {
            Some(o) if (start..=st.end).contains(&o) => o,
            Some(o) if o < start => start,
            _ => st.end.saturating_sub(ATTACH_TAIL as u64).max(start),
        }
    }

    /// Asks the shell (or the full-screen program in it) to redraw, after
    /// a client lost output: a SIGWINCH through a size change and back.
    fn redraw(&self) {
        let fd = self.master.get_ref();
        if let Ok(ws) = rustix::termios::tcgetwinsize(fd) {
            let rows = if ws.ws_row > 1 { ws.ws_row - 1 } else { 2 };
            let _ = pty::resize(fd, ws.ws_col, rows);
            let _ = pty::resize(fd, ws.ws_col, ws.ws_row);
        }
    }

    fn attach_client(&self) {
        let mut st = self.lock();
        if st.exit.is_none() {
            st.clients += 1;
            st.detached_since = None;
            st.hup_sent = None;
        }
    }

    fn detach_client(&self) {
        let mut st = self.lock();
        if st.exit.is_none() && st.clients > 0 {
            st.clients -= 1;
            if st.clients == 0 {
                st.detached_since = Some(Instant::now());
            }
        }
    }

    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// The state shared by the accept loop, the terminals and the sweeper.
pub struct Server {
    opts: Options,
    reaper: Arc<Reaper>,
    terminals: Mutex<HashMap<u32, Arc<Terminal>>>,
    next_id: Mutex<u32>,
}

impl Server {
    pub fn new(opts: Options, reaper: Arc<Reaper>) -> Arc<Self> {
        Arc::new(Self {
            opts,
            reaper,
            terminals: Mutex::new(HashMap::new()),
            next_id: Mutex::new(1),
        })
    }

    fn terminals(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Terminal>>> {
        self.terminals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, id: u32) -> Option<Arc<Terminal>> {
        self.terminals().get(&id).cloned()
    }

    /// Pids of every shell held, for hanging them up at shutdown.
    pub fn shell_pids(&self) -> Vec<i32> {
        self.terminals().values().map(|t| t.pid).collect()
    }

    /// Serves the socket until `shutdown`.
    pub async fn serve(self: Arc<Self>, shutdown: CancellationToken) -> io::Result<()> {
        let listener = bind(&self.opts.socket)?;
        let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
        let sweeper = tokio::spawn(self.clone().sweep(shutdown.clone()));
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => r?,
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.client(stream).await {
                    eprintln!("warren-init: client: {e}");
                }
                drop(permit);
            });
        }
        sweeper.abort();
        let _ = std::fs::remove_file(&self.opts.socket);
        Ok(())
    }

    async fn client(self: Arc<Self>, stream: UnixStream) -> io::Result<()> {
        let peer_pid = stream.peer_cred().ok().and_then(|c| c.pid());
        let mut framed = Framed::new(stream, InitCodec);
        if !peer_allowed(self.opts.agent_only, peer_pid) {
            eprintln!("warren-init: refused a client inside the session (pid {peer_pid:?})");
            return reply(
                &mut framed,
                Response::error(
                    ErrorCode::Forbidden,
                    "this socket answers only the Warren agent, not processes in the session",
                ),
            )
            .await;
        }
        let first = tokio::time::timeout(REQUEST_TIMEOUT, framed.next()).await;
        let req = match first {
            Err(_) => {
                return reply(
                    &mut framed,
                    Response::error(ErrorCode::Timeout, "no request in time"),
                )
                .await;
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => {
                return reply(
                    &mut framed,
                    Response::error(ErrorCode::BadFrame, e.to_string()),
                )
                .await;
            }
            Ok(Some(Ok(Frame::Request(r)))) => r,
            Ok(Some(Ok(_))) => {
                return reply(
                    &mut framed,
                    Response::error(ErrorCode::BadFrame, "the first frame must be a request"),
                )
                .await;
            }
        };
        let Request { version, op } = req;
        if version != proto::PROTOCOL_VERSION {
            let msg = format!(
                "agent speaks init protocol v{version}, this warren-init speaks v{}",
                proto::PROTOCOL_VERSION
            );
            return reply(
                &mut framed,
                Response::error(ErrorCode::VersionMismatch, msg),
            )
            .await;
        }
        let (term, cols, rows, offset) = match op {
            Op::List => {
                let list = self
                    .terminals()
                    .values()
                    .map(|t| TerminalInfo {
                        terminal: t.id,
                        pid: t.pid,
                        clients: t.lock().clients,
                    })
                    .collect();
                let r = Response {
                    ok: true,
                    terminals: Some(list),
                    ..Default::default()
                };
                return reply(&mut framed, r).await;
            }
            Op::Open {
                cols,
                rows,
                env,
                command,
            } => match self.open(cols, rows, &env, command) {
                Ok(t) => (t, cols, rows, Some(0)),
                Err((code, msg)) => return reply(&mut framed, Response::error(code, msg)).await,
            },
            Op::Exec { command, env } => return self.exec(framed, command, env).await,
            Op::Attach {
                terminal,
                cols,
                rows,
                offset,
            } => match self.find(terminal) {
                Some(t) => (t, cols, rows, offset),
                None => {
                    let msg = format!("terminal {terminal} does not exist (it may have exited)");
                    return reply(&mut framed, Response::error(ErrorCode::NotFound, msg)).await;
                }
            },
        };
        let (cols, rows) = proto::clamp_size(cols, rows);
        let _ = pty::resize(term.master.get_ref(), cols, rows);
        self.attached(framed, term, offset).await
    }

    fn open(
        self: &Arc<Self>,
        cols: u16,
        rows: u16,
        env: &std::collections::BTreeMap<String, String>,
        command: Option<Vec<String>>,
    ) -> Result<Arc<Terminal>, (ErrorCode, String)> {
        if self.terminals().len() >= MAX_TERMINALS {
            return Err((
                ErrorCode::TooManyTerminals,
                format!("a session holds at most {MAX_TERMINALS} terminals"),
            ));
        }
        check_env(env)?;
        let (cols, rows) = proto::clamp_size(cols, rows);
        let internal = |e: io::Error| (ErrorCode::SpawnFailed, e.to_string());
        let (master, slave) = pty::open(cols, rows).map_err(internal)?;
        let mut cmd = match &command {
            Some(argv) if !argv.is_empty() => command_of(argv)?,
            _ => login_shell(),
        };
        in_home(&mut cmd).env("TERM", "xterm-256color");
        for (k, v) in env {
            cmd.env(k, v);
        }
        pty::attach_command(&mut cmd, &slave).map_err(internal)?;
        let (pid, exit_rx) = self.reaper.spawn(&mut cmd).map_err(internal)?;
        drop(cmd);
        drop(slave);
        rustix::io::ioctl_fionbio(&master, true).map_err(|e| internal(e.into()))?;
        let master = pty::register(master).map_err(internal)?;
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
            let id = *n;
            *n = n.wrapping_add(1).max(1);
            id
        };
        let term = Arc::new(Terminal {
            id,
            pid,
            master,
            wake: watch::channel(()).0,
            replay_cap: self
                .opts
                .replay_bytes
                .clamp(*REPLAY_RANGE.start(), *REPLAY_RANGE.end()),
            state: Mutex::new(TermState {
                replay: VecDeque::new(),
                end: 0,
                clients: 0,
                exit: None,
                detached_since: Some(Instant::now()),
                hup_sent: None,
            }),
        });
        self.terminals().insert(id, term.clone());
        tokio::spawn(self.clone().pump(term.clone(), exit_rx));
        Ok(term)
    }

    /// Runs a command on pipes for one client: stdin from its `Data` frames,
    /// stdout and stderr back apart, then its exit code. The command's
    /// process group is killed if the client goes first.
    async fn exec(
        &self,
        mut framed: Framed<UnixStream, InitCodec>,
        command: Vec<String>,
        env: std::collections::BTreeMap<String, String>,
    ) -> io::Result<()> {
        use std::os::unix::process::CommandExt;
        use std::process::Stdio;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let prepared = check_env(&env).and_then(|()| {
            if command.is_empty() {
                return Err((ErrorCode::BadCommand, "exec needs a command".into()));
            }
            command_of(&command)
        });
        let mut cmd = match prepared {
            Ok(c) => c,
            Err((code, msg)) => return reply(&mut framed, Response::error(code, msg)).await,
        };
        in_home(&mut cmd)
            .envs(&env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let (mut child, mut exit_rx) = match self.reaper.spawn_child(&mut cmd) {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("cannot run {}: {e}", command[0]);
                return reply(&mut framed, Response::error(ErrorCode::SpawnFailed, msg)).await;
            }
        };
        let pid = child.id() as i32;
        let kill = move || {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
        };
        let pipes = (|| {
            let stdin = child.stdin.take().map(tokio::process::ChildStdin::from_std);
            let stdout = child
                .stdout
                .take()
                .map(tokio::process::ChildStdout::from_std);
            let stderr = child
                .stderr
                .take()
                .map(tokio::process::ChildStderr::from_std);
            match (stdin, stdout, stderr) {
                (Some(i), Some(o), Some(e)) => Ok((i?, o?, e?)),
                _ => Err(io::Error::other("pipes missing")),
            }
        })();
        drop(child); // the reaper collects its status
        let (stdin, mut stdout, mut stderr) = match pipes {
            Ok(p) => p,
            Err(e) => {
                kill();
                return reply(
                    &mut framed,
                    Response::error(ErrorCode::SpawnFailed, e.to_string()),
                )
                .await;
            }
        };
        let resp = Response {
            ok: true,
            pid: Some(pid),
            ..Default::default()
        };
        framed
            .send(Frame::Response(resp))
            .await
            .map_err(io::Error::other)?;
        let (mut sink, mut stream) = framed.split();
        // Input on its own task: a command that does not read its stdin
        // must not stop us from draining its stdout (or the client's EOF).
        let mut input = tokio::spawn(async move {
            let mut stdin = Some(stdin);
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(Frame::Data(b)) => {
                        if let Some(w) = stdin.as_mut()
                            && w.write_all(&b).await.is_err()
                        {
                            stdin = None; // the command closed its stdin
                        }
                    }
                    Ok(Frame::Eof) => stdin = None,
                    Ok(Frame::Resize { .. }) => {}
                    _ => break,
                }
            }
        });
        let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 16 * 1024]);
        let (mut out_open, mut err_open) = (true, true);
        let mut code: Option<i32> = None;
        // After the exit, output still in the pipes is sent; a background
        // job that keeps them open is not waited for long.
        let mut drain_until: Option<tokio::time::Instant> = None;
        let result: io::Result<()> = async {
            loop {
                if code.is_some() && !out_open && !err_open {
                    break;
                }
                let deadline = drain_until.unwrap_or_else(|| {
                    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
                });
                tokio::select! {
                    r = stdout.read(&mut out_buf), if out_open => match r {
                        Ok(0) | Err(_) => out_open = false,
                        Ok(n) => sink.send(Frame::Data(Bytes::copy_from_slice(&out_buf[..n]))).await.map_err(io::Error::other)?,
                    },
                    r = stderr.read(&mut err_buf), if err_open => match r {
                        Ok(0) | Err(_) => err_open = false,
                        Ok(n) => sink.send(Frame::Stderr(Bytes::copy_from_slice(&err_buf[..n]))).await.map_err(io::Error::other)?,
                    },
                    c = &mut exit_rx, if code.is_none() => {
                        code = Some(c.unwrap_or(-1));
                        drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                    _ = &mut input => {
                        // The client went away: nobody wants the result.
                        kill();
                        return Ok(());
                    }
                    _ = tokio::time::sleep_until(deadline), if drain_until.is_some() => break,
                }
            }
            sink.send(Frame::Exit(code.unwrap_or(-1))).await.map_err(io::Error::other)?;
            Ok(())
        }
        .await;
        input.abort();
        result
    }

    /// Reads the PTY until the shell exits; then tells every client.
    async fn pump(self: Arc<Self>, term: Arc<Terminal>, mut exit_rx: oneshot::Receiver<i32>) {
        let mut buf = vec![0u8; 32 * 1024];
        let mut eof = false;
        let code = loop {
            tokio::select! {
                code = &mut exit_rx => break code.unwrap_or(-1),
                r = term.master.readable(), if !eof => {
                    let Ok(mut guard) = r else { eof = true; continue };
                    match guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf[..]).map_err(io::Error::from)) {
                        Ok(Ok(0)) | Ok(Err(_)) => eof = true, // EIO: every slave end closed
                        Ok(Ok(n)) => term.push(&buf[..n]),
                        Err(_would_block) => {}
                    }
                }
            }
        };
        // Output written just before the exit is still in the PTY.
        while let Ok(n) = rustix::io::read(term.master.get_ref(), &mut buf[..]) {
            if n == 0 {
                break;
            }
            term.push(&buf[..n]);
        }
        term.finish(code);
        self.terminals().remove(&term.id);
    }

    /// Serves one attached client: its output from `offset` (see
    /// [`Terminal::attach_at`]) at its own pace, its input to the PTY.
    async fn attached(
        &self,
        framed: Framed<UnixStream, InitCodec>,
        term: Arc<Terminal>,
        offset: Option<u64>,
    ) -> io::Result<()> {
        let mut wake = term.wake.subscribe();
        term.attach_client();
        let first = term.attach_at(offset);
        let resp = Response {
            ok: true,
            terminal: Some(term.id),
            pid: Some(term.pid),
            offset: Some(first),
            ..Default::default()
        };
        let (mut sink, mut stream) = framed.split();
        let output = async {
            sink.send(Frame::Response(resp))
                .await
                .map_err(io::Error::other)?;
            if offset.is_some_and(|o| o != first) {
                term.redraw();
            }
            let mut pos = first;
            loop {
                // Marks the wake seen before reading, so output pushed
                // after this read wakes the wait below.
                wake.borrow_and_update();
                let c = term.read_from(pos, proto::MAX_PAYLOAD);
                if let Some(to) = c.skipped_to {
                    sink.send(Frame::Skip(to)).await.map_err(io::Error::other)?;
                    pos = to;
                    term.redraw();
                }
                if !c.data.is_empty() {
                    pos += c.data.len() as u64;
                    sink.send(Frame::Data(c.data.into()))
                        .await
                        .map_err(io::Error::other)?;
                    continue;
                }
                if let Some(code) = c.exit {
                    sink.send(Frame::Exit(code))
                        .await
                        .map_err(io::Error::other)?;
                    return Ok(());
                }
                if wake.changed().await.is_err() {
                    return Ok(());
                }
            }
        };
        let input = async {
            while let Some(f) = stream.next().await {
                match f {
                    // Input racing the shell's exit fails (EIO); the exit
                    // is on its way to this client, so keep going.
                    Ok(Frame::Data(b)) => {
                        let _ = term.write_all(&b).await;
                    }
                    Ok(Frame::Resize { cols, rows }) => {
                        let (c, r) = proto::clamp_size(cols, rows);
                        let _ = pty::resize(term.master.get_ref(), c, r);
                    }
                    Ok(_) => return Err(io::Error::other("unexpected frame from client")),
                    Err(e) => return Err(io::Error::other(e.to_string())),
                }
            }
            Ok(())
        };
        let result = tokio::select! {
            r = output => r,
            r = input => r,
        };
        term.detach_client();
        result
    }

    /// Hangs up shells nobody has been attached to for the detached timeout.
    async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let every = (self.opts.detached_timeout / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(10));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let terms: Vec<_> = self.terminals().values().cloned().collect();
            for t in terms {
                let mut st = t.lock();
                let Some(since) = st.detached_since else {
                    continue;
                };
                if since.elapsed() < self.opts.detached_timeout {
                    continue;
                }
                let pgid = rustix::process::Pid::from_raw(t.pid);
                match st.hup_sent {
                    None => {
                        st.hup_sent = Some(Instant::now());
                        if let Some(p) = pgid {
                            let _ = rustix::process::kill_process_group(
                                p,
                                rustix::process::Signal::HUP,
                            );
                        }
                    }
                    Some(at) if at.elapsed() > Duration::from_secs(10) => {
                        if let Some(p) = pgid {
                            let _ = rustix::process::kill_process_group(
                                p,
                                rustix::process::Signal::KILL,
                            );
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

fn check_env(env: &std::collections::BTreeMap<String, String>) -> Result<(), (ErrorCode, String)> {
    if env.len() > 32
        || env
            .iter()
            .any(|(k, v)| !env_allowed(k) || v.len() > 256 || v.contains('\0'))
    {
        return Err((
            ErrorCode::BadEnv,
            "only TERM, LANG, LC_*, COLORTERM and TZ may be set, 256 bytes each".into(),
        ));
    }
    Ok(())
}

fn command_of(argv: &[String]) -> Result<Command, (ErrorCode, String)> {
    if argv.len() > 256 || argv.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
        return Err((ErrorCode::BadCommand, "command too long".into()));
    }
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    Ok(c)
}

/// Starts `cmd` in the user's home, as a login would.
fn in_home(cmd: &mut Command) -> &mut Command {
    let home = std::env::var("HOME")
        .ok()
        .filter(|h| Path::new(h).is_dir())
        .unwrap_or_else(|| {
            if Path::new("/root").is_dir() {
                "/root".into()
            } else {
                "/".into()
            }
        });
    cmd.current_dir(&home).env("HOME", home)
}

fn login_shell() -> Command {
    let (path, arg0) = if Path::new("/bin/bash").exists() {
        ("/bin/bash", "-bash")
    } else {
        ("/bin/sh", "-sh")
    };
    let mut c = Command::new(path);
    std::os::unix::process::CommandExt::arg0(&mut c, arg0);
    c.env("SHELL", path);
    c
}

async fn reply(framed: &mut Framed<UnixStream, InitCodec>, r: Response) -> io::Result<()> {
    framed
        .send(Frame::Response(r))
        .await
        .map_err(io::Error::other)
}

fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by a previous run of this container.
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}
