//! `warren-proto`: every type that crosses a boundary between Warren's
//! parts (or between Warren and its clients), defined once so that a
//! renamed field fails to compile instead of failing on the wire.
//!
//! # Layout
//! - [`api`]: the public REST API's bodies and `.warren/up.json`.
//! - [`id`]: the session id rule.
//! - [`token`]: session-token claims and scopes (control mints, the relay checks).
//! - [`terminal`]: the terminal WebSocket (browser, SSH bridge, load test, agent);
//!   [`input`]: a client's input kept until the terminal acknowledges it.
//! - [`internal`]: the internal HTTP API (agents and relays ↔ control).
//! - [`sandbox`]: the sandbox API's exec and files bodies and limits.
//! - [`validate`]: image references and display names, checked at control's edge.
//! - [`share`]: share links and recordings (API bodies, what workers are told).
//! - [`egress`]: a session's egress policy (`none`, `internet`, CIDRs) and its checks.
//! - [`init`]: reply codes of `warren-init` (its framing lives in `warren-init`).
//!
//! Serde only: no I/O, no async, so every part (and the fuzz targets) can
//! depend on it.
#![forbid(unsafe_code)]

pub mod api;
pub mod duration;
pub mod egress;
pub mod id;
pub mod init;
pub mod input;
pub mod internal;
pub mod sandbox;
pub mod share;
pub mod terminal;
pub mod token;
pub mod validate;

pub use id::{SessionId, is_session_id};
