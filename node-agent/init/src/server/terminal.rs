//! One PTY and its output: an offset-addressed replay buffer the reader
//! appends to without waiting, and the attached clients, each reading from
//! its own offset at its own pace.
use super::*;

/// Output read from the PTY after the shell's exit, at most: a background
/// process that keeps printing must not keep the exit from the clients.
const LAST_WORDS: usize = 1024 * 1024;
/// A frame this large goes at once, whatever the pace.
const FRAME_BATCH: usize = 32 * 1024;
/// Output within this long of a previous frame of at least BULK bytes
/// counts as sustained; echoes (a few bytes each, however fast the typing)
/// never wait.
const COALESCE_AFTER: std::time::Duration = std::time::Duration::from_millis(2);
const BULK: usize = 4096;
/// How long a small frame under sustained output waits for more.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(1);

pub(super) struct TermState {
    /// The most recent output: bytes `[end - replay.len(), end)`.
    pub(super) replay: VecDeque<u8>,
    /// Output offset just past the last byte the shell wrote.
    pub(super) end: u64,
    pub(super) clients: usize,
    pub(super) exit: Option<i32>,
    pub(super) detached_since: Option<Instant>,
    pub(super) hup_sent: Option<Instant>,
}

/// One PTY and its output. The reader appends to the replay buffer and
/// wakes the clients; each client copies from its own offset at its own
/// pace. So the shell never waits for a client: one that falls behind by
/// more than the buffer skips ahead (and is told), and nobody else notices.
pub(super) struct Terminal {
    pub(super) id: u32,
    pub(super) pid: i32,
    pub(super) master: AsyncFd<OwnedFd>,
    pub(super) state: Mutex<TermState>,
    /// Signalled on new output and on the exit.
    pub(super) wake: watch::Sender<()>,
    pub(super) replay_cap: usize,
    /// What was written of each client's input stream.
    pub(super) inputs: super::input::Inputs,
}

/// What a client can send next.
pub(super) struct Chunk {
    /// The client's offset was no longer held: it continues from here.
    pub(super) skipped_to: Option<u64>,
    pub(super) data: Vec<u8>,
    exit: Option<i32>,
}

impl Terminal {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, TermState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the shell's output; never waits for a client.
    pub(super) fn push(&self, chunk: &[u8]) {
        {
            let mut st = self.lock();
            // Make room first, so the buffer never grows past its cap (a
            // VecDeque that grows doubles: 4 MiB of capacity for 2 MiB).
            let keep = chunk.len().min(self.replay_cap);
            let excess = (st.replay.len() + keep).saturating_sub(self.replay_cap);
            st.replay.drain(..excess);
            let needed = st.replay.len() + keep;
            if needed > st.replay.capacity() {
                // Grow by doubling, but never past the cap.
                let target = (st.replay.capacity() * 2).clamp(needed, self.replay_cap);
                let len = st.replay.len();
                st.replay.reserve_exact(target - len);
            }
            st.replay.extend(&chunk[chunk.len() - keep..]);
            st.end += chunk.len() as u64;
        }
        self.wake.send_replace(());
    }

    pub(super) fn finish(&self, code: i32) {
        self.lock().exit = Some(code);
        self.wake.send_replace(());
    }

    /// Offset just past the last output byte, and the exit once there is one.
    pub(super) fn end_and_exit(&self) -> (u64, Option<i32>) {
        let st = self.lock();
        (st.end, st.exit)
    }

    /// The answer to a client attached from offset `first` (input and echo
    /// state are the caller's to add).
    pub(super) fn attached_response(&self, first: u64) -> Response {
        Response {
            ok: true,
            terminal: Some(self.id),
            pid: Some(self.pid),
            offset: Some(first),
            end: Some(self.lock().end),
            ..Default::default()
        }
    }

    /// Output bytes held after offset `pos`.
    pub(super) fn ready_after(&self, pos: u64) -> u64 {
        self.lock().end.saturating_sub(pos)
    }

