//! The terminal WebSocket at [`PATH`]: the same protocol for the browser
//! page, the relay's SSH bridge, the load-test client and the agent that
//! serves it.
//!
//! - Binary frames: terminal bytes, both ways. In exec mode (`mode=exec`,
//!   a command on pipes) every binary frame starts with a [`stream_byte`].
//! - Text frames: JSON control messages, [`ClientMsg`] and [`ServerMsg`];
//!   unknown types are ignored by both sides.
//! - The client names the protocol version it speaks with `v=` in the
//!   query (absent means 1); the server's `hello` carries its own. A server
//!   that cannot speak the client's version closes with
//!   [`close::UNSUPPORTED_VERSION`]; a client that gets a `hello` of another
//!   version stops with an error naming both.
//! - Output offsets: the `hello` names the offset of the first terminal
//!   byte that follows; every binary frame after it advances the offset by
//!   its length. A client that reconnects with `terminal=N&offset=K`
//!   receives exactly the bytes after `K` when the server still holds them;
//!   otherwise a [`ServerMsg::Gap`] says which bytes are lost, and the
//!   stream goes on from the gap's `to`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the terminal WebSocket lives on every session host.
pub const PATH: &str = "/_warren/terminal";
/// The terminal protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Longest `command` accepted, in bytes.
pub const MAX_COMMAND: usize = 8 * 1024;
/// Terminal sizes accepted (both dimensions); larger values are clamped.
pub const MAX_DIMENSION: u16 = 1000;
/// Largest WebSocket message either side sends or accepts, in bytes.
pub const MAX_MESSAGE: usize = 1 << 20;

/// WebSocket close codes (4000-4999 are the application's).
pub mod close {
    /// The shell ended normally (an `exit` message precedes it).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down or draining: reconnect at once (another
    /// relay or agent connection will serve the same terminal).
    pub const GOING_AWAY: u16 = 1001;
    /// A message over [`super::MAX_MESSAGE`] bytes: the connection ends
    /// (RFC 6455's "message too big"); nothing of it reached the terminal.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The request cannot be served as asked (e.g. exec without a command).
    pub const BAD_REQUEST: u16 = 4400;
    /// Missing, bad or expired credentials: sign in again.
    pub const AUTH: u16 = 4401;
    /// Valid credentials for another session, tenant or scope.
    pub const FORBIDDEN: u16 = 4403;
    /// The session, or the terminal asked for, does not exist.
    pub const SESSION_GONE: u16 = 4404;
    /// The server does not speak the client's protocol version.
    pub const UNSUPPORTED_VERSION: u16 = 4426;
    /// The session's init failed.
    pub const INTERNAL: u16 = 4500;
    /// The session's node is not reachable.
    pub const NODE_LOST: u16 = 4502;

    /// True for codes after which reconnecting cannot help.
    pub fn is_final(code: u16) -> bool {
        matches!(
            code,
            NORMAL | BAD_REQUEST | AUTH | FORBIDDEN | SESSION_GONE | UNSUPPORTED_VERSION
        )
    }
}

/// Exec-mode stream bytes (the first byte of every binary frame).
pub mod stream_byte {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
}

/// Clamps a terminal size to `1..=MAX_DIMENSION` in both dimensions.
pub fn clamp_size(cols: u16, rows: u16) -> (u16, u16) {
    (cols.clamp(1, MAX_DIMENSION), rows.clamp(1, MAX_DIMENSION))
}

/// The query of the terminal URL.
#[derive(Debug, Clone, PartialEq)]
pub struct TerminalQuery {
    /// The protocol version the client speaks (`v`; absent means 1).
    pub version: u32,
    pub cols: u16,
    pub rows: u16,
    /// Re-attach to this terminal instead of opening a new shell.
    pub terminal: Option<u32>,
    /// With `terminal`: resume after this output offset.
    pub offset: Option<u64>,
    /// `sh -c` this instead of a login shell.
    pub command: Option<String>,
    /// Run `command` on pipes rather than a PTY.
    pub exec: bool,
    /// `TERM`, `LANG` for a new shell.
    pub env: BTreeMap<String, String>,
    /// The client's input stream (`input=`, 1 to 64 of `A-Za-z0-9_-`):
    /// input is then acknowledged and never written twice.
    pub input: Option<String>,
}

