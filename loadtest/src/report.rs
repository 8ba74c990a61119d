//! What a run found: JSON for machines, Markdown for people, SVG charts.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::sample::ProcessStats;
use crate::{Args, Stats, Target};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub terminals_opened: u64,
    pub terminals_failed: u64,
    pub keystrokes_sent: u64,
    pub keystrokes_echoed: u64,
    /// Sent and never echoed (their own count: exactly-once input keeps it
    /// at 0 through relay restarts).
    pub keystrokes_lost: u64,
    pub bytes_received: u64,
    pub sessions_created: u64,
    pub sessions_deleted: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Point {
    pub t_s: u64,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: crate::Scenario,
    /// `warren` or `direct` (docker exec -it).
    pub path: String,
    pub target: String,
    pub config: Value,
    pub counts: Counts,
    pub errors: BTreeMap<String, u64>,
    /// Echo round trip (or, for `sessions`, time to a shell that answers).
    pub latency: Latency,
    /// Distribution: (percentile, µs) pairs for the chart.
    pub distribution: Vec<(f64, u64)>,
    pub timeline: Vec<Point>,
    pub processes: Vec<ProcessStats>,
    /// Resident memory added per open terminal, in bytes, by the sampled
    /// processes (measured after ramp-up, before typing is measured).
    pub idle_rss_per_terminal: Option<f64>,
    pub measured_secs: f64,
    pub wall_secs: f64,
    /// Bytes per second received while measuring (throughput).
    pub throughput_bytes_per_sec: f64,
    /// Cores Warren's sampled processes used while measuring (the harness
    /// and the sessions' own commands apart).
    pub warren_cores: f64,
    /// Output delivered per core of Warren's CPU while measuring.
    pub output_bytes_per_warren_core: Option<f64>,
    /// Why the run ended early, if it did.
    pub aborted: Option<String>,
    /// Scenario-specific results (tunnel).
    pub extra: Value,
}

impl Report {
    pub fn new(args: &Args, target: &Target) -> Self {
        Report {
            scenario: args.scenario,
            path: if args.baseline.is_some() {
                "direct".into()
            } else {
                "warren".into()
            },
            target: target.control_url.clone(),
            config: serde_json::to_value(args).unwrap_or(Value::Null),
            counts: Counts::default(),
            errors: BTreeMap::new(),
            latency: Latency::default(),
            distribution: vec![],
            timeline: vec![],
            processes: vec![],
            idle_rss_per_terminal: None,
            measured_secs: 0.0,
            wall_secs: 0.0,
            throughput_bytes_per_sec: 0.0,
            warren_cores: 0.0,
            output_bytes_per_warren_core: None,
            aborted: None,
            extra: Value::Null,
        }
    }

