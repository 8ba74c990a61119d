//! A PTY's reader: a thread of its own that sleeps until the PTY has output
//! and drains it at once. On the runtime, the next read waited for the
//! clients' turns (frames to the agent, replay copies), and a program
//! printing flat out spent half its time blocked on a full PTY
//! (docs/benchmarks.md, "One terminal's output").
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;
use tokio::sync::oneshot;

use super::terminal::Terminal;

/// Output taken from the PTY before it is handed on (a read returns a few
/// KiB at most; fewer, larger appends wake the clients less often).
const BATCH: usize = 32 * 1024;
/// The thread only polls, reads and appends.
const STACK: usize = 128 * 1024;

/// A running reader. [`Reader::stop`] ends it; so does the PTY's hang-up.
pub(super) struct Reader {
    /// An eventfd: readable once the reader is to stop.
    stop: Arc<OwnedFd>,
    done: oneshot::Receiver<()>,
}

impl Reader {
    /// Starts reading `term`'s PTY (its master is non-blocking).
    pub(super) fn spawn(term: Arc<Terminal>) -> io::Result<Reader> {
        let stop = Arc::new(rustix::event::eventfd(0, EventfdFlags::CLOEXEC)?);
        let (done_tx, done) = oneshot::channel();
        let theirs = stop.clone();
        std::thread::Builder::new()
            .name(format!("pty-{}", term.id))
            .stack_size(STACK)
            .spawn(move || {
                run(&term, &theirs);
                // The runtime's side may hold the last reference: the
                // AsyncFd is deregistered there, not on this thread.
                drop(term);
                let _ = done_tx.send(());
            })?;
        Ok(Reader { stop, done })
    }

    /// Ends the reader and waits until it has made its last append.
    pub(super) async fn stop(self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        let _ = self.done.await;
    }
}

fn run(term: &Terminal, stop: &OwnedFd) {
    let mut buf = vec![0u8; BATCH];
    loop {
        let mut fds = [
            PollFd::new(term.master.get_ref(), PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(_) => return,
        }
        if !fds[1].revents().is_empty() || drain(term, &mut buf, BATCH) {
            return;
        }
    }
}

/// Appends what `term`'s PTY holds now, up to `limit` bytes, a buffer at a
/// time; `true` at the PTY's end (EIO: every slave end is closed).
pub(super) fn drain(term: &Terminal, buf: &mut [u8], limit: usize) -> bool {
    let (mut got, mut taken) = (0, 0);
    let eof = loop {
        if got == buf.len() {
            term.push(buf);
            (taken, got) = (taken + got, 0);
        }
        let room = (buf.len() - got).min(limit - taken - got);
        if room == 0 {
            break false;
        }
        match rustix::io::read(term.master.get_ref(), &mut buf[got..got + room]) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(Errno::AGAIN) => break false,
            Err(Errno::INTR) => {}
            Err(_) => break true,
        }
    };
    if got > 0 {
        term.push(&buf[..got]);
    }
    eof
}