    /// Up to `max` bytes of output from offset `pos`.
    pub(super) fn read_from(&self, pos: u64, max: usize) -> Chunk {
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
    pub(super) fn attach_at(&self, offset: Option<u64>) -> u64 {
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
    pub(super) fn redraw(&self) {
        let fd = self.master.get_ref();
        if let Ok(ws) = rustix::termios::tcgetwinsize(fd) {
            let rows = if ws.ws_row > 1 { ws.ws_row - 1 } else { 2 };
            let _ = pty::resize(fd, ws.ws_col, rows);
            let _ = pty::resize(fd, ws.ws_col, ws.ws_row);
        }
    }

    pub(super) fn attach_client(&self) {
        let mut st = self.lock();
        if st.exit.is_none() {
            st.clients += 1;
            st.detached_since = None;
            st.hup_sent = None;
        }
    }

    pub(super) fn detach_client(&self) {
        let mut st = self.lock();
        if st.exit.is_none() && st.clients > 0 {
            st.clients -= 1;
            if st.clients == 0 {
                st.detached_since = Some(Instant::now());
            }
        }
    }

    /// Canonical mode with echo off: what is typed is not shown (`read -s`,
    /// `sudo`, `passwd`). A line editor (readline, ash) turns canonical mode
    /// off and echoes by itself, so it does not count.
    pub(super) fn noecho(&self) -> bool {
        use rustix::termios::LocalModes;
        rustix::termios::tcgetattr(self.master.get_ref()).is_ok_and(|t| {
            t.local_modes.contains(LocalModes::ICANON) && !t.local_modes.contains(LocalModes::ECHO)
        })
    }

    pub(super) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
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

impl Server {
    pub(super) fn open(
        self: &Arc<Self>,
        cols: u16,
        rows: u16,
        env: &std::collections::BTreeMap<String, String>,
        command: Option<Vec<String>>,
    ) -> Result<Arc<Terminal>, (ErrorCode, String)> {
        // At the cap, the shell detached the longest gives way: one client
        // opening terminals and leaving them must not lock the owner out
        // for the detached timeout. Only when every one is attached is a
        // new terminal refused.
        if self.terminals().len() >= MAX_TERMINALS && !self.evict_longest_detached() {
            return Err((
                ErrorCode::TooManyTerminals,
                format!("a session holds at most {MAX_TERMINALS} terminals, all attached"),
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
        // Before the spawn: a failure after it must not leave a shell.
        rustix::io::ioctl_fionbio(&master, true).map_err(|e| internal(e.into()))?;
        let master = pty::register(master).map_err(internal)?;
        let (pid, exit_rx) = self.reaper.spawn(&mut cmd).map_err(internal)?;
        drop(cmd);
        drop(slave);
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
            inputs: Default::default(),
        });
        let reader = match super::reader::Reader::spawn(term.clone()) {
            Ok(r) => r,
            Err(e) => {
                // No reader (the session's pids limit): the shell would
                // block on its first screenful, so it goes.
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                }
                return Err((
                    ErrorCode::SpawnFailed,
                    format!("cannot start the terminal's reader: {e}"),
                ));
            }
        };
        self.terminals().insert(id, term.clone());
        tokio::spawn(self.clone().pump(term.clone(), reader, exit_rx));
        Ok(term)
    }

    /// Kills the shell (its process group) detached the longest and forgets
    /// its terminal at once; `false` when none is detached.
    pub(super) fn evict_longest_detached(&self) -> bool {
        let victim = {
            let terms = self.terminals();
            terms
                .values()
                .filter_map(|t| {
                    let st = t.lock();
                    (st.exit.is_none() && st.clients == 0)
                        .then_some(())
                        .and(st.detached_since)
                        .map(|since| (since, t.clone()))
                })
                .min_by_key(|(since, _)| *since)
                .map(|(_, t)| t)
        };
        let Some(t) = victim else { return false };
        if let Some(p) = rustix::process::Pid::from_raw(t.pid) {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        }
        self.terminals().remove(&t.id);
        true
    }

    /// Waits for the shell's exit while the reader fills the buffer; then
    /// takes what the PTY still holds and tells every client.
    pub(super) async fn pump(
        self: Arc<Self>,
        term: Arc<Terminal>,
        reader: super::reader::Reader,
        exit_rx: oneshot::Receiver<i32>,
    ) {
        let code = exit_rx.await.unwrap_or(-1);
        reader.stop().await;
        // Output written just before the exit is still in the PTY.
        super::reader::drain(&term, &mut vec![0u8; 16 * 1024], LAST_WORDS);
        term.finish(code);
        self.terminals().remove(&term.id);
    }

    /// Serves one attached client: its output from `offset` (see
    /// [`Terminal::attach_at`]) at its own pace, its input to the PTY.
    pub(super) async fn attached(
        &self,
        framed: Framed<UnixStream, InitCodec>,
        term: Arc<Terminal>,
        offset: Option<u64>,
        watch: bool,
        input: Option<String>,
        echo_state: bool,
    ) -> io::Result<()> {
        let mut wake = term.wake.subscribe();
        if !watch {
            term.attach_client();
        }
        let first = term.attach_at(offset);
        // This connection's input starts where the stream's written part ends.
        let mut input_pos = input.as_deref().map(|id| term.inputs.written(id));
        let (ack_tx, mut ack_rx) = watch::channel(input_pos.unwrap_or(0));
        // Set when input was written at a no-echo prompt, cleared when an
        // ack says so: a later ack (echo back on) never hides it.
        let noecho_seen = std::sync::atomic::AtomicBool::new(false);
        let resp = Response {
            input: input_pos,
            echo_state: echo_state && input_pos.is_some(),
            ..term.attached_response(first)
        };
        let (mut sink, mut stream) = framed.split();
        let output = async {
            sink.send(Frame::Response(resp))
                .await
                .map_err(io::Error::other)?;
            // Only someone typing asks the shell to redraw: a watcher
            // reconnecting must not make the owner's screen flicker.
            if offset.is_some_and(|o| o != first) && !watch {
                term.redraw();
            }
            let mut pos = first;
            let mut ack_due = false;
            let mut last_sent = std::time::Instant::now();
            let mut last_len = 0;
            loop {
                if ack_due || ack_rx.has_changed().unwrap_or(false) {
                    ack_due = false;
                    let offset = *ack_rx.borrow_and_update();
                    let noecho = echo_state
                        .then(|| noecho_seen.swap(false, std::sync::atomic::Ordering::Relaxed));
                    sink.send(Frame::InputAck { offset, noecho })
                        .await
                        .map_err(io::Error::other)?;
                }
                // Under sustained output (a frame went out just now) a
                // small frame waits up to COALESCE for more, so frames are
                // large and each hop's fixed cost per frame is paid less
                // often; output after a pause (an echo) goes at once.
                if last_len >= BULK && last_sent.elapsed() < COALESCE_AFTER {
                    let until = tokio::time::Instant::now() + COALESCE;
                    while term.ready_after(pos) < FRAME_BATCH as u64
                        && tokio::time::timeout_at(until, wake.changed()).await.is_ok()
                    {
                    }
                }
                // Marks the wake seen before reading, so output pushed
                // after this read wakes the wait below.
                wake.borrow_and_update();
                let c = term.read_from(pos, proto::MAX_PAYLOAD);
                if let Some(to) = c.skipped_to {
                    sink.send(Frame::Skip(to)).await.map_err(io::Error::other)?;
                    pos = to;
                    if !watch {
                        term.redraw();
                    }
                }
                if !c.data.is_empty() {
                    pos += c.data.len() as u64;
                    last_sent = std::time::Instant::now();
                    last_len = c.data.len();
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
                tokio::select! {
                    r = wake.changed() => if r.is_err() {
                        return Ok(());
                    },
                    // (`changed` marks it seen: acknowledged at the loop's top.)
                    r = ack_rx.changed() => ack_due = r.is_ok(),
                }
            }
        };
        let input = async {
            while let Some(f) = stream.next().await {
                match f {
                    // Input racing the shell's exit fails (EIO); the exit
                    // is on its way to this client, so keep going.
                    // A watcher's input and resizes go nowhere.
                    Ok(Frame::Data(_) | Frame::Resize { .. }) if watch => {}
                    Ok(Frame::Data(b)) => match (&input, input_pos.as_mut()) {
                        (Some(id), Some(pos)) => {
                            if let Ok(done) = term.inputs.write(&term, id, pos, &b).await {
                                if echo_state && term.noecho() {
                                    noecho_seen.store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                                ack_tx.send_replace(done);
                            }
                        }
                        _ => {
                            let _ = term.write_all(&b).await;
                        }
                    },
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
        if !watch {
            term.detach_client();
        }
        result
    }
}
