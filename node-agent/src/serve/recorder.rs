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
use warren_init::client::ClientError;
use warren_init::proto::{ErrorCode, Frame, Op};
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
/// How long init holds a recorder's output to send it in one batch, each
/// write with its age (`Op::Record`): the recorder wakes a few times a
/// second, not at every write.
const BATCH: Duration = Duration::from_millis(500);
/// A resize is written once output older than it can no longer arrive:
/// a batch's wait, and room for the batch to travel.
const RESIZE_SETTLES: Duration = Duration::from_millis(750);

/// A terminal's size and when a client set it.
type Size = (u16, u16, Instant);

/// The node's recorders.
#[derive(Default)]
pub struct Recorders {
    control: OnceLock<Arc<InternalClient>>,
    /// Sessions whose terminals are recorded (from the watch).
    enabled: Mutex<HashSet<String>>,
    /// Each running recorder's size channel.
    /// (cols, rows, when the client resized).
    sizes: DashMap<(String, u32), watch::Sender<Size>>,
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
        let (tx, rx) = watch::channel((size.0, size.1, Instant::now()));
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
            // Stamped now, not when the recorder reads it: it may be busy
            // sending a piece to control.
            tx.send_replace((cols, rows, Instant::now()));
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
    mut sizes: watch::Receiver<Size>,
    r: &mut Recording,
    control: &InternalClient,
    path: &str,
) -> Result<(), Stop> {
    // Boxed: the request's state (socket lookup, timeout, the op) is only
    // needed at the start; inline it would size every recorder's future.
    let (mut conn, _) = Box::pin(watch(init, terminal, from))
        .await
        .map_err(|e| Stop::Init(e.to_string()))?;
    // The age init gave the next output, in microseconds.
    let mut age = None;
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
                Some(Ok(Frame::Age(us))) => age = Some(us),
                Some(Ok(Frame::Data(b))) => {
                    let at = written_at(Instant::now(), age.take());
                    r.output(&b, at);
                }
                Some(Ok(Frame::Skip(_))) => {}
                // The shell ended (or init went): the recording is whole.
                _ => return Ok(()),
            },
            c = sizes.changed() => {
                if c.is_ok() {
                    let (cols, rows, at) = *sizes.borrow_and_update();
                    r.resize(cols, rows, at);
                }
            }
            // Boxed: a flush (an HTTP request) is rare, and inline its
            // state would sit in every idle terminal's recorder.
            _ = &mut sleep, if armed => {
                armed = false;
                r.settle(Instant::now());
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
        }
        // Whatever waits (lines, or a resize not yet settled) is written
        // within FLUSH_EVERY.
        if !armed && (!r.buf.is_empty() || !r.resizes.is_empty()) {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + FLUSH_EVERY);
            armed = true;
        }
    }
}

/// Opens a recorder's watch: output in timed batches, or, from an init
/// older than `Op::Record` (a session started before an upgrade), every
/// write as it comes.
async fn watch(
    init: &InitTarget,
    terminal: u32,
    from: u64,
) -> Result<(warren_init::client::InitConn, warren_init::proto::Response), ClientError> {
    let op = Op::Record {
        terminal,
        offset: Some(from),
        batch_ms: BATCH.as_millis() as u32,
    };
    match super::initsock::request(init, op).await {
        Err(ClientError::Refused {
            code: ErrorCode::BadFrame,
            ..
        }) => {
            let op = Op::Attach {
                terminal,
                cols: 0,
                rows: 0,
                offset: Some(from),
                watch: true,
                input: None,
                echo_state: false,
            };
            super::initsock::request(init, op).await
        }
        other => other,
    }
}

/// When output that init says is `age_us` old was written. An age is
/// init's word (a session's own process): never older than a batch's
/// wait and its travel, so a recording's times stay near the truth.
fn written_at(now: Instant, age_us: Option<u32>) -> Instant {
    let age = Duration::from_micros(age_us.unwrap_or(0).into()).min(RESIZE_SETTLES);
    now.checked_sub(age).unwrap_or(now)
}

