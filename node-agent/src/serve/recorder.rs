//! Terminal recordings: every new terminal of a session that control says
//! to record gets a recorder, a watch-only attachment to init (it never
//! types, resizes or keeps the shell alive) that turns output and resizes
//! into asciicast v2 lines and sends them to control in pieces. It runs
//! beside the people typing, never in their path: a slow control only
//! makes the recorder fall behind in init's buffer (then output is
//! skipped, as for any slow viewer).
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warren_client::internal::InternalClient;
use warren_init::proto::{Frame, Op};
use warren_proto::share::RECORDING_PIECE_MAX;

use super::initsock::InitTarget;

/// A piece is sent once this full, or after [`FLUSH_EVERY`].
const PIECE_TARGET: usize = RECORDING_PIECE_MAX - 8 * 1024;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Output per asciicast line, in characters (JSON escaping can grow a
/// character to six bytes: a line stays well under a piece).
const LINE_CHARS: usize = 1024;
/// Attempts to send one piece before it is dropped.
const SEND_ATTEMPTS: u32 = 3;

/// The node's recorders.
#[derive(Default)]
pub struct Recorders {
    control: OnceLock<Arc<InternalClient>>,
    /// Sessions whose terminals are recorded (from the watch).
    enabled: Mutex<HashSet<String>>,
    /// Each running recorder's size channel.
    sizes: DashMap<(String, u32), watch::Sender<(u16, u16)>>,
}

impl Recorders {
    /// Where pieces go; without it (a node run without control) nothing
    /// is recorded.
    pub fn set_control(&self, c: Arc<InternalClient>) {
        let _ = self.control.set(c);
    }

    /// Control, once the node is enrolled.
    pub fn control(&self) -> Option<Arc<InternalClient>> {
        self.control.get().cloned()
    }

    /// The sessions to record, as of the latest watch.
    pub fn set_enabled(&self, sessions: HashSet<String>) {
        *self.enabled.lock().unwrap_or_else(|p| p.into_inner()) = sessions;
    }

    /// Records `terminal` of `session`, just opened at output offset
    /// `from` with this size, unless its session is not recorded.
    pub fn start(
        self: &Arc<Self>,
        session: &str,
        init: &InitTarget,
        terminal: u32,
        from: u64,
        size: (u16, u16),
        shutdown: CancellationToken,
    ) {
        let Some(control) = self.control.get().cloned() else {
            return;
        };
        if !self
            .enabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(session)
        {
            return;
        }
        let key = (session.to_string(), terminal);
        let (tx, rx) = watch::channel(size);
        let mine = tx.clone();
        self.sizes.insert(key.clone(), tx);
        let (me, init) = (self.clone(), init.clone());
        tokio::spawn(async move {
            let path = format!("/internal/v1/recordings/{}/{terminal}", key.0);
            let mut r = Recording::new(size);
            let end = tokio::select! {
                _ = shutdown.cancelled() => Ok(()),
                e = record(&init, terminal, from, rx, &mut r, &control, &path) => e,
            };
            // What is left goes too (the shell's last words, its exit).
            if let Err(e) = end.and(Box::pin(r.flush(&control, &path, true)).await) {
                debug!(session = %key.0, terminal, "recording stopped: {e}");
            }
            // Only this recorder's channel (a newer one may hold the key).
            me.sizes.remove_if(&key, |_, tx| tx.same_channel(&mine));
        });
    }

    /// A client resized `terminal` of `session`.
    pub fn resized(&self, session: &str, terminal: u32, cols: u16, rows: u16) {
        if let Some(tx) = self.sizes.get(&(session.to_string(), terminal)) {
            tx.send_replace((cols, rows));
        }
    }
}

/// Why a recording ended early.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the session's recordings are full")]
    Full,
    #[error("init: {0}")]
    Init(String),
}

