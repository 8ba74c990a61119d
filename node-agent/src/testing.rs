//! Helpers for benchmarks and tests: drive a process on a local PTY (the
//! way a terminal emulator would), to measure `docker exec -it` and a bare
//! PTY beside Warren's path; an image whose command keeps running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Instant;

use hdrhistogram::Histogram;

/// A process on a local PTY, driven from blocking threads.
pub struct LocalPty {
    pub master: std::fs::File,
    pub child: std::process::Child,
}

pub fn spawn_on_pty(cmd: &mut Command) -> LocalPty {
    use rustix::pty::OpenptFlags;
    let master: OwnedFd =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .unwrap();
    rustix::pty::grantpt(&master).unwrap();
    rustix::pty::unlockpt(&master).unwrap();
    let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
    let slave: OwnedFd = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    rustix::termios::tcsetwinsize(
        &master,
        rustix::termios::Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
    // Our side of the PTY passes bytes straight through.
    let mut t = rustix::termios::tcgetattr(&slave).unwrap();
    t.make_raw();
    rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t).unwrap();
    let child = cmd
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    LocalPty {
        master: std::fs::File::from(master),
        child,
    }
}

impl LocalPty {
    pub fn wait_for(&mut self, needle: &[u8]) -> u64 {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = self.master.read(&mut buf).unwrap();
            assert!(n > 0);
            total += n as u64;
            // Only the new bytes (and the needle's length before them),
            // first byte first: a cheap reader, as a terminal would be.
            seen.extend_from_slice(&buf[..n]);
            if seen
                .windows(needle.len())
                .any(|w| w[0] == needle[0] && w == needle)
            {
                return total;
            }
            let keep = needle.len() - 1;
            if seen.len() > keep {
                seen.drain(..seen.len() - keep);
            }
        }
    }

    pub fn echo(&mut self, n: usize) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new(3).unwrap();
        self.master.write_all(b"S").unwrap();
        self.wait_for(b"S");
        let mut b = [0u8; 1];
        for i in 0..n {
            let c = b'a' + (i % 26) as u8;
            let t = Instant::now();
            self.master.write_all(&[c]).unwrap();
            loop {
                self.master.read_exact(&mut b).unwrap();
                if b[0] == c {
                    break;
                }
            }
            h.record(t.elapsed().as_micros() as u64).unwrap();
        }
        h
    }
}

impl Drop for LocalPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds image `name` from a Dockerfile given as text (no context), with
/// the docker CLI; panics if the build fails.
pub fn build_image(name: &str, dockerfile: &str) {
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", name, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "docker build {name} failed"
    );
}

/// Free MiB on the filesystem that holds the engine's data.
pub fn worker_free_mb() -> i64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1M", "/var/lib/docker"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

/// An image whose command keeps running (busybox `sleep`), so its stdout,
/// the pipe init drains into the container log, stays open: built once from
/// `warren/session:mini`, offline. For log-flood tests and benchmarks.
pub fn long_command_image() -> String {
    let name = "warren-test/long-command:1";
    let have = Command::new("docker")
        .args(["image", "inspect", name])
        .output()
        .unwrap();
    if !have.status.success() {
        build_image(
            name,
            "FROM warren/session:mini\nCMD [\"sleep\", \"1000000\"]\n",
        );
    }
    name.to_string()
}
