//! Reaching a session's `warren-init` through nothing the session controls.
//!
//! The socket lives on a small tmpfs inside the container (no host
//! directory is writable from the session). The agent resolves it from the
//! container's root (`/proc/<init pid>/root`) with `openat2` and
//! `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`, so a symlink planted by the
//! tenant is refused rather than followed, checks the inode is a socket,
//! connects through the opened inode (`/proc/self/fd/N`), and then checks
//! the listener: `SO_PEERCRED` must name the container's init pid, and that
//! pid must still be in the container's cgroup. A swapped socket (another
//! session's, or one a process of this session listens on) is an error,
//! never a terminal somewhere else.
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use tokio::net::UnixStream;

/// Where init listens, relative to the container's root.
const SOCKET_IN_ROOT: &str = "run/warren/init.sock";

/// What identifies one session's init on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitTarget {
    /// Docker's full container id (shared: every terminal and recorder
    /// holds a copy of its target, and a count is smaller than the id).
    pub container_id: std::sync::Arc<str>,
    /// The container's PID 1 (warren-init) in the agent's PID namespace.
    pub init_pid: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum InitSocketError {
    #[error("the session's init is not running (pid {0} is gone)")]
    Gone(i32),
    #[error("init's socket is missing or not reachable safely: {0}")]
    Resolve(std::io::Error),
    #[error("refused: init's socket was replaced (symlinks are not followed)")]
    NotSocket,
    #[error("cannot reach the session's init: {0}")]
    Connect(std::io::Error),
    #[error("refused: the socket's listener (pid {0:?}) is not the session's init")]
    WrongPeer(Option<i32>),
}

fn open_socket_inode(t: &InitTarget) -> Result<OwnedFd, InitSocketError> {
    if t.init_pid <= 1 {
        return Err(InitSocketError::Gone(t.init_pid));
    }
    // The magic link is followed here on purpose: it is the container's root
    // as the kernel sees it, not a path the tenant wrote.
    let root = rustix::fs::open(
        format!("/proc/{}/root", t.init_pid),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::SRCH {
            InitSocketError::Gone(t.init_pid)
        } else {
            InitSocketError::Resolve(e.into())
        }
    })?;
    let fd = rustix::fs::openat2(
        &root,
        SOCKET_IN_ROOT,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::BENEATH,
    )
    .map_err(|e| InitSocketError::Resolve(e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| InitSocketError::Resolve(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err(InitSocketError::NotSocket);
    }
    Ok(fd)
}

/// Whether `/proc/<pid>/cgroup` (as the agent, in the host's cgroup
/// namespace, reads it) places the pid in the container's cgroup.
fn pid_in_container(pid: i32, container_id: &str) -> bool {
    if container_id.len() < 12 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|c| c.lines().any(|l| l.contains(container_id)))
        .unwrap_or(false)
}

/// Connects to the session's init and verifies who answers.
pub async fn connect(t: &InitTarget) -> Result<UnixStream, InitSocketError> {
    let fd = open_socket_inode(t)?;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let stream = UnixStream::connect(&path)
        .await
        .map_err(InitSocketError::Connect)?;
    drop(fd);
    let peer = stream.peer_cred().ok().and_then(|c| c.pid());
    if peer != Some(t.init_pid) || !pid_in_container(t.init_pid, &t.container_id) {
        return Err(InitSocketError::WrongPeer(peer));
    }
    Ok(stream)
}

/// One request to the session's init over a verified connection.
pub async fn request(
    t: &InitTarget,
    op: warren_init::proto::Op,
) -> Result<
    (warren_init::client::InitConn, warren_init::proto::Response),
    warren_init::client::ClientError,
> {
    let stream = connect(t).await.map_err(|e| {
        warren_init::client::ClientError::Connect(std::io::Error::other(e.to_string()))
    })?;
    warren_init::client::request_on(stream, op).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_a_pid_that_is_not_a_container() {
        // This test process is not in any container's cgroup named "x…".
        let me = InitTarget {
            container_id: "0123456789abcdef".into(),
            init_pid: std::process::id() as i32,
        };
        // Our own root has no init socket: a resolve error, not a panic.
        assert!(matches!(
            connect(&me).await,
            Err(InitSocketError::Resolve(_) | InitSocketError::WrongPeer(_))
        ));
        assert!(!pid_in_container(
            std::process::id() as i32,
            "0123456789abcdef"
        ));
        assert!(matches!(
            connect(&InitTarget {
                container_id: "".into(),
                init_pid: 1
            })
            .await,
            Err(InitSocketError::Gone(1))
        ));
    }
}
