//! What the agent serves: terminals to relays, and its node to control.
//!
//! - [`terminal`]: the WebSocket terminal endpoint on a tunnel stream.
//! - [`api`]: the sandbox API (exec, files) on a tunnel stream.
//! - [`port`]: previews, a tunnel stream to a port of the session.
//! - [`initsock`]: reaching a session's init without trusting the session.
//! - [`control`]: join, heartbeats and the watch that drives reconciliation.
//! - [`shares`]: the live share links and what their holders may do;
//!   [`viewers`]: who is attached to each terminal; [`recorder`]: each
//!   terminal's asciicast, sent to control; [`shared`]: attaching
//!   through a share link.
pub mod api;
pub mod control;
pub mod initsock;
pub mod port;
pub mod recorder;
pub mod shared;
pub mod shares;
pub mod terminal;
pub mod viewers;
