//! Creates waiting for their session to start: a heartbeat that moves a
//! session out of `pending` wakes the create waiting for that session, and
//! no other (waking every waiter on every report made each one read its
//! session again, a read per waiter per report under load).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Starting {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
}

/// One create's registration, removed when dropped.
pub struct Waiter<'a> {
    starting: &'a Starting,
    id: String,
    notify: Arc<Notify>,
}

impl Starting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for reports about session `id` from now on.
    pub fn register(&self, id: &str) -> Waiter<'_> {
        let notify = self.lock().entry(id.to_string()).or_default().clone();
        Waiter {
            starting: self,
            id: id.to_string(),
            notify,
        }
    }

    /// Reports moved these sessions: their creates look again.
    pub fn wake(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let g = self.lock();
        for id in ids {
            if let Some(n) = g.get(id) {
                // A permit if the create is not waiting at this moment.
                n.notify_one();
            }
        }
    }

    /// Creates waiting now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Waiter<'_> {
    /// Until a report moves the session (or at once, if one did since the
    /// last call).
    pub async fn reported(&self) {
        self.notify.notified().await
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.starting.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_report_wakes_its_own_create_only() {
        let s = Starting::default();
        let (a, b) = (s.register("a"), s.register("b"));
        // Reported before the wait: not lost.
        s.wake(&["a".to_string()]);
        tokio::time::timeout(Duration::from_secs(5), a.reported())
            .await
            .expect("woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.reported())
                .await
                .is_err(),
            "b was not reported"
        );
        drop(a);
        assert_eq!(s.len(), 1);
        drop(b);
        assert!(s.is_empty());
    }
}
