//! The wire between the agent and `warren-init` (a Unix socket).
//!
//! ```text
//! frame = type: u8 | length: u32 BE | payload (<= MAX_PAYLOAD bytes)
//! ```
//!
//! The first frame from the agent is a [`Request`] (JSON, carrying the
//! protocol version); init answers with a [`Response`]. After an `open` or
//! `attach`, `Data` frames carry terminal bytes both ways, `Resize` (4 bytes:
//! cols, rows as u16 BE) goes to init, and `Exit` (i32 BE) comes back when
//! the shell ends. `Skip` (u64 BE) comes back when output this client
//! never received was dropped from the replay buffer: the next `Data` byte
//! is at that offset. After an `exec` (a command on pipes, no PTY: SSH `exec`
//! and subsystems), `Data` carries stdin to init and stdout back, `Stderr`
//! carries stderr, and `Eof` (empty) from the agent closes the command's
//! stdin.
//!
//! Files (the sandbox API), each path resolved from the container's root by
//! init itself, so symlinks resolve inside the session: `read_file` answers
//! with the size, then `Data` frames and `Exit(0)`; `write_file` answers,
//! takes `Data` frames and `Eof`, then answers again (the file is renamed
//! into place only then: a cut upload leaves nothing); `list_dir` answers,
//! then sends one JSON [`DirEntry`] per `Data` frame and `Exit(0)`;
//! `make_dir` and `remove` answer once.
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio_util::codec::{Decoder, Encoder};
pub use warren_proto::init::ErrorCode;
pub use warren_proto::terminal::{MAX_DIMENSION, clamp_size};

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest payload of one frame, in bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest JSON request or response, in bytes.
pub const MAX_JSON: usize = 16 * 1024;

const T_REQUEST: u8 = 1;
const T_RESPONSE: u8 = 2;
const T_DATA: u8 = 3;
const T_RESIZE: u8 = 4;
const T_EXIT: u8 = 5;
const T_STDERR: u8 = 6;
const T_EOF: u8 = 7;
const T_SKIP: u8 = 8;
const T_INPUT_ACK: u8 = 9;
const T_AGE: u8 = 10;

// No deny_unknown_fields here: serde does not support it with `flatten`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A new PTY running a login shell, or `command` if given.
    Open {
        cols: u16,
        rows: u16,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        command: Option<Vec<String>>,
        /// This client's input stream (see [`Op::Attach`]'s `input`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<String>,
        /// See [`Op::Attach`]'s `echo_state`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        echo_state: bool,
    },
    /// Attach to a running terminal. Its output after `offset` is sent
    /// first (or, without `offset`, its most recent output).
    Attach {
        terminal: u32,
        cols: u16,
        rows: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// Watch only (a read-only viewer, a recorder): the terminal is not
        /// resized, this client's input is dropped, and it does not count
        /// as attached (a shell only watched still hangs up when detached).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        watch: bool,
        /// The client's input stream id: input is counted per stream, the
        /// response's `input` says how much of it reached the terminal, and
        /// bytes this connection sends from there on that already did (sent
        /// again after a reconnect) are written once only. Acknowledged
        /// with [`Frame::InputAck`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<String>,
        /// The client reads the PTY's echo state in each input ack (a
        /// 9-byte [`Frame::InputAck`]); without it acks are 8 bytes, as an
        /// older client expects. The response's `echo_state` says it is on.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        echo_state: bool,
    },
    /// Watch a terminal for its recording: as `Attach` with `watch`, but
    /// the output comes in batches, at most `batch_ms` apart (capped at a
    /// second) or 64 KiB, and each `Data` follows an `Age` saying how long
    /// before the batch went its bytes were written. The recorder wakes a
    /// few times a second instead of at every write, and its timeline
    /// stays true. An init older than this answers `bad_frame`.
    Record {
        terminal: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        batch_ms: u32,
    },
    /// Runs `command` on pipes (no PTY), stdout and stderr apart; it ends
    /// when its client goes (then it is killed).
    Exec {
        command: Vec<String>,
        /// Checked against the variables a terminal client may set.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// The working directory (default: the user's home).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// Any variables (the sandbox API's exec, on the tenant's behalf):
        /// only their names and sizes are checked.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        vars: BTreeMap<String, String>,
    },
    /// A regular file's bytes.
    ReadFile { path: String },
    /// Replaces (or creates) a regular file, making its parents.
    WriteFile {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// A directory's entries.
    ListDir { path: String },
    /// A directory and its parents.
    MakeDir { path: String },
    /// A file, or a directory (with its contents when `recursive`).
    Remove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// The terminals held.
    List,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// After `open`/`attach`: the output offset of the first `Data` byte
    /// that follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// After `attach`: the offset just past the last byte written so far
    /// (a resume asked beyond it names bytes that never were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminals: Option<Vec<TerminalInfo>>,
    /// After `open`/`attach` with an input stream: the bytes of it written
    /// to the terminal so far (the client sends again from there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<u64>,
    /// Input acks on this connection carry the PTY's echo state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo_state: bool,
    /// After `read_file`: its size; after `write_file`'s end: bytes written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            code: Some(code),
            message: Some(message.into()),
            ..Default::default()
        }
    }
}

