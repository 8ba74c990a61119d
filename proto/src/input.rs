//! Exactly-once input for terminal clients (the SSH bridge, the load-test
//! harness; the page does the same in JavaScript): every byte typed gets an
//! offset in the client's input stream and is kept until the terminal
//! acknowledges it (`input_ack`). After a reconnect the `hello` says how
//! much of the stream reached the terminal, and the client sends again
//! what came after; init writes each offset once.
use std::collections::VecDeque;

/// Input kept unacknowledged at most, in bytes: past it, typing is refused
/// (a terminal away that long is not coming back soon).
pub const MAX_PENDING: usize = 256 * 1024;

/// Whether `id` may name an input stream: 1 to 64 of `A-Za-z0-9_-`.
pub fn valid_stream_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One client's input stream: what it typed and the terminal has not
/// acknowledged yet.
#[derive(Debug, Clone)]
pub struct InputStream {
    pub id: String,
    /// Bytes not yet acknowledged, from offset `base`.
    pending: VecDeque<u8>,
    base: u64,
}

/// Typing refused: [`MAX_PENDING`] bytes wait for the terminal already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{MAX_PENDING} bytes of input are waiting for the terminal"
        )
    }
}

impl InputStream {
    pub fn new(id: String) -> Self {
        Self {
            id,
            pending: VecDeque::new(),
            base: 0,
        }
    }

    /// Keeps `bytes` until they are acknowledged; the caller sends them now
    /// if it is connected.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), Full> {
        if self.pending.len() + bytes.len() > MAX_PENDING {
            return Err(Full);
        }
        self.pending.extend(bytes);
        Ok(())
    }

    /// The terminal has `written` bytes of the stream: forget them.
    pub fn ack(&mut self, written: u64) {
        let drop = written
            .saturating_sub(self.base)
            .min(self.pending.len() as u64);
        self.pending.drain(..drop as usize);
        self.base += drop;
    }

    /// Keeps `bytes` even past [`MAX_PENDING`] (a caller that stops
    /// reading its source at the bound, which may overshoot by one read).
    pub fn push_over(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
    }

    /// After a (re)attach whose hello says `written`: what to send again.
    /// A terminal that counts less than was acknowledged forgot the stream
    /// (init restarted, or too many streams): what is kept is renumbered
    /// from its count.
    pub fn resend(&mut self, written: u64) -> Vec<u8> {
        if written < self.base {
            self.base = written;
        }
        self.ack(written);
        self.pending.iter().copied().collect()
    }

    /// Bytes waiting for an acknowledgement.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A new terminal (the old one ended): nothing of the old stream
    /// matters any more; `id` names the new one.
    pub fn restart(&mut self, id: String) {
        self.pending.clear();
        self.base = 0;
        self.id = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_until_acknowledged_and_sent_again_from_the_hello() {
        let mut s = InputStream::new("a1".into());
        assert!(valid_stream_id(&s.id), "{}", s.id);
        s.push(b"hello ").unwrap();
        s.push(b"world").unwrap();
        s.ack(3);
        assert_eq!(s.pending(), 8);
        // Reconnected: the terminal wrote 6 of them.
        assert_eq!(s.resend(6), b"world");
        // A terminal that forgot the stream: what is kept counts from 0.
        assert_eq!(s.resend(0), b"world");
        s.ack(5);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.push(&vec![0; MAX_PENDING + 1]), Err(Full));
        s.restart("b2".into());
        assert_eq!((s.id.as_str(), s.pending()), ("b2", 0));
    }
}
