//! CPU and resident memory of Warren's processes during a run, from /proc,
//! and the harness's own apart (it is not Warren's cost).
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize)]
pub struct ProcessStats {
    pub name: String,
    pub pid: i32,
    pub samples: u32,
    pub cpu_avg_pct: f64,
    pub cpu_max_pct: f64,
    pub rss_max_bytes: u64,
    pub rss_last_bytes: u64,
    /// A Warren process (else the harness itself).
    pub warren: bool,
    /// CPU while the run was measured (percent of one core).
    pub cpu_measured_pct: f64,
}

/// `(cpu ticks, rss bytes)` of a process.
pub fn read(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let pages: u64 = f.get(21)?.parse().ok()?;
    Some((ticks, pages * 4096))
}

/// `name=PID` flags, or every process named `warren`.
pub fn targets(flags: &[String]) -> Vec<(String, i32)> {
    let mut out: Vec<(String, i32)> = flags
        .iter()
        .filter_map(|f| {
            let (n, p) = f.split_once('=')?;
            Some((n.to_string(), p.parse().ok()?))
        })
        .collect();
    if out.is_empty() {
        let me = std::process::id() as i32;
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "warren" && pid != me {
                    out.push((format!("warren ({pid})"), pid));
                }
            }
        }
    }
    out
}

pub struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<ProcessStats>>,
}

impl Sampler {
    pub fn start(flags: &[String], run: Arc<crate::Stats>) -> Sampler {
        let mut procs: Vec<(String, i32, bool)> = targets(flags)
            .into_iter()
            .map(|(n, p)| (n, p, true))
            .collect();
        procs.push((
            "harness (this process)".into(),
            std::process::id() as i32,
            false,
        ));
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        // USER_HZ: 100 on every Linux architecture Warren runs on.
        let hz = 100.0;
        let task = tokio::spawn(async move {
            let mut stats: Vec<ProcessStats> = procs
                .iter()
                .map(|(n, p, w)| ProcessStats {
                    name: n.clone(),
                    pid: *p,
                    samples: 0,
                    cpu_avg_pct: 0.0,
                    cpu_max_pct: 0.0,
                    rss_max_bytes: 0,
                    rss_last_bytes: 0,
                    warren: *w,
                    cpu_measured_pct: 0.0,
                })
                .collect();
            let mut prev: Vec<Option<(u64, Instant)>> = procs
                .iter()
                .map(|(_, p, _)| read(*p).map(|(t, _)| (t, Instant::now())))
                .collect();
            // CPU ticks and seconds inside the measured window, per process.
            let mut measured: Vec<(u64, f64)> = vec![(0, 0.0); procs.len()];
            let first = prev.clone();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = s2.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let measuring = run.measuring.load(Ordering::Relaxed);
                for (i, (_, pid, _)) in procs.iter().enumerate() {
                    let Some((ticks, rss)) = read(*pid) else {
                        continue;
                    };
                    let st = &mut stats[i];
                    st.samples += 1;
                    st.rss_last_bytes = rss;
                    st.rss_max_bytes = st.rss_max_bytes.max(rss);
                    if let Some((t0, at)) = prev[i] {
                        let pct =
                            (ticks.saturating_sub(t0)) as f64 / hz / at.elapsed().as_secs_f64()
                                * 100.0;
                        st.cpu_max_pct = st.cpu_max_pct.max(pct);
                        if measuring {
                            measured[i].0 += ticks.saturating_sub(t0);
                            measured[i].1 += at.elapsed().as_secs_f64();
                        }
                    }
                    prev[i] = Some((ticks, Instant::now()));
                }
            }
            for (i, (_, pid, _)) in procs.iter().enumerate() {
                if let (Some((t0, at)), Some((t1, _))) = (first[i], read(*pid)) {
                    stats[i].cpu_avg_pct =
                        (t1.saturating_sub(t0)) as f64 / hz / at.elapsed().as_secs_f64() * 100.0;
                }
                if measured[i].1 > 0.0 {
                    stats[i].cpu_measured_pct = measured[i].0 as f64 / hz / measured[i].1 * 100.0;
                }
            }
            stats
        });
        Sampler { stop, task }
    }

    pub async fn stop(self) -> Vec<ProcessStats> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// Resident memory of the sampled processes together, in bytes.
pub fn rss_sum(flags: &[String]) -> Option<u64> {
    let t = targets(flags);
    if t.is_empty() {
        return None;
    }
    Some(t.iter().filter_map(|(_, p)| read(*p)).map(|(_, r)| r).sum())
}
