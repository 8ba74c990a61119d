//! The terminal server inside a session container: holds PTYs, fans their
//! output out to every attached client, keeps a replay buffer, and serves
//! the [`crate::proto`] wire on a Unix socket.
//!
//! # Layout
//! - `terminal`: a PTY's offset-addressed output buffer and its attached
//!   clients (each at its own pace).
//! - `exec`: commands on pipes (SSH `exec`, subsystems).
//! - `files`: the sandbox API's files, resolved inside the container.
//! - `reader`: the thread that drains a PTY.
//! - `record`: a recorder's view of a terminal, in timed batches.
//! - `spawn`: which environment a client may set, argv checks, the login shell.
//! - here: the socket, peer checks, request dispatch, the detached sweeper.
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

mod exec;
mod files;
mod input;
mod reader;
mod record;
mod spawn;
mod terminal;

use spawn::{check_env, command_of, in_home, login_shell};
use terminal::Terminal;

/// Output kept per terminal by default, in bytes: what a client that
/// reconnects with an offset can resume from.
pub const REPLAY_BYTES: usize = 2 * 1024 * 1024;
/// Smallest and largest replay buffer `--replay-bytes` may ask for.
pub const REPLAY_RANGE: std::ops::RangeInclusive<usize> = 64 * 1024..=64 * 1024 * 1024;
/// What an attach without an offset replays (the recent screen), in bytes.
pub const ATTACH_TAIL: usize = 64 * 1024;
/// Terminals one session may hold at once.
pub const MAX_TERMINALS: usize = 256;
/// Threads for blocking file work (the sandbox API's files) at once.
pub const BLOCKING_THREADS: usize = 16;
/// How long a detached shell lives once most of [`MAX_TERMINALS`] is used.
const PRESSURE_DETACHED_TIMEOUT: Duration = Duration::from_secs(30);
/// Clients connected to the socket at once.
// Room for a recorder on every terminal beside the people and API calls
// (the agent also caps connections per share link).
const MAX_CLIENTS: usize = 2 * MAX_TERMINALS + 128;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
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
        let (term, cols, rows, offset, watch, input, echo_state) = match op {
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
                input,
                echo_state,
            } => match self.open(cols, rows, &env, command) {
                Ok(t) => (t, cols, rows, Some(0), false, input, echo_state),
                Err((code, msg)) => return reply(&mut framed, Response::error(code, msg)).await,
            },
            Op::Exec {
                command,
                env,
                cwd,
                vars,
            } => {
                let how = exec::How { env, cwd, vars };
                return self.exec(framed, command, how).await;
            }
            Op::ReadFile { path } => return files::read(framed, path).await,
            Op::WriteFile { path, mode } => return files::write(framed, path, mode).await,
            Op::ListDir { path } => return files::list(framed, path).await,
            Op::MakeDir { path } => return files::make_dir(framed, path).await,
            Op::Remove { path, recursive } => return files::remove(framed, path, recursive).await,
            Op::Record {
                terminal,
                offset,
                batch_ms,
            } => match self.find(terminal) {
                Some(t) => return record::serve(framed, t, offset, batch_ms).await,
                None => {
                    let msg = format!("terminal {terminal} does not exist (it may have exited)");
                    return reply(&mut framed, Response::error(ErrorCode::NotFound, msg)).await;
                }
            },
            Op::Attach {
                terminal,
                cols,
                rows,
                offset,
                watch,
                input,
                echo_state,
            } => match self.find(terminal) {
                Some(t) => (t, cols, rows, offset, watch, input, echo_state),
                None => {
                    let msg = format!("terminal {terminal} does not exist (it may have exited)");
                    return reply(&mut framed, Response::error(ErrorCode::NotFound, msg)).await;
                }
            },
        };
        // A watcher types nothing, so it has no input stream.
        let input = input.filter(|_| !watch);
        if input
            .as_deref()
            .is_some_and(|id| !input::valid_stream_id(id))
        {
            let msg = "input: 1 to 64 of A-Z a-z 0-9 _ -";
            return reply(&mut framed, Response::error(ErrorCode::BadFrame, msg)).await;
        }
        // A watcher never changes the size the people typing see.
        if !watch {
            let (cols, rows) = proto::clamp_size(cols, rows);
            let _ = pty::resize(term.master.get_ref(), cols, rows);
        }
        self.attached(framed, term, offset, watch, input, echo_state)
            .await
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
            // Under pressure (most of the cap used) detached shells go
            // sooner, so one client cannot hold the session's terminals.
            let timeout = if terms.len() >= MAX_TERMINALS * 3 / 4 {
                self.opts.detached_timeout.min(PRESSURE_DETACHED_TIMEOUT)
            } else {
                self.opts.detached_timeout
            };
            for t in terms {
                let mut st = t.lock();
                let Some(since) = st.detached_since else {
                    continue;
                };
                if since.elapsed() < timeout {
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
