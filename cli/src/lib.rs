//! The `warren` command's library: its command line ([`cli`], [`cmd`]), the
//! in-process stack behind `warren up` and the API client behind
//! `warren session` and `warren node`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod cmd;
pub mod ssh;
pub mod stack;

/// Parses `90`, `90s`, `30m`, `2h`, `1d` into seconds.
pub use warren_proto::duration::parse_secs as parse_duration;