    pub fn finish(
        &mut self,
        stats: &Stats,
        timeline: Vec<Point>,
        processes: Vec<ProcessStats>,
        wall: Duration,
        aborted: Option<String>,
    ) {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        self.counts = Counts {
            terminals_opened: l(&stats.terminals_opened),
            terminals_failed: l(&stats.terminals_failed),
            keystrokes_sent: l(&stats.keystrokes_sent),
            keystrokes_echoed: l(&stats.keystrokes_echoed),
            keystrokes_lost: l(&stats.keystrokes_lost),
            bytes_received: l(&stats.bytes_received),
            sessions_created: l(&stats.sessions_created),
            sessions_deleted: l(&stats.sessions_deleted),
        };
        self.errors = stats
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(h) = stats
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            self.latency = Latency::of(h);
            if !h.is_empty() {
                self.distribution = [
                    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
                ]
                .iter()
                .map(|p| (*p, h.value_at_percentile(*p)))
                .collect();
            }
        }
        if self.measured_secs > 0.0 {
            self.throughput_bytes_per_sec = l(&stats.measured_bytes) as f64 / self.measured_secs;
        }
        self.timeline = timeline;
        self.warren_cores = processes
            .iter()
            .filter(|p| p.warren)
            .map(|p| p.cpu_measured_pct / 100.0)
            .sum();
        self.output_bytes_per_warren_core = (self.throughput_bytes_per_sec > 0.0
            && self.warren_cores > 0.0)
            .then(|| self.throughput_bytes_per_sec / self.warren_cores);
        self.processes = processes;
        self.wall_secs = wall.as_secs_f64();
        self.aborted = aborted;
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("latency-over-time.svg"), self.svg_timeline())?;
        std::fs::write(
            dir.join("latency-distribution.svg"),
            self.svg_distribution(),
        )?;
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Warren load test: {:?} ({})\n",
            self.scenario, self.path
        );
        if let Some(a) = &self.aborted {
            let _ = writeln!(
                s,
                "**The run ended early: {a}.** The figures below are partial.\n"
            );
        }
        let _ = writeln!(
            s,
            "Target: {}; wall time {:.1} s, measured {:.1} s.\n",
            self.target, self.wall_secs, self.measured_secs
        );
        let c = &self.counts;
        let _ = writeln!(s, "| count | value |\n|---|---|");
        for (k, v) in [
            ("terminals opened", c.terminals_opened),
            ("terminals failed", c.terminals_failed),
            ("keystrokes sent", c.keystrokes_sent),
            ("keystrokes echoed", c.keystrokes_echoed),
            ("keystrokes lost", c.keystrokes_lost),
            ("bytes received", c.bytes_received),
            ("sessions created", c.sessions_created),
            ("sessions deleted", c.sessions_deleted),
        ] {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let l = &self.latency;
        let what = match self.scenario {
            crate::Scenario::Sessions => "session start (create → shell answers)",
            crate::Scenario::Tunnel => "tunnel stream open (header + reply)",
            _ => "keystroke echo round trip",
        };
        let _ = writeln!(
            s,
            "\n**{what}** over {} samples: p50 {}, p90 {}, p99 {}, p99.9 {}, max {}.\n",
            l.count,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us)
        );
        if self.throughput_bytes_per_sec > 0.0 {
            let _ = writeln!(
                s,
                "Delivered output: {:.1} MB/s.\n",
                self.throughput_bytes_per_sec / 1e6
            );
        }
        if let Some(per) = self.output_bytes_per_warren_core {
            let _ = writeln!(
                s,
                "Warren's processes used {:.2} cores while measured: {:.1} MB/s of output per core (the harness and the sessions' commands apart).\n",
                self.warren_cores,
                per / 1e6
            );
        }
        if let Some(r) = self.idle_rss_per_terminal {
            let _ = writeln!(
                s,
                "Resident memory per open terminal (sampled processes): {:.1} KB.\n",
                r / 1024.0
            );
        }
        if !self.processes.is_empty() {
            let _ = writeln!(
                s,
                "| process | pid | CPU measured | CPU avg | CPU max | RSS max |\n|---|---|---|---|---|---|"
            );
            for p in &self.processes {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} % | {:.0} % | {:.0} % | {:.1} MB |",
                    p.name,
                    p.pid,
                    p.cpu_measured_pct,
                    p.cpu_avg_pct,
                    p.cpu_max_pct,
                    p.rss_max_bytes as f64 / 1e6
                );
            }
            let _ = writeln!(s);
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "| error | count |\n|---|---|");
            for (k, v) in &self.errors {
                let _ = writeln!(s, "| {k} | {v} |");
            }
            let _ = writeln!(s);
        }
        if !self.extra.is_null() {
            let _ = writeln!(
                s,
                "```json\n{}\n```",
                serde_json::to_string_pretty(&self.extra).unwrap_or_default()
            );
        }
        s
    }

    fn svg_timeline(&self) -> String {
        // One quantile's points (seconds, ms), over the seconds with samples.
        let points = |us: fn(&Point) -> u64| -> Vec<(f64, f64)> {
            self.timeline
                .iter()
                .filter(|p| p.count > 0)
                .map(|p| (p.t_s as f64, us(p) as f64 / 1000.0))
                .collect()
        };
        svg_chart(
            "Latency over time (ms, per second)",
            "seconds since start",
            &[
                ("p50", "#2b6cb0", points(|p| p.p50_us)),
                ("p99", "#c53030", points(|p| p.p99_us)),
            ],
        )
    }

    fn svg_distribution(&self) -> String {
        // x: percentile on a log scale of 1/(1-p): 0, 90, 99, 99.9, ...
        let pts: Vec<(f64, f64)> = self
            .distribution
            .iter()
            .filter(|(p, _)| *p < 100.0)
            .map(|(p, v)| ((1.0 / (1.0 - p / 100.0)).log10(), *v as f64 / 1000.0))
            .collect();
        svg_chart(
            "Latency distribution (ms)",
            "percentile (log scale: 0, 90, 99, 99.9, 99.99)",
            &[("latency", "#2f855a", pts)],
        )
    }
}