impl Default for TerminalQuery {
    fn default() -> Self {
        Self {
            version: VERSION,
            cols: 80,
            rows: 24,
            terminal: None,
            offset: None,
            command: None,
            exec: false,
            env: BTreeMap::new(),
            input: None,
        }
    }
}

fn env_value_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b))
}

impl TerminalQuery {
    /// Parses a query string. Bad values fall back to defaults (or are
    /// dropped) rather than failing the connection; only the version is
    /// checked, by [`TerminalQuery::check_version`].
    pub fn parse(query: Option<&str>) -> Self {
        let mut p = TerminalQuery::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                // An unparsable version is a version we do not speak.
                "v" => p.version = v.parse().unwrap_or(0),
                "cols" => p.cols = v.parse().unwrap_or(80),
                "rows" => p.rows = v.parse().unwrap_or(24),
                "terminal" => p.terminal = v.parse().ok(),
                "offset" => p.offset = v.parse().ok(),
                "command" if v.len() <= MAX_COMMAND && !v.contains('\0') => {
                    p.command = Some(v.into_owned())
                }
                "mode" => p.exec = v == "exec",
                "term" if env_value_ok(&v) => {
                    p.env.insert("TERM".into(), v.into_owned());
                }
                "input" if crate::input::valid_stream_id(&v) => p.input = Some(v.into_owned()),
                "lang" if env_value_ok(&v) => {
                    p.env.insert("LANG".into(), v.into_owned());
                }
                _ => {}
            }
        }
        (p.cols, p.rows) = clamp_size(p.cols, p.rows);
        if p.terminal.is_none() {
            p.offset = None;
        }
        p
    }

    /// `Err` with a message naming both versions when the client speaks a
    /// version this build does not.
    pub fn check_version(&self) -> Result<(), String> {
        if self.version == VERSION {
            Ok(())
        } else {
            Err(format!(
                "the client speaks terminal protocol v{}, this server speaks v{VERSION}",
                self.version
            ))
        }
    }

    /// The query string (without `?`) for this request.
    pub fn to_query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("v", &self.version.to_string());
        q.append_pair("cols", &self.cols.to_string());
        q.append_pair("rows", &self.rows.to_string());
        if let Some(t) = self.terminal {
            q.append_pair("terminal", &t.to_string());
            if let Some(o) = self.offset {
                q.append_pair("offset", &o.to_string());
            }
        }
        if let Some(c) = &self.command {
            q.append_pair("command", c);
        }
        if self.exec {
            q.append_pair("mode", "exec");
        }
        if let Some(t) = self.env.get("TERM") {
            q.append_pair("term", t);
        }
        if let Some(l) = self.env.get("LANG") {
            q.append_pair("lang", l);
        }
        if let Some(i) = &self.input {
            q.append_pair("input", i);
        }
        q.finish()
    }
}

/// Client → server control messages (text frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// The client's terminal size changed.
    Resize { cols: u16, rows: u16 },
    /// End of the command's stdin (exec mode).
    Eof,
    /// The page measures its round trip: answered at once with a
    /// [`ServerMsg::Pong`] carrying the same `t`.
    Ping { t: u64 },
    /// A type this build does not know: ignored.
    #[serde(other)]
    Unknown,
}

