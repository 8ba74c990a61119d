//! The scenarios: what a run does between setting up and cleaning up.
//! [`Run`] holds what every scenario shares; `terminals`, `throughput` and
//! `ssh` open terminals on a fixed set of sessions ([`Run::body`]),
//! `sessions` churns them ([`churn`]), `tunnel` runs in-process.
mod churn;
pub mod terminal;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::report::Report;
use crate::stats::{Stats, kind};
use crate::{Api, Args, Baseline, Scenario, Target, baseline, sample, tunnel};
use terminal::{ECHO_COMMAND, Slot};

/// Everything one run shares between its tasks.
pub(crate) struct Run<'a> {
    pub args: &'a Args,
    pub target: &'a Target,
    pub api: Arc<Api>,
    pub stats: Arc<Stats>,
    /// What the run made, deleted at the end whatever happens.
    pub made: Made,
    /// Stops every terminal and session task.
    pub stop: CancellationToken,
}

/// The sessions and (direct baseline) containers a run made and has not
/// removed yet.
#[derive(Clone, Default)]
pub(crate) struct Made {
    sessions: Arc<Mutex<Vec<String>>>,
    containers: Arc<Mutex<Vec<String>>>,
}

fn locked(v: &Mutex<Vec<String>>) -> std::sync::MutexGuard<'_, Vec<String>> {
    v.lock().unwrap_or_else(|e| e.into_inner())
}

impl Made {
    pub fn sessions(&self) -> Vec<String> {
        locked(&self.sessions).clone()
    }

    pub fn containers(&self) -> Vec<String> {
        locked(&self.containers).clone()
    }
}

/// Makes and removes session slots: a session through the API, or a bare
/// container for the direct baseline; each recorded in [`Made`] while it
/// exists.
#[derive(Clone)]
pub(crate) struct Slots {
    api: Arc<Api>,
    stats: Arc<Stats>,
    made: Made,
    image: String,
    memory_mb: u64,
    direct: bool,
}

impl Slots {
    pub async fn make(&self) -> anyhow::Result<Slot> {
        if self.direct {
            let c = baseline::docker_run(&self.image).await?;
            locked(&self.made.containers).push(c.clone());
            Ok(Slot::Direct { container: c })
        } else {
            let (id, token) = self.api.create(&self.image, self.memory_mb).await?;
            locked(&self.made.sessions).push(id.clone());
            self.stats.sessions_created.fetch_add(1, Ordering::Relaxed);
            Ok(Slot::Relay { id, token })
        }
    }

    pub async fn remove(&self, slot: Slot) -> anyhow::Result<()> {
        match slot {
            Slot::Relay { id, .. } => {
                self.api.delete(&id).await?;
                locked(&self.made.sessions).retain(|x| *x != id);
                self.stats.sessions_deleted.fetch_add(1, Ordering::Relaxed);
            }
            Slot::Direct { container } => {
                baseline::remove(std::slice::from_ref(&container)).await;
                locked(&self.made.containers).retain(|x| *x != container);
            }
            Slot::Ssh { .. } => {}
        }
        Ok(())
    }
}