/// A plain line chart, no dependencies.
/// A named, coloured line: (name, colour, points).
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn svg_chart(title: &str, xlabel: &str, series: &[Series<'_>]) -> String {
    let (w, h, m) = (720.0, 360.0, 50.0);
    let all: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.2.iter()).collect();
    let xmax = all.iter().map(|p| p.0).fold(1e-9, f64::max);
    let ymax = all.iter().map(|p| p.1).fold(1e-9, f64::max) * 1.1;
    let sx = |x: f64| m + x / xmax * (w - 2.0 * m);
    let sy = |y: f64| h - m - y / ymax * (h - 2.0 * m);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{m}" y="20" font-size="14">{title}</text><line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/><text x="{}" y="{}">{xlabel}</text>"#,
        h - m,
        w - m,
        h - m,
        h - m,
        w / 2.0 - 80.0,
        h - 15.0
    );
    for i in 0..=4 {
        let y = ymax * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<text x="5" y="{:.0}">{y:.2}</text><line x1="{m}" y1="{:.0}" x2="{}" y2="{:.0}" stroke="#eee"/>"##,
            sy(y) + 4.0,
            sy(y),
            w - m,
            sy(y)
        );
    }
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><text x="{}" y="40" fill="{color}">{name}</text>"##,
            path.join(" "),
            w - m - 120.0 + i as f64 * 50.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Samples the current second's histogram into the timeline until `stop`.
pub fn timeline(stats: Arc<Stats>, stop: CancellationToken) -> tokio::task::JoinHandle<Vec<Point>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut t = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return out,
                _ = tick.tick() => {}
            }
            t += 1;
            let h = stats.take_interval();
            out.push(Point {
                t_s: t,
                count: h.len(),
                p50_us: if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(0.5)
                },
                p99_us: if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(0.99)
                },
            });
        }
    })
}

/// A live progress bar: rate, errors and the last second's p99.
pub fn progress(
    args: &Args,
    stats: Arc<Stats>,
    stop: CancellationToken,
    total: u64,
) -> Option<tokio::task::JoinHandle<()>> {
    if args.quiet {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => { bar.finish_and_clear(); return; }
                _ = tick.tick() => {}
            }
            let echoed = stats.keystrokes_echoed.load(Ordering::Relaxed);
            let errors: u64 = stats
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .sum();
            let p99 = stats
                .interval
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(0.99))
                .unwrap_or(0);
            bar.inc(1);
            bar.set_message(format!(
                "terminals {} | {} echoes/s | p99 {:.2} ms | {} MB in | errors {}{}",
                stats.terminals_opened.load(Ordering::Relaxed),
                echoed - last,
                p99 as f64 / 1000.0,
                stats.bytes_received.load(Ordering::Relaxed) / 1_000_000,
                errors,
                if stats.measuring.load(Ordering::Relaxed) {
                    " | measuring"
                } else {
                    ""
                }
            ));
            last = echoed;
        }
    }))
}
