//! The `sessions` scenario: new sessions at a steady rate, each created,
//! answering in a shell, then deleted; the latency is create → shell.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::terminal::{self, ECHO_COMMAND};
use super::{Run, Slots};
use crate::stats::kind;

pub(super) async fn run(
    run: &Run<'_>,
    slots: &Slots,
    docker: Option<&bollard::Docker>,
) -> anyhow::Result<()> {
    let (args, stats) = (run.args, &run.stats);
    let every = Duration::from_secs_f64(1.0 / args.session_rate.max(0.01));
    let warm_end = tokio::time::Instant::now() + Duration::from_secs(args.warmup);
    let end = warm_end + Duration::from_secs(args.duration);
    let mut js = tokio::task::JoinSet::new();
    let mut next = tokio::time::Instant::now();
    while next < end {
        tokio::time::sleep_until(next).await;
        stats
            .measuring
            .store(tokio::time::Instant::now() >= warm_end, Ordering::Relaxed);
        next += every;
        let (slots, stats, relay, stop) = (
            slots.clone(),
            stats.clone(),
            run.target.relay.clone(),
            run.stop.clone(),
        );
        let docker = docker.cloned();
        js.spawn(async move {
            let t0 = Instant::now();
            let r = async {
                let slot = slots.make().await?;
                let mut t =
                    terminal::open(&slot, &relay, docker.as_ref(), ECHO_COMMAND, &stats).await?;
                stats.terminals_opened.fetch_add(1, Ordering::Relaxed);
                terminal::wait_for(t.as_mut(), b"WARREN-READY", &stats, Duration::from_secs(60))
                    .await?;
                stats.record(t0.elapsed().as_micros() as u64);
                drop(t);
                slots.remove(slot).await
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                r = r => if let Err(e) = r { stats.error(&kind(&e)) },
            }
        });
    }
    stats.measuring.store(false, Ordering::Relaxed);
    while js.join_next().await.is_some() {}
    Ok(())
}