impl ClientMsg {
    /// Parses a text frame; bad JSON is [`ClientMsg::Unknown`] (ignored).
    pub fn parse(text: &str) -> Self {
        let msg = serde_json::from_str(text).unwrap_or(ClientMsg::Unknown);
        match msg {
            ClientMsg::Resize { cols, rows } => {
                let (cols, rows) = clamp_size(cols, rows);
                ClientMsg::Resize { cols, rows }
            }
            other => other,
        }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Server → client control messages (text frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Sent once, first: the terminal attached and where its output
    /// resumes. Exec mode has no terminal and no offset.
    Hello {
        /// The server's protocol version.
        #[serde(default = "v1")]
        v: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        terminal: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
        /// Offset of the first terminal byte that follows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// With an input stream (`input=` in the query): how many of its
        /// bytes reached the terminal; the client sends again from there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<u64>,
        /// Input acks on this connection say whether the terminal was at a
        /// prompt that does not echo (`input_ack.noecho`); without it the
        /// page cannot tell and predicts nothing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        echo: bool,
    },
    /// Of the client's input stream, this many bytes reached the terminal:
    /// the client may forget them.
    /// `noecho`: the terminal was in canonical mode with echo off when
    /// they were written (a password prompt): the page shows no guess.
    InputAck {
        offset: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        noecho: bool,
    },
    /// Output between `from` and `to` is gone (the client asked for bytes
    /// no longer held, or fell too far behind); the stream continues at
    /// `to`. The shell was asked to redraw.
    Gap { from: u64, to: u64 },
    /// The shell or command ended with this status.
    Exit { code: i32 },
    /// The client asked to resume at `asked`, past the end of the output
    /// (`end`): it continues at the hello's offset. After a session's init
    /// restarted (a reboot), offsets start again from 0.
    Rewound { asked: u64, end: u64 },
    /// Who is attached to this terminal: `count` connections, with the
    /// names of those whose link carries one. Sent on attach and on change.
    Viewers { count: usize, names: Vec<String> },
    /// The answer to a [`ClientMsg::Ping`].
    Pong { t: u64 },
    /// Sent after the hello to a share link's holder: `"read"` (output
    /// only; input is dropped) or `"write"`.
    Access { mode: String },
    /// A type this build does not know: ignored.
    #[serde(other)]
    Unknown,
}

fn v1() -> u32 {
    1
}

impl ServerMsg {
    /// Parses a text frame; bad JSON is [`ServerMsg::Unknown`] (ignored).
    pub fn parse(text: &str) -> Self {
        serde_json::from_str(text).unwrap_or(ServerMsg::Unknown)
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// For a `hello`: `Err` naming both versions when the server speaks a
    /// version this client does not.
    pub fn check_version(&self) -> Result<(), String> {
        match self {
            ServerMsg::Hello { v, .. } if *v != VERSION => Err(format!(
                "the server speaks terminal protocol v{v}, this client speaks v{VERSION}"
            )),
            _ => Ok(()),
        }
    }
}

/// Where a client stands in a terminal's output: what it has received and
/// what to ask for when it reconnects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub terminal: Option<u32>,
    /// Offset just past the last byte received.
    pub offset: Option<u64>,
}

impl Cursor {
    /// Applies a server message; returns the bytes lost when it was a gap.
    pub fn on_message(&mut self, msg: &ServerMsg) -> Option<u64> {
        match *msg {
            ServerMsg::Hello {
                terminal, offset, ..
            } => {
                self.terminal = terminal.or(self.terminal);
                self.offset = offset;
                None
            }
            ServerMsg::Gap { from, to } => {
                self.offset = Some(to);
                Some(to.saturating_sub(from))
            }
            _ => None,
        }
    }

    /// Counts terminal bytes received.
    pub fn on_bytes(&mut self, n: usize) {
        if let Some(o) = self.offset.as_mut() {
            *o += n as u64;
        }
    }

    /// Fills `terminal` and `offset` of a reconnect's query.
    pub fn resume(&self, q: &mut TerminalQuery) {
        q.terminal = self.terminal;
        q.offset = self.terminal.and(self.offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_is_bounded() {
        let p = TerminalQuery::parse(Some("cols=132&rows=50&terminal=3&offset=77"));
        assert_eq!(
            (p.cols, p.rows, p.terminal, p.offset, p.version),
            (132, 50, Some(3), Some(77), 1)
        );
        let p = TerminalQuery::parse(Some(
            "mode=exec&command=echo%20hi&term=xterm-256color&lang=en_US.UTF-8",
        ));
        assert!(p.exec && p.command.as_deref() == Some("echo hi"));
        assert_eq!(p.env["TERM"], "xterm-256color");
        assert_eq!(p.env["LANG"], "en_US.UTF-8");
        // Hostile values are dropped, not passed to the shell's environment.
        let p = TerminalQuery::parse(Some("term=x%0Ay&lang=$(reboot)"));
        assert!(p.env.is_empty());
        let long = "x".repeat(MAX_COMMAND + 1);
        assert!(
            TerminalQuery::parse(Some(&format!("command={long}")))
                .command
                .is_none()
        );
        let p = TerminalQuery::parse(Some("cols=99999&rows=-1&terminal=x&offset=5"));
        assert_eq!((p.cols, p.rows, p.terminal, p.offset), (80, 24, None, None));
        let p = TerminalQuery::parse(Some("cols=0&rows=5000"));
        assert_eq!((p.cols, p.rows), (1, 1000));
        assert_eq!(TerminalQuery::parse(None).cols, 80);
    }

    #[test]
    fn query_round_trips() {
        let mut q = TerminalQuery {
            cols: 100,
            rows: 30,
            terminal: Some(2),
            offset: Some(1 << 40),
            command: Some("echo a&b=c".into()),
            exec: true,
            ..Default::default()
        };
        q.env.insert("TERM".into(), "xterm".into());
        assert_eq!(TerminalQuery::parse(Some(&q.to_query())), q);
    }

    #[test]
    fn versions_are_checked_both_ways() {
        assert!(TerminalQuery::parse(Some("v=1")).check_version().is_ok());
        assert!(TerminalQuery::parse(None).check_version().is_ok());
        let e = TerminalQuery::parse(Some("v=2"))
            .check_version()
            .expect_err("v2 is refused");
        assert!(e.contains("v2") && e.contains("v1"), "{e}");
        assert!(TerminalQuery::parse(Some("v=x")).check_version().is_err());
        let hello = ServerMsg::parse(r#"{"type":"hello","v":7,"terminal":1}"#);
        let e = hello.check_version().expect_err("v7 is refused");
        assert!(e.contains("v7") && e.contains("v1"), "{e}");
        // A first-wave server's hello has no version: it is v1.
        let old = ServerMsg::parse(r#"{"type":"hello","terminal":1,"pid":9}"#);
        assert!(old.check_version().is_ok());
    }

    #[test]
    fn messages_are_tagged_and_unknowns_ignored() {
        assert_eq!(
            ClientMsg::parse(r#"{"type":"resize","cols":0,"rows":9999}"#),
            ClientMsg::Resize {
                cols: 1,
                rows: 1000
            }
        );
        assert_eq!(ClientMsg::parse(r#"{"type":"eof"}"#), ClientMsg::Eof);
        assert_eq!(ClientMsg::parse(r#"{"type":"dance"}"#), ClientMsg::Unknown);
        assert_eq!(ClientMsg::parse("not json"), ClientMsg::Unknown);
        assert_eq!(
            ClientMsg::Resize { cols: 3, rows: 4 }.to_text(),
            r#"{"type":"resize","cols":3,"rows":4}"#
        );
        assert_eq!(
            ServerMsg::parse(r#"{"type":"exit","code":3}"#),
            ServerMsg::Exit { code: 3 }
        );
        assert_eq!(ServerMsg::parse(r#"{"type":"later"}"#), ServerMsg::Unknown);
    }

    #[test]
    fn cursor_tracks_offsets() {
        let mut c = Cursor::default();
        c.on_message(&ServerMsg::Hello {
            v: 1,
            terminal: Some(4),
            pid: None,
            offset: Some(10),
            input: None,
            echo: false,
        });
        c.on_bytes(5);
        let mut q = TerminalQuery::default();
        c.resume(&mut q);
        assert_eq!((q.terminal, q.offset), (Some(4), Some(15)));
        assert_eq!(c.on_message(&ServerMsg::Gap { from: 15, to: 40 }), Some(25));
        c.on_bytes(1);
        assert_eq!(c.offset, Some(41));
    }
}
