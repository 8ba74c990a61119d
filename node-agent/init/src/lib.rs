//! `warren-init`: the first process of every Warren session container.
//!
//! The agent bind-mounts this statically linked binary read-only into the
//! container and makes it the entrypoint. It does PID 1's duties (reaps
//! zombies, forwards signals), runs the image's own entrypoint and command as
//! a child (so a Docker-in-Docker image still starts its daemon), and holds
//! the session's terminals: PTYs running a login shell, served on a Unix
//! socket in a directory the agent bind-mounts from the host. Shells live
//! here, not in the agent, so they outlive the agent's connection; several
//! clients may attach to one terminal, and recent output is replayed.
//!
//! # Layout
//! - [`proto`]: the agent ↔ init wire (versioned, bounded frames).
//! - [`client`]: what the agent uses to talk to it.
//! - [`server`]: the terminal server; [`reaper`]: child bookkeeping.
//! - [`logs`]: the image command's output, drained and rate-limited on
//!   its way to the container log.

pub mod client;
pub mod logs;
pub mod proto;
mod pty;
pub mod reaper;
pub mod server;

/// Where the socket lives inside the container.
pub const SOCKET_IN_CONTAINER: &str = "/run/warren/init.sock";
/// Where the agent mounts the binary inside the container.
pub const BINARY_IN_CONTAINER: &str = "/.warren/init";