impl Run<'_> {
    fn slots(&self, direct: bool) -> Slots {
        Slots {
            api: self.api.clone(),
            stats: self.stats.clone(),
            made: self.made.clone(),
            image: self.args.image.clone(),
            memory_mb: self.args.memory_mb,
            direct,
        }
    }

    /// Deletes every session the run made (and any that a create which
    /// failed on our side started later: live now, not in `before`) and
    /// removes the baseline's containers.
    pub async fn clean_up(&self, before: Option<&[String]>) {
        let mut ids: Vec<String> = self.made.sessions();
        if let Some(before) = before
            && let Ok(now) = self.api.live().await
        {
            for id in now {
                if !before.contains(&id) && !ids.contains(&id) {
                    self.stats
                        .error("a create that failed on our side started later (deleted)");
                    ids.push(id);
                }
            }
        }
        let mut js = tokio::task::JoinSet::new();
        for id in ids {
            let (api, stats) = (self.api.clone(), self.stats.clone());
            js.spawn(async move {
                for attempt in 0..3 {
                    match api.delete(&id).await {
                        Ok(()) => {
                            stats.sessions_deleted.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(e) if attempt == 2 => stats.error(&format!("cleanup: {}", kind(&e))),
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            });
        }
        while js.join_next().await.is_some() {}
        baseline::remove(&self.made.containers()).await;
    }

    /// The scenario itself, until its measured window ends.
    pub async fn body(&self, report: &mut Report) -> anyhow::Result<()> {
        let args = self.args;
        if args.scenario == Scenario::Tunnel {
            let r = tunnel::run(args, &self.stats).await?;
            report.extra = r;
            return Ok(());
        }
        if args.sessions == 0 || args.sessions > 10_000 || args.terminals > 1000 {
            bail!("--sessions must be 1..=10000 and --terminals at most 1000");
        }
        let direct = args.baseline == Some(Baseline::Direct);
        let docker = match direct {
            true => Some(baseline::engine().await?),
            false => None,
        };
        if !direct {
            self.api.check().await?;
        }
        let slots = self.slots(direct);
        if args.scenario == Scenario::Sessions {
            return churn::run(self, &slots, docker.as_ref()).await;
        }
        let made = self.make_slots(&slots).await?;
        let plan = self.plan(made)?;
        self.terminals(plan, docker, report).await
    }

    /// Sessions (or containers) first, a few at a time.
    async fn make_slots(&self, slots: &Slots) -> anyhow::Result<Vec<Slot>> {
        let mut made = Vec::new();
        let few = Arc::new(tokio::sync::Semaphore::new(8));
        let mut js = tokio::task::JoinSet::new();
        for _ in 0..self.args.sessions {
            let (few, slots) = (few.clone(), slots.clone());
            js.spawn(async move {
                let _p = few.acquire().await;
                slots.make().await
            });
        }
        while let Some(r) = js.join_next().await {
            made.push(r.context("session task")??);
        }
        Ok(made)
    }

    /// The terminals to open, each on its slot and whether it prints (else
    /// it types).
    fn plan(&self, mut slots: Vec<Slot>) -> anyhow::Result<Vec<(Slot, bool)>> {
        let args = self.args;
        if args.scenario == Scenario::Ssh {
            let addr = self
                .target
                .ssh
                .context("the ssh scenario needs --ssh HOST:PORT")?;
            slots = slots
                .into_iter()
                .map(|p| match p {
                    Slot::Relay { id, token } => Slot::Ssh { addr, id, token },
                    other => other,
                })
                .collect();
        }
        let mut plan = Vec::new();
        for p in &slots {
            if args.scenario == Scenario::Throughput {
                for _ in 0..args.terminals {
                    plan.push((p.clone(), true));
                }
                for _ in 0..args.probes {
                    plan.push((p.clone(), false));
                }
            } else {
                for _ in 0..args.terminals {
                    plan.push((p.clone(), false));
                }
            }
        }
        Ok(plan)
    }

    /// Opens the planned terminals spread over the ramp-up, warms up, then
    /// measures for the run's duration.
    async fn terminals(
        &self,
        plan: Vec<(Slot, bool)>,
        docker: Option<bollard::Docker>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let (args, stats) = (self.args, &self.stats);
        let n = plan.len().max(1);
        let rss_before = sample::rss_sum(&args.pids);
        let ramp = Duration::from_secs(args.ramp_up);
        let t0 = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let print_cmd = terminal::print_command(args.output_rate);
        let opening = Arc::new(tokio::sync::Semaphore::new(64));
        for (i, (slot, prints)) in plan.into_iter().enumerate() {
            let at = t0 + ramp.mul_f64(i as f64 / n as f64);
            let (stats, stop, relay, docker) = (
                stats.clone(),
                self.stop.clone(),
                self.target.relay.clone(),
                docker.clone(),
            );
            let cmd = if prints {
                print_cmd.clone()
            } else {
                ECHO_COMMAND.to_string()
            };
            let rate = args.rate;
            let opening = opening.clone();
            tasks.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(at) => {}
                }
                let opened = async {
                    let _p = opening.acquire().await;
                    let mut t =
                        terminal::open(&slot, &relay, docker.as_ref(), &cmd, &stats).await?;
                    terminal::wait_for(
                        t.as_mut(),
                        b"WARREN-READY",
                        &stats,
                        Duration::from_secs(30),
                    )
                    .await?;
                    Ok::<_, anyhow::Error>(t)
                }
                .await;
                let t = match opened {
                    Ok(t) => t,
                    Err(e) => {
                        stats.terminals_failed.fetch_add(1, Ordering::Relaxed);
                        stats.error(&format!("open: {}", kind(&e)));
                        return;
                    }
                };
                stats.terminals_opened.fetch_add(1, Ordering::Relaxed);
                if prints {
                    terminal::printer(t, stats, stop).await
                } else {
                    terminal::typist(t, rate, stats, stop).await
                }
            });
        }
        // Ramp-up, warm-up, then the measured window.
        tokio::time::sleep_until(t0 + ramp + Duration::from_secs(args.warmup)).await;
        if stats.terminals_opened.load(Ordering::Relaxed) == 0 {
            bail!("no terminal could be opened (see errors)");
        }
        // Memory the open (and so far idle) terminals hold, before typing starts.
        let opened = stats.terminals_opened.load(Ordering::Relaxed);
        if let (Some(a), Some(b)) = (rss_before, sample::rss_sum(&args.pids))
            && opened > 0
            && args.baseline.is_none()
        {
            report.idle_rss_per_terminal = Some((b as f64 - a as f64) / opened as f64);
        }
        stats.measuring.store(true, Ordering::Relaxed);
        let measured = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.duration)).await;
        report.measured_secs = measured.elapsed().as_secs_f64();
        stats.measuring.store(false, Ordering::Relaxed);
        self.stop.cancel();
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: Args,
    }

    fn plan(line: &str, ssh: Option<std::net::SocketAddr>) -> anyhow::Result<Vec<(Slot, bool)>> {
        let args = Cmd::parse_from(std::iter::once("loadtest").chain(line.split_whitespace())).args;
        let target = Target {
            control_url: "http://127.0.0.1:7000".into(),
            api_key: "key".into(),
            relay: crate::conn::RelayTarget {
                addr: ([127, 0, 0, 1], 8080).into(),
                domain: "warren.localhost".into(),
                tls: None,
            },
            ssh,
            control_ca: None,
        };
        let run = Run {
            args: &args,
            target: &target,
            api: Arc::new(Api::new(&target)?),
            stats: Stats::new(),
            made: Made::default(),
            stop: CancellationToken::new(),
        };
        let slots = (0..args.sessions)
            .map(|i| Slot::Relay {
                id: format!("s{i}"),
                token: "t".into(),
            })
            .collect();
        run.plan(slots)
    }

    #[test]
    fn throughput_plans_printers_and_probes_per_session() {
        let p = plan("throughput --sessions 3 --terminals 2 --probes 1", None).unwrap();
        assert_eq!(p.len(), 9);
        assert_eq!(p.iter().filter(|(_, prints)| *prints).count(), 6);
    }

    #[test]
    fn terminals_plan_typists_only() {
        let p = plan("terminals --sessions 2 --terminals 3", None).unwrap();
        assert_eq!(p.len(), 6);
        assert!(
            p.iter()
                .all(|(s, prints)| !prints && matches!(s, Slot::Relay { .. }))
        );
    }

    #[test]
    fn ssh_needs_an_address_and_goes_over_it() {
        let e = plan("ssh --sessions 1", None).err().unwrap();
        assert!(e.to_string().contains("--ssh"), "{e}");
        let addr = ([127, 0, 0, 1], 2222).into();
        let p = plan("ssh --sessions 1 --terminals 2", Some(addr)).unwrap();
        assert!(
            p.iter()
                .all(|(s, _)| matches!(s, Slot::Ssh { addr: a, .. } if *a == addr))
        );
    }
}
