//! Who is attached to each terminal on this node: every connection joins
//! its terminal's list while it lasts, and all of them are told the count
//! (and the names of share links that carry one) when it changes.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What the connections of one terminal are told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watchers {
    pub count: usize,
    pub names: Vec<String>,
}

#[derive(Default)]
struct Terminal {
    /// Connection id → its name, if it has one.
    attached: BTreeMap<u64, Option<String>>,
    tx: Option<watch::Sender<Watchers>>,
}

impl Terminal {
    fn summary(&self) -> Watchers {
        let mut names: Vec<String> = self.attached.values().flatten().cloned().collect();
        names.sort();
        names.dedup();
        Watchers {
            count: self.attached.len(),
            names,
        }
    }
}

/// Every terminal's attached connections, keyed by session and terminal.
#[derive(Default)]
pub struct Viewers {
    terminals: Mutex<HashMap<(String, u32), Terminal>>,
    next: std::sync::atomic::AtomicU64,
}

/// One connection's place in its terminal's list; leaving is dropping it.
pub struct Seat {
    viewers: Arc<Viewers>,
    key: (String, u32),
    id: u64,
    pub rx: watch::Receiver<Watchers>,
}

impl Viewers {
    /// Adds a connection to `terminal` of `session` and tells the others.
    pub fn join(self: &Arc<Self>, session: &str, terminal: u32, name: Option<String>) -> Seat {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = (session.to_string(), terminal);
        let mut all = self.terminals.lock().unwrap_or_else(|p| p.into_inner());
        let t = all.entry(key.clone()).or_default();
        t.attached.insert(id, name);
        let summary = t.summary();
        let rx = match &t.tx {
            Some(tx) => {
                tx.send_replace(summary);
                tx.subscribe()
            }
            None => {
                let (tx, rx) = watch::channel(summary);
                t.tx = Some(tx);
                rx
            }
        };
        Seat {
            viewers: self.clone(),
            key,
            id,
            rx,
        }
    }

    /// Terminals with someone attached (for tests and metrics).
    pub fn terminals(&self) -> usize {
        self.terminals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut all = self
            .viewers
            .terminals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(t) = all.get_mut(&self.key) {
            t.attached.remove(&self.id);
            if t.attached.is_empty() {
                all.remove(&self.key);
            } else if let Some(tx) = &t.tx {
                tx.send_replace(t.summary());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_leaves_are_told() {
        let v = Arc::new(Viewers::default());
        let owner = v.join("s", 1, None);
        assert_eq!(owner.rx.borrow().count, 1);
        let alice = v.join("s", 1, Some("alice".into()));
        let other = v.join("s", 2, None);
        assert_eq!(
            *owner.rx.borrow(),
            Watchers {
                count: 2,
                names: vec!["alice".into()]
            }
        );
        assert_eq!(other.rx.borrow().count, 1);
        drop(alice);
        assert_eq!(owner.rx.borrow().count, 1);
        drop(owner);
        drop(other);
        assert_eq!(v.terminals(), 0);
    }
}
