//! The SSH edge (russh): `ssh -p 2222 <session>@<domain>`.
//!
//! The user name is the session id. A public key registered for the
//! session's tenant, or the session's short-lived token as the password,
//! opens it. Every channel becomes a tunnel stream to the session's node:
//! shells, commands and `sftp` speak the same terminal WebSocket as the
//! browser (commands and subsystems in its `mode=exec`, stdout and stderr
//! apart); `direct-tcpip` becomes a `port N` stream.
//!
//! - [`server`]: the accept loop, its limits and the host-key file;
//! - [`auth`]: logins, through the shared [`crate::access`] check;
//! - [`bridge`]: channels to terminal WebSockets (with resume) and ports.
pub mod auth;
pub mod bridge;
pub mod server;

pub use crate::limits::{FAILURE_WINDOW, FailureLimiter, MAX_FAILURES, address_key};
pub use server::{
    HOST_KEY_FILE, LOGIN_GRACE, MAX_PREAUTH_PER_ADDRESS, PreAuth, PreAuthSlot, SshContext,
    fingerprint, host_key, public_line, serve,
};
