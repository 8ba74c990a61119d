//! PTY allocation and spawning a process as the session leader on it.
#![allow(unsafe_code)] // pre_exec and borrowing fd 0 in the child need it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

/// Opens a PTY pair sized `cols` x `rows`: `(master, slave)`.
pub fn open(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    resize(&master, cols, rows)?;
    Ok((master, slave))
}

pub fn resize(master: impl AsFd, cols: u16, rows: u16) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// Makes `cmd` run on `slave` as a new session whose controlling terminal is
/// the PTY, so job control and `SIGHUP` on hang-up work as in any terminal.
pub fn attach_command(cmd: &mut Command, slave: &OwnedFd) -> io::Result<()> {
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: the closure runs between fork and exec and only makes raw
    // system calls (setsid, ioctl), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(BorrowedFd::borrow_raw(0))?;
            Ok(())
        });
    }
    Ok(())
}

/// Registers a PTY master with the tokio reactor, for writes only: its
/// output is read by a thread of its own (`server::reader`), and readable
/// events would wake the runtime for nothing on every burst.
pub fn register(master: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open and returns the same descriptor until it
    // is dropped, which only the AsyncFd that owns it can do.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(master, tokio::io::Interest::WRITABLE)
    }
    .map_err(|e| io::Error::other(e.to_string()))
}