/// One entry of a `list_dir`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DirEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    /// Unix seconds.
    pub mtime: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TerminalInfo {
    pub terminal: u32,
    pub pid: i32,
    pub clients: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Request(Request),
    Response(Response),
    Data(Bytes),
    Resize {
        cols: u16,
        rows: u16,
    },
    Exit(i32),
    /// stderr of an `exec`.
    Stderr(Bytes),
    /// The end of an `exec`'s stdin.
    Eof,
    /// Output was dropped for this client: the next `Data` byte is at
    /// this offset.
    Skip(u64),
    /// Of this client's input stream, `offset` bytes are written to the
    /// terminal; `noecho` (only when the client asked for `echo_state`):
    /// when they were, the terminal was in canonical mode with echo off (a
    /// password prompt), so nothing typed is shown.
    InputAck {
        offset: u64,
        noecho: Option<bool>,
    },
    /// (`Op::Record` only.) The next `Data`'s bytes were written this many
    /// microseconds before the batch holding them was sent.
    Age(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Length-prefixed, bounded frames.
#[derive(Debug, Default)]
pub struct InitCodec;

impl Decoder for InitCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 5 {
            return Ok(None);
        }
        let ty = src[0];
        let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
        let limit = match ty {
            T_REQUEST | T_RESPONSE => MAX_JSON,
            T_DATA | T_STDERR => MAX_PAYLOAD,
            T_EOF => 0,
            T_RESIZE | T_EXIT => 4,
            T_SKIP => 8,
            T_AGE => 4,
            T_INPUT_ACK => 9,
            other => return Err(FrameError::UnknownType(other)),
        };
        if len > limit {
            return Err(FrameError::TooLarge(len));
        }
        if src.len() < 5 + len {
            src.reserve(5 + len - src.len());
            return Ok(None);
        }
        src.advance(5);
        let payload = src.split_to(len).freeze();
        let json_err = |e: serde_json::Error| FrameError::Malformed(e.to_string());
        Ok(Some(match ty {
            T_REQUEST => Frame::Request(serde_json::from_slice(&payload).map_err(json_err)?),
            T_RESPONSE => Frame::Response(serde_json::from_slice(&payload).map_err(json_err)?),
            T_DATA => Frame::Data(payload),
            T_STDERR => Frame::Stderr(payload),
            T_EOF => Frame::Eof,
            T_RESIZE if len == 4 => Frame::Resize {
                cols: u16::from_be_bytes([payload[0], payload[1]]),
                rows: u16::from_be_bytes([payload[2], payload[3]]),
            },
            T_AGE if len == 4 => Frame::Age(u32::from_be_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ])),
            T_EXIT if len == 4 => Frame::Exit(i32::from_be_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ])),
            T_SKIP if len == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&payload);
                Frame::Skip(u64::from_be_bytes(b))
            }
            // 8 bytes unless the client asked for the echo state.
            T_INPUT_ACK if len == 8 || len == 9 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&payload[..8]);
                Frame::InputAck {
                    offset: u64::from_be_bytes(b),
                    noecho: (len == 9).then(|| payload[8] != 0),
                }
            }
            _ => return Err(FrameError::Malformed(format!("type {ty} with {len} bytes"))),
        }))
    }
}