async fn record(
    init: &InitTarget,
    terminal: u32,
    from: u64,
    mut sizes: watch::Receiver<(u16, u16)>,
    r: &mut Recording,
    control: &InternalClient,
    path: &str,
) -> Result<(), Stop> {
    let op = Op::Attach {
        terminal,
        cols: 0,
        rows: 0,
        offset: Some(from),
        watch: true,
        input: None,
        echo_state: false,
    };
    // Boxed: the request's state (socket lookup, timeout, the op) is only
    // needed at the start; inline it would size every recorder's future.
    let (mut conn, _) = Box::pin(super::initsock::request(init, op))
        .await
        .map_err(|e| Stop::Init(e.to_string()))?;
    // One timer, armed FLUSH_EVERY after the first line a flush will carry
    // (a ticking interval woke every idle recorder once a second). A
    // disarmed timer is not polled, so an idle recorder never wakes; the
    // header goes at once.
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    let mut armed = !r.buf.is_empty();
    loop {
        tokio::select! {
            f = conn.next() => match f {
                Some(Ok(Frame::Data(b))) => r.output(&b),
                Some(Ok(Frame::Skip(_))) => {}
                // The shell ended (or init went): the recording is whole.
                _ => return Ok(()),
            },
            c = sizes.changed() => {
                if c.is_ok() {
                    let (cols, rows) = *sizes.borrow_and_update();
                    r.resize(cols, rows);
                }
            }
            // Boxed: a flush (an HTTP request) is rare, and inline its
            // state would sit in every idle terminal's recorder.
            _ = &mut sleep, if armed => {
                armed = false;
                Box::pin(r.flush(control, path, false)).await?;
                // The read buffer grew to the largest frame read (up to
                // 64 KiB under bulk output): after a flush (at most once a
                // second) an empty one is given back, so an idle recorder
                // holds none. (Its capacity can read 0 while it still holds
                // the allocation a frame was cut from: not checked.)
                if conn.read_buffer().is_empty() {
                    *conn.read_buffer_mut() = bytes::BytesMut::new();
                }
            }
        }
        if r.buf.len() >= PIECE_TARGET {
            armed = false;
            Box::pin(r.flush(control, path, false)).await?;
        } else if !armed && !r.buf.is_empty() {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + FLUSH_EVERY);
            armed = true;
        }
    }
}

/// One terminal's asciicast as it is made.
struct Recording {
    started: Instant,
    /// Lines not yet sent (UTF-8: JSON text, cut only at line ends).
    buf: Vec<u8>,
    /// Output bytes held back: the start of a character not yet whole.
    partial: Vec<u8>,
    seq: i64,
}

impl Recording {
    fn new((cols, rows): (u16, u16)) -> Self {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = serde_json::json!({
            "version": 2,
            "width": cols.max(1),
            "height": rows.max(1),
            "timestamp": timestamp,
            "env": {"TERM": "xterm-256color"},
        });
        Recording {
            started: Instant::now(),
            buf: format!("{header}\n").into_bytes(),
            partial: Vec::new(),
            seq: 0,
        }
    }