/// One terminal's asciicast as it is made.
struct Recording {
    started: Instant,
    /// Time of the last event written: times never go back.
    last: Duration,
    /// Resizes not yet written (output from before one may still come).
    resizes: std::collections::VecDeque<(Instant, u16, u16)>,
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
            last: Duration::ZERO,
            resizes: Default::default(),
            buf: format!("{header}\n").into_bytes(),
            partial: Vec::new(),
            seq: 0,
        }
    }

    /// One `[time, kind, data]` line, written straight into the buffer
    /// (this runs for every output chunk: no intermediate values).
    fn event(&mut self, at: Instant, kind: &str, data: &str) {
        use std::io::Write;
        self.last = self.last.max(at.saturating_duration_since(self.started));
        let t = self.last.as_secs_f64();
        let _ = write!(self.buf, "[{t:.6}, \"{kind}\", ");
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, data);
        self.buf.extend_from_slice(b"]\n");
    }

    /// Output written at `at`; the resizes before it go first.
    fn output(&mut self, bytes: &[u8], at: Instant) {
        while let Some(&(t, cols, rows)) = self.resizes.front()
            && t <= at
        {
            self.resizes.pop_front();
            self.event(t, "r", &format!("{cols}x{rows}"));
        }
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
                    self.event(at, "o", &text[start..i]);
                    start = i;
                    chars = 0;
                }
                chars += 1;
            }
        }
        if start < text.len() {
            self.event(at, "o", &text[start..]);
        }
    }

    /// A client resized the terminal at `at`. Written once no output from
    /// before it can still come ([`Recording::settle`]), or before output
    /// from after it.
    fn resize(&mut self, cols: u16, rows: u16, at: Instant) {
        // A client resizing without end must not grow this: the oldest
        // goes in now.
        if self.resizes.len() >= 64
            && let Some((t, c, r)) = self.resizes.pop_front()
        {
            self.event(t, "r", &format!("{c}x{r}"));
        }
        self.resizes.push_back((at, cols, rows));
    }

    /// Writes the resizes that output from before them can no longer
    /// follow (`now` is past them by more than a batch's wait).
    fn settle(&mut self, now: Instant) {
        while let Some(&(t, cols, rows)) = self.resizes.front()
            && now.saturating_duration_since(t) >= RESIZE_SETTLES
        {
            self.resizes.pop_front();
            self.event(t, "r", &format!("{cols}x{rows}"));
        }
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
        if last {
            // Every output is in: the resizes after it, then what was
            // left of a character.
            while let Some((t, cols, rows)) = self.resizes.pop_front() {
                self.event(t, "r", &format!("{cols}x{rows}"));
            }
            if !self.partial.is_empty() {
                let text = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
                self.event(Instant::now(), "o", &text);
            }
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
            r.output(std::slice::from_ref(b), Instant::now());
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
            r.output("€😀 box ─┼─ ".repeat(40).as_bytes(), Instant::now());
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
        r.output("\u{1b}".repeat(5000).as_bytes(), Instant::now());
        r.resize(100, 30, Instant::now());
        r.settle(Instant::now() + RESIZE_SETTLES);
        let lines: Vec<&str> = std::str::from_utf8(&r.buf).unwrap().lines().collect();
        assert!(lines.len() >= 6, "{}", lines.len());
        assert!(lines.iter().all(|l| l.len() < PIECE_TARGET));
        assert!(lines.last().unwrap().contains("\"100x30\""));
    }

    /// Output init held in a batch comes after a resize made later than
    /// it: the recording still has the output first, at the times init
    /// gave, and times never go back.
    #[test]
    fn batched_output_and_resizes_keep_their_order_and_times() {
        let mut r = Recording::new((80, 24));
        let t0 = r.started;
        let ms = |n: u64| t0 + Duration::from_millis(n);
        r.output(b"one", ms(100));
        r.resize(100, 30, ms(300));
        // Written at 200 ms, arrived after the resize (init's batch).
        r.output(b"two", ms(200));
        r.output(b"three", ms(400));
        // An age that would put output before what is written already.
        r.output(b"four", ms(350));
        r.resize(90, 20, ms(500));
        r.settle(ms(500) + RESIZE_SETTLES);
        let events: Vec<(f64, String, String)> = std::str::from_utf8(&r.buf)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let s = |i: usize| v[i].as_str().unwrap().to_string();
                (v[0].as_f64().unwrap(), s(1), s(2))
            })
            .collect();
        let kinds: Vec<String> = events.iter().map(|e| format!("{} {}", e.1, e.2)).collect();
        assert_eq!(
            kinds,
            ["o one", "o two", "r 100x30", "o three", "o four", "r 90x20"]
        );
        let times: Vec<f64> = events.iter().map(|e| e.0).collect();
        assert_eq!(times, [0.1, 0.2, 0.3, 0.4, 0.4, 0.5]);
    }

    #[test]
    fn an_age_is_bounded() {
        let now = Instant::now() + Duration::from_secs(10);
        assert_eq!(written_at(now, None), now);
        assert_eq!(
            written_at(now, Some(100_000)),
            now - Duration::from_millis(100)
        );
        assert_eq!(written_at(now, Some(u32::MAX)), now - RESIZE_SETTLES);
    }
}
