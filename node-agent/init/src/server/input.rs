//! Exactly-once input: each client names its input stream, and the
//! terminal counts what it wrote of each. A client that reconnects is told
//! that count and sends again from there; bytes that still arrive twice
//! (an old connection's, in flight when the new one attached) are written
//! once, by offset.
use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

use super::terminal::Terminal;

/// Input streams one terminal remembers (the least recently used go).
const MAX_STREAMS: usize = 32;

pub use warren_proto::input::valid_stream_id;

/// Stream id → (bytes written, last use), and the use clock.
type Streams = (HashMap<String, (u64, u64)>, u64);

#[derive(Default)]
pub(crate) struct Inputs {
    streams: Mutex<Streams>,
    /// Held from claiming bytes to writing them: two connections of one
    /// stream never interleave their copies.
    order: tokio::sync::Mutex<()>,
}

impl Inputs {
    /// Bytes of stream `id` written so far (a new stream starts at 0).
    pub(crate) fn written(&self, id: &str) -> u64 {
        let mut g = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let (map, clock) = &mut *g;
        *clock += 1;
        let now = *clock;
        if !map.contains_key(id) && map.len() >= MAX_STREAMS {
            let oldest = map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let e = map.entry(id.to_string()).or_insert((0, now));
        e.1 = now;
        e.0
    }

    /// Writes the bytes of stream `id` at offsets `[*pos, *pos + data.len())`
    /// that were not written before, advances `*pos`, and returns how much
    /// of the stream is written now.
    pub(crate) async fn write(
        &self,
        term: &Terminal,
        id: &str,
        pos: &mut u64,
        data: &[u8],
    ) -> io::Result<u64> {
        let _order = self.order.lock().await;
        let done = self.written(id);
        let start = *pos;
        *pos += data.len() as u64;
        let skip = done.saturating_sub(start).min(data.len() as u64) as usize;
        let end = (*pos).max(done);
        // Counted once written (the order lock keeps another connection of
        // the stream waiting meanwhile). A stream that jumped ahead of what
        // was written lost bytes on the way: what it sends now is still
        // written, and counted from here.
        if skip < data.len() {
            term.write_all(&data[skip..]).await?;
        }
        let mut g = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = g.0.get_mut(id) {
            e.0 = end;
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded() {
        let i = Inputs::default();
        for n in 0..100 {
            i.written(&format!("s{n}"));
        }
        assert!(i.streams.lock().unwrap().0.len() <= MAX_STREAMS);
    }
}
