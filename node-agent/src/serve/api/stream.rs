//! A sandbox API stream from a relay: bounded per session, then served.
//! `Snapshot` streams (the relay opens them for control's own scope only)
//! get the commit route; `Api` streams (exec, files) never do.
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tracing::warn;
use warren_tunnel::client::PendingStream;
use warren_tunnel::proto::StreamKind;

use super::{SnapshotError, SnapshotJob};
use crate::{Agent, RuntimeError, SessionInfo, now_ms};

/// Sandbox API requests one session may have in flight at once: each holds
/// up to 2 MiB of output in the agent, which every tenant shares.
pub const MAX_PER_SESSION: usize = 8;

impl Agent {
    pub(crate) async fn serve_api_stream(
        &self,
        stream: PendingStream,
        session: SessionInfo,
        kind: StreamKind,
    ) {
        let label = if kind == StreamKind::Snapshot {
            "snapshot"
        } else {
            "api"
        };
        let slots = self
            .api_slots
            .entry(session.id.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_PER_SESSION)))
            .clone();
        let Ok(mut s) = stream.accept().await else {
            return;
        };
        let Ok(_slot) = slots.try_acquire_owned() else {
            self.metrics
                .streams
                .with_label_values(&[label, "busy"])
                .inc();
            let _ = s.write_all(super::busy_answer().as_bytes()).await;
            let _ = s.shutdown().await;
            return;
        };
        self.metrics.streams.with_label_values(&[label, "ok"]).inc();
        // A command run through the API is activity, as typing is.
        self.activity(&session.id)
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        // Commits need the engine, which the request's server does not
        // hold: it hands them here and waits.
        let (jobs, mut commits) = tokio::sync::mpsc::channel::<SnapshotJob>(1);
        let jobs = (kind == StreamKind::Snapshot).then_some(jobs);
        let api = super::serve(s, session.init.clone(), jobs);
        tokio::pin!(api);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = &mut api => break,
                Some(job) = commits.recv() => {
                    let r = self
                        .runtime
                        .commit_snapshot(&session, &job.image, job.version)
                        .await
                        .map_err(|e| match e {
                            RuntimeError::Invalid(m) => SnapshotError::Refused(m),
                            other => {
                                warn!(session = %session.id, "snapshot failed: {other}");
                                SnapshotError::Failed
                            }
                        });
                    let _ = job.reply.send(r);
                }
            }
        }
    }
}
