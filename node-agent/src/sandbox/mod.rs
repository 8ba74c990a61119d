//! The session sandbox: what a session container is and how it is kept in.
//!
//! - [`spec`]: a session's container settings, built by a pure function.
//! - [`runtime`]: the containers on Docker (bollard): engine, network,
//!   create, adoption, removal.
//! - [`security`]: the isolation profiles; [`firewall`]: the host rule
//!   that keeps sessions off the worker; [`egress`]: the host rules of a
//!   session with an egress policy, on a network of its own.
//! - [`tenant_paths`]: the engine's default paths out of a session
//!   (bound files, image volumes, healthchecks, DNS, IPv6), closed.
//! - [`images`]: images the agent pulled, pruned under a budget.
//! - [`cpus`]: which cores each session is pinned to; [`disk`]: loop
//!   disks; [`blkio`]: their bandwidth limits.
pub mod blkio;
pub mod cpus;
pub mod disk;
pub mod egress;
pub mod firewall;
pub mod images;
pub mod runtime;
pub mod security;
pub mod spec;
pub mod tenant_paths;
