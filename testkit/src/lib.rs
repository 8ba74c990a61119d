//! Test support shared by the crates' end-to-end tests (dev-dependency only):
//! one way to wait ([`until`]), one "required here, else skip" check
//! ([`required`] and the checks for Docker, Chromium, PostgreSQL and
//! Prometheus), a test run that cleans up after itself ([`TestRun`]), Docker
//! helpers, a terminal WebSocket client ([`Term`]), the tunnel in a test
//! ([`TestTunnel`], [`TestNode`]) and an agent without Docker
//! ([`FakeAgent`]).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker;
mod fake;
mod require;
mod run;
mod term;
pub mod tunnel;
mod wait;

use std::time::Duration;

pub use docker::{copy_into, labelled_containers, remove_labelled};
pub use fake::{FAKE_TERMINAL, FakeAgent};
pub use require::{
    chromium_or_skip, docker_or_skip, postgres_or_skip, prometheus_or_skip, required, under_ci,
};
pub use run::{TEST_LABEL, TestRun, run_id, unique_suffix};
pub use term::{Term, tls_connect};
pub use tunnel::{TestNode, TestTunnel};
pub use wait::{until, until_ok};

/// The deadline tests wait on conditions with.
pub const WAIT: Duration = Duration::from_secs(60);