    /// One `[time, kind, data]` line, written straight into the buffer
    /// (this runs for every output chunk: no intermediate values).
    fn event(&mut self, kind: &str, data: &str) {
        use std::io::Write;
        let t = self.started.elapsed().as_secs_f64();
        let _ = write!(self.buf, "[{t:.6}, \"{kind}\", ");
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, data);
        self.buf.extend_from_slice(b"]\n");
    }

    fn output(&mut self, bytes: &[u8]) {
        // The chunk as it came, unless a character was left open before.
        let joined;
        let all: &[u8] = if self.partial.is_empty() {
            bytes
        } else {
            self.partial.extend_from_slice(bytes);
            joined = std::mem::take(&mut self.partial);
            &joined
        };
        let (whole, open) = all.split_at(all.len() - incomplete_tail(all));
        self.partial.extend_from_slice(open);
        let text = String::from_utf8_lossy(whole);
        // At most LINE_CHARS characters per line, cut at character
        // starts (bytes that are not UTF-8 continuation bytes).
        let mut start = 0;
        let mut chars = 0;
        for (i, &b) in text.as_bytes().iter().enumerate() {
            if b & 0xC0 != 0x80 {
                if chars == LINE_CHARS {
                    self.event("o", &text[start..i]);
                    start = i;
                    chars = 0;
                }
                chars += 1;
            }
        }
        if start < text.len() {
            self.event("o", &text[start..]);
        }
    }

    fn resize(&mut self, cols: u16, rows: u16) {
        self.event("r", &format!("{cols}x{rows}"));
    }

    /// Sends what is held (everything, or nothing when `last` is false and
    /// nothing waits). A piece control cannot take after a few tries is
    /// dropped; a full session stops the recording.
    async fn flush(
        &mut self,
        control: &InternalClient,
        path: &str,
        last: bool,
    ) -> Result<(), Stop> {
        if last && !self.partial.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            self.event("o", &text);
        }
        // Whole lines, at most a piece's worth at a time.
        while !self.buf.is_empty() {
            let mut cut = self.buf.len().min(PIECE_TARGET);
            if cut < self.buf.len() {
                // At a line's end (a byte, never inside a character).
                cut = self.buf[..cut]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(self.buf.len(), |i| i + 1);
            }
            let rest = self.buf.split_off(cut);
            let body = std::mem::replace(&mut self.buf, rest);
            self.send(control, path, body).await?;
        }
        Ok(())
    }

    async fn send(
        &mut self,
        control: &InternalClient,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(), Stop> {
        for attempt in 0..SEND_ATTEMPTS {
            let at = control.current();
            let r = at
                .post(&format!("{path}?seq={}", self.seq))
                .header("content-type", "text/plain; charset=utf-8")
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    self.seq += 1;
                    return Ok(());
                }
                Ok(r) if r.status() == reqwest::StatusCode::PAYLOAD_TOO_LARGE => {
                    let text = r.text().await.unwrap_or_default();
                    if text.contains("recording_full") {
                        return Err(Stop::Full);
                    }
                    warn!(%path, "recording piece refused as too large: {text}");
                    return Ok(());
                }
                Ok(r) if r.status().is_client_error() => {
                    warn!(%path, "recording piece refused: {}", r.status());
                    return Err(Stop::Init(format!("control refused: {}", r.status())));
                }
                Ok(_) | Err(_) => {
                    at.failed();
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        warn!(%path, "recording piece dropped: control did not take it");
        Ok(())
    }
}

/// How many bytes at the end of `b` begin a UTF-8 character not yet whole.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let byte = b[b.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let need = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_reads_stay_whole() {
        let mut r = Recording::new((80, 24));
        let s = "é→😀".as_bytes();
        for b in s {
            r.output(std::slice::from_ref(b));
        }
        let lines: Vec<&str> = std::str::from_utf8(&r.buf).unwrap().lines().collect();
        let header: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(header["version"], 2);
        let text: String = lines[1..]
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v[1], "o");
                v[2].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(text, "é→😀");
        assert_eq!(incomplete_tail(b"ab"), 0);
        assert_eq!(incomplete_tail(&[0xE2, 0x86]), 2);
        assert_eq!(incomplete_tail(&[0xFF]), 0);
    }

    #[test]
    fn pieces_are_cut_between_lines_of_any_characters() {
        let mut r = Recording::new((80, 24));
        for _ in 0..200 {
            r.output("€😀 box ─┼─ ".repeat(40).as_bytes());
        }
        let text = r.buf.clone();
        let mut pieces = Vec::new();
        while !r.buf.is_empty() {
            let mut cut = r.buf.len().min(PIECE_TARGET);
            if cut < r.buf.len() {
                cut = r.buf[..cut]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(r.buf.len(), |i| i + 1);
            }
            let rest = r.buf.split_off(cut);
            pieces.push(std::mem::replace(&mut r.buf, rest));
        }
        assert!(pieces.len() > 1);
        assert!(
            pieces
                .iter()
                .all(|p| p.len() <= PIECE_TARGET && p.ends_with(b"\n"))
        );
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn long_output_is_split_into_lines() {
        let mut r = Recording::new((80, 24));
        r.output("\u{1b}".repeat(5000).as_bytes());
        r.resize(100, 30);
        let lines: Vec<&str> = std::str::from_utf8(&r.buf).unwrap().lines().collect();
        assert!(lines.len() >= 6, "{}", lines.len());
        assert!(lines.iter().all(|l| l.len() < PIECE_TARGET));
        assert!(lines.last().unwrap().contains("\"100x30\""));
    }
}
