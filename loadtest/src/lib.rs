//! `warren loadtest`: the bundled harness (see `docs/loadtest.md`).
//!
//! Scenarios: `terminals` (echo round trip of typed keys), `throughput`
//! (terminals printing flat out or at a set rate, with echo probes),
//! `sessions` (create → shell echoes → delete), `ssh` (`terminals` over
//! SSH) and `tunnel` (raw stream throughput and open rate, in-process).
//! Every session the run created is deleted at the end, also on Ctrl-C, a
//! hard stop or an error; the report (JSON, Markdown, SVG) is written in
//! every case and says why a run ended early.
#![forbid(unsafe_code)]

mod api;
mod args;
mod baseline;
pub mod conn;
pub mod report;
pub mod sample;
mod scenario;
mod stats;
mod target;
pub mod tunnel;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use crate::api::Api;
pub use crate::args::{Args, Baseline, Scenario};
pub use crate::report::Report;
pub use crate::scenario::terminal::ECHO_COMMAND;
pub use crate::stats::Stats;
pub use crate::target::Target;

/// Runs one scenario against `target`; the report is written to `args.out`
/// whatever happens.
// Boxed here, and not an `async fn`, so that the harness's async code (every
// future it awaits and spawns) is compiled once, in this crate, which
// builds beside the others: an `async fn` awaited from another crate is
// compiled in that crate, and the `warren` binary's library compiled all
// of it again, alone at the end of the build (docs/benchmarks.md, "A
// fresh clone to a terminal").
pub fn run<'a>(
    args: &'a Args,
    target: &'a Target,
    interrupt: CancellationToken,
) -> futures_util::future::BoxFuture<'a, anyhow::Result<Report>> {
    Box::pin(run_scenario(args, target, interrupt))
}

async fn run_scenario(
    args: &Args,
    target: &Target,
    interrupt: CancellationToken,
) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let stats = Stats::new();
    let started = Instant::now();
    let total = args.ramp_up + args.warmup + args.duration;
    let hard = Duration::from_secs(args.hard_stop.unwrap_or(total + 120));
    let sampler = sample::Sampler::start(&args.pids, stats.clone());
    let mut report = Report::new(args, target);

    let stop = CancellationToken::new();
    let progress = report::progress(args, stats.clone(), stop.clone(), total);
    let timeline = report::timeline(stats.clone(), stop.clone());

    // Sessions the tenant had before: a create that timed out on our side may
    // still start later, and is found at clean-up as a session not in here.
    let api = Arc::new(Api::new(target)?);
    let before: Option<Vec<String>> =
        if args.baseline.is_none() && args.scenario != Scenario::Tunnel {
            api.live().await.ok()
        } else {
            None
        };
    let run = scenario::Run {
        args,
        target,
        api: api.clone(),
        stats: stats.clone(),
        made: Default::default(),
        stop: stop.clone(),
    };
    let body = run.body(&mut report);
    let outcome = tokio::select! {
        r = body => r,
        _ = interrupt.cancelled() => Err(anyhow::anyhow!("interrupted (Ctrl-C)")),
        _ = tokio::time::sleep(hard) => Err(anyhow::anyhow!("hard stop after {} s", hard.as_secs())),
    };
    stop.cancel();
    stats.measuring.store(false, Ordering::Relaxed);

    // Clean up everything this run made, whatever happened.
    run.clean_up(before.as_deref()).await;
    let timeline = timeline.await.unwrap_or_default();
    if let Some(p) = progress {
        let _ = p.await;
    }
    report.finish(
        &stats,
        timeline,
        sampler.stop().await,
        started.elapsed(),
        outcome.as_ref().err().map(|e| e.to_string()),
    );
    report.write(&args.out)?;
    match outcome {
        Ok(()) => Ok(report),
        Err(e) => Err(e.context(format!("partial report written to {}", args.out.display()))),
    }
}
