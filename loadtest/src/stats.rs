//! What a run counts and measures, shared by every task of the run.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

/// Counts and histograms a run fills.
#[derive(Default)]
pub struct Stats {
    pub measuring: AtomicBool,
    pub terminals_opened: AtomicU64,
    pub terminals_failed: AtomicU64,
    pub keystrokes_sent: AtomicU64,
    pub keystrokes_echoed: AtomicU64,
    /// Keystrokes whose echo never came (the terminal gave up on them).
    pub keystrokes_lost: AtomicU64,
    pub bytes_received: AtomicU64,
    pub sessions_created: AtomicU64,
    pub sessions_deleted: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Echo (or session start) latency in microseconds, measured phase only.
    pub latency: Mutex<Option<Histogram<u64>>>,
    /// The current second's latencies, for the timeline and progress.
    pub interval: Mutex<Option<Histogram<u64>>>,
    /// Bytes received while measuring.
    pub measured_bytes: AtomicU64,
}

fn hist() -> Histogram<u64> {
    #[allow(clippy::expect_used)] // static bounds
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

impl Stats {
    pub fn new() -> Arc<Self> {
        let s = Stats::default();
        *s.latency.lock().unwrap_or_else(|e| e.into_inner()) = Some(hist());
        *s.interval.lock().unwrap_or_else(|e| e.into_inner()) = Some(hist());
        Arc::new(s)
    }

    pub fn error(&self, kind: &str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.chars().take(80).collect())
            .or_default() += 1;
    }

    pub fn record(&self, us: u64) {
        let us = us.clamp(1, 120_000_000);
        if let Some(h) = self
            .interval
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let _ = h.record(us);
        }
        if self.measuring.load(Ordering::Relaxed)
            && let Some(h) = self
                .latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
        {
            let _ = h.record(us);
        }
    }

    /// Takes the current second's histogram.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut g = self.interval.lock().unwrap_or_else(|e| e.into_inner());
        g.replace(hist()).unwrap_or_else(hist)
    }
}

/// Sorts an error into a kind for the report.
pub(crate) fn kind(e: &anyhow::Error) -> String {
    let s = e.to_string();
    let s = s.split(':').next().unwrap_or("error").trim();
    s.chars().take(60).collect()
}