impl Encoder<Frame> for InitCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let json_err = |e: serde_json::Error| FrameError::Malformed(e.to_string());
        let (ty, payload): (u8, Bytes) = match item {
            Frame::Request(r) => (T_REQUEST, serde_json::to_vec(&r).map_err(json_err)?.into()),
            Frame::Response(r) => (T_RESPONSE, serde_json::to_vec(&r).map_err(json_err)?.into()),
            Frame::Data(b) => (T_DATA, b),
            Frame::Resize { cols, rows } => {
                let mut b = BytesMut::with_capacity(4);
                b.put_u16(cols);
                b.put_u16(rows);
                (T_RESIZE, b.freeze())
            }
            Frame::Exit(c) => (T_EXIT, Bytes::copy_from_slice(&c.to_be_bytes())),
            Frame::Stderr(b) => (T_STDERR, b),
            Frame::Eof => (T_EOF, Bytes::new()),
            Frame::Skip(o) => (T_SKIP, Bytes::copy_from_slice(&o.to_be_bytes())),
            Frame::Age(us) => (T_AGE, Bytes::copy_from_slice(&us.to_be_bytes())),
            Frame::InputAck { offset, noecho } => {
                let mut b = BytesMut::with_capacity(9);
                b.put_u64(offset);
                if let Some(n) = noecho {
                    b.put_u8(u8::from(n));
                }
                (T_INPUT_ACK, b.freeze())
            }
        };
        let limit = if matches!(ty, T_REQUEST | T_RESPONSE) {
            MAX_JSON
        } else {
            MAX_PAYLOAD
        };
        if payload.len() > limit {
            return Err(FrameError::TooLarge(payload.len()));
        }
        dst.reserve(5 + payload.len());
        dst.put_u8(ty);
        dst.put_u32(payload.len() as u32);
        dst.extend_from_slice(&payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let mut buf = BytesMut::new();
        InitCodec.encode(f.clone(), &mut buf).unwrap();
        let back = InitCodec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(back, f);
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_round_trip() {
        roundtrip(Frame::Data(Bytes::from_static(b"ls\r")));
        roundtrip(Frame::Resize {
            cols: 120,
            rows: 40,
        });
        roundtrip(Frame::Exit(-1));
        roundtrip(Frame::Stderr(Bytes::from_static(b"oops\n")));
        roundtrip(Frame::Eof);
        roundtrip(Frame::Age(u32::MAX));
        for noecho in [Some(true), Some(false), None] {
            roundtrip(Frame::InputAck {
                offset: 1 << 40,
                noecho,
            });
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        // Oversized length: refused from the header alone.
        let mut b = BytesMut::from(&[T_DATA, 0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(
            InitCodec.decode(&mut b),
            Err(FrameError::TooLarge(_))
        ));
        // JSON bigger than the JSON limit.
        let mut b = BytesMut::new();
        b.put_u8(T_REQUEST);
        b.put_u32((MAX_JSON + 1) as u32);
        assert!(matches!(
            InitCodec.decode(&mut b),
            Err(FrameError::TooLarge(_))
        ));
        // Unknown type.
        let mut b = BytesMut::from(&[99u8, 0, 0, 0, 0][..]);
        assert!(matches!(
            InitCodec.decode(&mut b),
            Err(FrameError::UnknownType(99))
        ));
        // Resize with the wrong length.
        let mut b = BytesMut::from(&[T_RESIZE, 0, 0, 0, 2, 0, 1][..]);
        assert!(matches!(
            InitCodec.decode(&mut b),
            Err(FrameError::TooLarge(_)) | Err(FrameError::Malformed(_))
        ));
        // EOF carries nothing.
        let mut b = BytesMut::from(&[T_EOF, 0, 0, 0, 1, 0][..]);
        assert!(matches!(
            InitCodec.decode(&mut b),
            Err(FrameError::TooLarge(1))
        ));
        // Garbage JSON.
        let mut b = BytesMut::from(&[T_REQUEST, 0, 0, 0, 3, b'{', b'x', b'}'][..]);
        assert!(matches!(
            InitCodec.decode(&mut b),
            Err(FrameError::Malformed(_))
        ));
        // Partial frames wait for more bytes.
        let mut b = BytesMut::from(&[T_DATA, 0, 0, 0, 10, 1, 2][..]);
        assert!(InitCodec.decode(&mut b).unwrap().is_none());
    }

    #[test]
    fn size_is_clamped() {
        assert_eq!(clamp_size(0, 60000), (1, MAX_DIMENSION));
    }
}
