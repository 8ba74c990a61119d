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

pub mod conn;
pub mod report;
pub mod sample;
pub mod tunnel;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

use tokio_util::sync::CancellationToken;

use crate::conn::{RelayTarget, Term};
pub use crate::report::Report;

/// Keys typed by the harness: one outstanding at a time per terminal, each
/// found again in the echo, so its round trip is exact.
const KEYS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// The terminals run `cat` on a raw TTY: every key comes back once.
pub const ECHO_COMMAND: &str = "stty raw -echo; echo WARREN-READY; exec cat";
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Terminals,
    Throughput,
    Sessions,
    Ssh,
    Tunnel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// The same terminals straight into `docker exec -it` (Docker's API
    /// with a TTY, as the CLI uses it), no Warren in the path.
    Direct,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Args {
    pub scenario: Scenario,
    /// Sessions to create (terminals, throughput, ssh).
    #[arg(long, default_value_t = 4)]
    pub sessions: usize,
    /// Terminals per session.
    #[arg(long, default_value_t = 2)]
    pub terminals: usize,
    /// Keystrokes per second per terminal.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// throughput: bytes per second each printing terminal writes (0: flat out).
    #[arg(long, default_value_t = 0)]
    pub output_rate: u64,
    /// throughput: echo probes per session beside the printing terminals.
    #[arg(long, default_value_t = 1)]
    pub probes: usize,
    /// sessions: new sessions per second.
    #[arg(long, default_value_t = 1.0)]
    pub session_rate: f64,
    /// Seconds measured (after ramp-up and warm-up).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds over which terminals are opened.
    #[arg(long, default_value_t = 5)]
    pub ramp_up: u64,
    /// Seconds run but not measured, after ramp-up.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// The run ends here whatever happens (default: everything above + 120 s).
    #[arg(long)]
    pub hard_stop: Option<u64>,
    #[arg(long, default_value = "warren/session:mini")]
    pub image: String,
    #[arg(long, default_value_t = 64)]
    pub memory_mb: u64,
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
    /// Where report.json, report.md and the SVG charts go.
    #[arg(long, default_value = "loadtest-report")]
    pub out: PathBuf,
    /// Processes to sample (`name=PID`, repeatable); default: every process
    /// called `warren` on this machine.
    #[arg(long = "pid")]
    pub pids: Vec<String>,
    /// No progress bar (logs and tests).
    #[arg(long)]
    pub quiet: bool,
}

/// Where the deployment under test is.
#[derive(Clone)]
pub struct Target {
    pub control_url: String,
    pub api_key: String,
    pub relay: RelayTarget,
    pub ssh: Option<SocketAddr>,
}

impl Target {
    /// From flags, else `up.json` (as `warren up` writes it).
    pub fn resolve(
        control_url: Option<String>,
        api_key: Option<String>,
        relay: Option<String>,
        ca: Option<PathBuf>,
        ssh: Option<String>,
        up_json: &std::path::Path,
    ) -> anyhow::Result<Target> {
        let up = warren_proto::api::UpFile::read(up_json).map_err(|e| anyhow::anyhow!(e))?;
        let control_url = control_url
            .or_else(|| up.as_ref().map(|u| u.control_url.clone()))
            .context("no control URL: pass --control-url or run `warren up` here")?;
        let api_key = api_key
            .or_else(|| up.as_ref().map(|u| u.admin_api_key.clone()))
            .context("no API key: pass --api-key or run `warren up` here")?;
        // The relay URL: https://DOMAIN:PORT (with --ca) or http://DOMAIN:PORT.
        let relay_url = relay
            .or_else(|| up.as_ref().map(|u| u.relay_http_url.clone()))
            .context("no relay: pass --relay https://DOMAIN:PORT")?;
        let u = url::Url::parse(&relay_url).with_context(|| format!("--relay {relay_url}"))?;
        let domain = u.host_str().context("--relay needs a host")?.to_string();
        let port = u.port_or_known_default().context("--relay needs a port")?;
        // Names under the domain are the relay's; connect by its address.
        let addr = if domain == "localhost" || domain.ends_with(".localhost") {
            SocketAddr::from(([127, 0, 0, 1], port))
        } else {
            use std::net::ToSocketAddrs;
            (domain.as_str(), port)
                .to_socket_addrs()?
                .next()
                .context("the relay's name does not resolve")?
        };
        let tls = match u.scheme() {
            "https" => {
                let ca = ca
                    .or_else(|| up.as_ref().map(|u| u.ca_cert.clone()))
                    .context("https relay: pass --ca FILE")?;
                let pem =
                    std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
                Some(RelayTarget::tls_config(&pem)?)
            }
            "http" => None,
            s => bail!("--relay must be http:// or https://, not {s}://"),
        };
        let ssh = ssh
            .or_else(|| up.as_ref().map(|u| u.relay_ssh.clone()))
            .map(|s| {
                use std::net::ToSocketAddrs;
                s.to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.find(|a| a.is_ipv4()))
                    .with_context(|| format!("ssh address {s} does not resolve"))
            })
            .transpose()?;
        Ok(Target {
            control_url: control_url.trim_end_matches('/').into(),
            api_key,
            relay: RelayTarget { addr, domain, tls },
            ssh,
        })
    }
}

/// Counts and histograms a run fills.
#[derive(Default)]
pub struct Stats {
    pub measuring: AtomicBool,
    pub terminals_opened: AtomicU64,
    pub terminals_failed: AtomicU64,
    pub keystrokes_sent: AtomicU64,
    pub keystrokes_echoed: AtomicU64,
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
fn kind(e: &anyhow::Error) -> String {
    let s = e.to_string();
    let s = s.split(':').next().unwrap_or("error").trim();
    s.chars().take(60).collect()
}

/// The control plane as the harness uses it (the shared API client).
pub struct Api {
    client: warren_client::Client,
}

impl Api {
    pub fn new(t: &Target) -> anyhow::Result<Api> {
        Ok(Api {
            client: warren_client::Client::new(
                &t.control_url,
                &t.api_key,
                Duration::from_secs(120),
            )?,
        })
    }

    pub async fn create(&self, image: &str, memory_mb: u64) -> anyhow::Result<(String, String)> {
        let spec = warren_proto::api::CreateSession {
            image: Some(image.into()),
            memory_mb: Some(memory_mb as i64),
            ttl_seconds: Some(7200),
            ..Default::default()
        };
        let s = self
            .client
            .create_session(&spec)
            .await
            .map_err(|e| anyhow::anyhow!("create session: {e}"))?;
        Ok((s.id, s.token.unwrap_or_default()))
    }

    pub async fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.client
            .delete_session(id)
            .await
            .map_err(|e| anyhow::anyhow!("delete {id}: {e}"))
    }

    /// Ids of the tenant's sessions that are not stopped.
    pub async fn live(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .client
            .sessions()
            .await?
            .into_iter()
            .filter(|s| s.status.is_live())
            .map(|s| s.id)
            .collect())
    }

    /// Checks the key before anything is created.
    pub async fn check(&self) -> anyhow::Result<()> {
        match self.client.sessions().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.status(), Some(401 | 403)) => {
                bail!("the control plane refused the API key")
            }
            Err(warren_client::Error::Unreachable { base, source }) => {
                bail!("the control plane at {base} does not answer: {source}")
            }
            Err(e) => bail!("the control plane answered {e}"),
        }
    }
}

/// How a terminal is opened for one session slot.
#[derive(Clone)]
enum Path {
    Relay {
        id: String,
        token: String,
    },
    Ssh {
        addr: SocketAddr,
        id: String,
        token: String,
    },
    Direct {
        container: String,
    },
}

async fn open(
    path: &Path,
    relay: &RelayTarget,
    docker: Option<&bollard::Docker>,
    command: &str,
    stats: &Arc<Stats>,
) -> anyhow::Result<Box<dyn Term>> {
    match path {
        Path::Relay { id, token } => {
            // Every drop shows in the report, and every resume (the
            // terminal went on exactly where it was).
            let stats = stats.clone();
            let on_drop: conn::OnDrop = Arc::new(move |what| stats.error(what));
            conn::open_ws(relay, id, token, Some(command), Some(on_drop)).await
        }
        Path::Ssh { addr, id, token } => conn::open_ssh(*addr, id, token, command).await,
        Path::Direct { container } => {
            conn::open_exec(
                docker.context("no Docker for the direct baseline")?,
                container,
                command,
            )
            .await
        }
    }
}

/// Waits for `needle` in the output.
async fn wait_for(
    t: &mut dyn Term,
    needle: &[u8],
    stats: &Stats,
    within: Duration,
) -> anyhow::Result<()> {
    let mut seen: Vec<u8> = Vec::new();
    tokio::time::timeout(within, async {
        loop {
            match t.recv().await? {
                Some(b) => {
                    stats
                        .bytes_received
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    seen.extend_from_slice(&b);
                    if seen.windows(needle.len()).any(|w| w == needle) {
                        return Ok(());
                    }
                    if seen.len() > 65536 {
                        seen.drain(..seen.len() - needle.len());
                    }
                }
                None => bail!("terminal closed"),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("timeout waiting for output"))?
}

/// One typing terminal until `stop`.
async fn typist(mut t: Box<dyn Term>, rate: f64, stats: Arc<Stats>, stop: CancellationToken) {
    let every = Duration::from_secs_f64(1.0 / rate.max(0.01));
    // Spread terminals' phases so they do not type in step.
    let mut next = tokio::time::Instant::now() + every.mul_f64(rand::random::<f64>());
    let mut i = rand::random::<u32>() as usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next += every;
        let key = [KEYS[i % KEYS.len()]];
        i += 1;
        let t0 = Instant::now();
        stats.keystrokes_sent.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = t.send(&key).await {
            stats.error(&kind(&e));
            return;
        }
        let got = tokio::select! {
            _ = stop.cancelled() => return,
            r = wait_for(t.as_mut(), &key, &stats, ECHO_TIMEOUT) => r,
        };
        match got {
            Ok(()) => {
                stats.keystrokes_echoed.fetch_add(1, Ordering::Relaxed);
                stats.record(t0.elapsed().as_micros() as u64);
            }
            Err(e) => {
                stats.error(&kind(&e));
                return;
            }
        }
        if tokio::time::Instant::now() > next {
            next = tokio::time::Instant::now(); // fell behind: no burst
        }
    }
}

/// One printing terminal until `stop`: counts what arrives.
async fn printer(mut t: Box<dyn Term>, stats: Arc<Stats>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = t.recv() => match r {
                Ok(Some(b)) => {
                    stats.bytes_received.fetch_add(b.len() as u64, Ordering::Relaxed);
                    if stats.measuring.load(Ordering::Relaxed) {
                        stats.measured_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                }
                Ok(None) => { stats.error("terminal closed"); return; }
                Err(e) => { stats.error(&kind(&e)); return; }
            }
        }
    }
}

fn print_command(rate: u64) -> String {
    if rate == 0 {
        "stty raw -echo; echo WARREN-READY; exec yes warren-load-test-output-line-0123456789".into()
    } else {
        // A tenth of the rate ten times a second, with shell builtins only
        // (printf, and read -t as the timer: nobody types into a printer),
        // so thousands of printers do not turn into thousands of forks.
        let block = (rate / 10).clamp(1, 1 << 20);
        format!(
            "stty raw -echo; s=$(head -c {block} /dev/zero | tr '\\0' x); echo WARREN-READY; while :; do printf %s \"$s\"; read -t 0.1 _w; done"
        )
    }
}

/// Runs one scenario against `target`; the report is written to `args.out`
/// whatever happens.
pub async fn run(
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
    let sampler = sample::Sampler::start(&args.pids);
    let mut report = Report::new(args, target);

    let created: Arc<Mutex<Vec<String>>> = Arc::default();
    let containers: Arc<Mutex<Vec<String>>> = Arc::default();
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
    let body = run_body(
        args,
        target,
        &api,
        &stats,
        &created,
        &containers,
        &stop,
        &mut report,
    );
    let outcome = tokio::select! {
        r = body => r,
        _ = interrupt.cancelled() => Err(anyhow::anyhow!("interrupted (Ctrl-C)")),
        _ = tokio::time::sleep(hard) => Err(anyhow::anyhow!("hard stop after {} s", hard.as_secs())),
    };
    stop.cancel();
    stats.measuring.store(false, Ordering::Relaxed);

    // Clean up everything this run made, whatever happened.
    let mut ids: Vec<String> = created.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(before) = &before
        && let Ok(now) = api.live().await
    {
        for id in now {
            if !before.contains(&id) && !ids.contains(&id) {
                stats.error("a create that failed on our side started later (deleted)");
                ids.push(id);
            }
        }
    }
    let mut js = tokio::task::JoinSet::new();
    for id in ids {
        let (api, stats) = (api.clone(), stats.clone());
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
    let cs: Vec<String> = containers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !cs.is_empty() {
        let _ = tokio::process::Command::new("docker")
            .arg("rm")
            .arg("-f")
            .args(&cs)
            .output()
            .await;
    }
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

#[allow(clippy::too_many_arguments)]
async fn run_body(
    args: &Args,
    target: &Target,
    api: &Arc<Api>,
    stats: &Arc<Stats>,
    created: &Arc<Mutex<Vec<String>>>,
    containers: &Arc<Mutex<Vec<String>>>,
    stop: &CancellationToken,
    report: &mut Report,
) -> anyhow::Result<()> {
    if args.scenario == Scenario::Tunnel {
        let r = tunnel::run(args, stats).await?;
        report.extra = r;
        return Ok(());
    }
    if args.sessions == 0 || args.sessions > 10_000 || args.terminals > 1000 {
        bail!("--sessions must be 1..=10000 and --terminals at most 1000");
    }
    let direct = args.baseline == Some(Baseline::Direct);
    let docker = if direct {
        Some(
            bollard::Docker::connect_with_local_defaults()?
                .negotiate_version()
                .await
                .context("the direct baseline needs the local Docker engine")?,
        )
    } else {
        None
    };
    if !direct {
        api.check().await?;
    }
    if args.scenario == Scenario::Sessions {
        return sessions(
            args,
            target,
            api,
            stats,
            created,
            containers,
            docker.as_ref(),
            stop,
        )
        .await;
    }

    // Sessions (or containers) first, a few at a time.
    let mut paths = Vec::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(8));
    let mut js = tokio::task::JoinSet::new();
    for _ in 0..args.sessions {
        let (api, slots, image, mem, created, containers) = (
            api.clone(),
            slots.clone(),
            args.image.clone(),
            args.memory_mb,
            created.clone(),
            containers.clone(),
        );
        let stats = stats.clone();
        js.spawn(async move {
            let _p = slots.acquire().await;
            if direct {
                let c = docker_run(&image).await?;
                containers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(c.clone());
                Ok::<_, anyhow::Error>(Path::Direct { container: c })
            } else {
                let (id, token) = api.create(&image, mem).await?;
                created
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id.clone());
                stats.sessions_created.fetch_add(1, Ordering::Relaxed);
                Ok(Path::Relay { id, token })
            }
        });
    }
    while let Some(r) = js.join_next().await {
        paths.push(r.context("session task")??);
    }
    if args.scenario == Scenario::Ssh {
        let addr = target
            .ssh
            .context("the ssh scenario needs --ssh HOST:PORT")?;
        paths = paths
            .into_iter()
            .map(|p| match p {
                Path::Relay { id, token } => Path::Ssh { addr, id, token },
                other => other,
            })
            .collect();
    }

    // Terminals, spread over the ramp-up.
    let mut plan = Vec::new();
    for p in &paths {
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
    let n = plan.len().max(1);
    let rss_before = sample::rss_sum(&args.pids);
    let ramp = Duration::from_secs(args.ramp_up);
    let t0 = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let print_cmd = print_command(args.output_rate);
    let opening = Arc::new(tokio::sync::Semaphore::new(64));
    for (i, (path, prints)) in plan.into_iter().enumerate() {
        let at = t0 + ramp.mul_f64(i as f64 / n as f64);
        let (stats, stop, relay, docker) = (
            stats.clone(),
            stop.clone(),
            target.relay.clone(),
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
                let mut t = open(&path, &relay, docker.as_ref(), &cmd, &stats).await?;
                wait_for(t.as_mut(), b"WARREN-READY", &stats, Duration::from_secs(30)).await?;
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
                printer(t, stats, stop).await
            } else {
                typist(t, rate, stats, stop).await
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
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn sessions(
    args: &Args,
    target: &Target,
    api: &Arc<Api>,
    stats: &Arc<Stats>,
    created: &Arc<Mutex<Vec<String>>>,
    containers: &Arc<Mutex<Vec<String>>>,
    docker: Option<&bollard::Docker>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
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
        let (api, stats, created, containers, relay, stop) = (
            api.clone(),
            stats.clone(),
            created.clone(),
            containers.clone(),
            target.relay.clone(),
            stop.clone(),
        );
        let (image, mem) = (args.image.clone(), args.memory_mb);
        let docker = docker.cloned();
        js.spawn(async move {
            let t0 = Instant::now();
            let r = async {
                let path = match &docker {
                    Some(_) => {
                        let c = docker_run(&image).await?;
                        containers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(c.clone());
                        Path::Direct { container: c }
                    }
                    None => {
                        let (id, token) = api.create(&image, mem).await?;
                        created
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(id.clone());
                        stats.sessions_created.fetch_add(1, Ordering::Relaxed);
                        Path::Relay { id, token }
                    }
                };
                let mut t = open(&path, &relay, docker.as_ref(), ECHO_COMMAND, &stats).await?;
                stats.terminals_opened.fetch_add(1, Ordering::Relaxed);
                wait_for(t.as_mut(), b"WARREN-READY", &stats, Duration::from_secs(60)).await?;
                stats.record(t0.elapsed().as_micros() as u64);
                drop(t);
                match path {
                    Path::Relay { id, .. } => {
                        api.delete(&id).await?;
                        created
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .retain(|x| *x != id);
                        stats.sessions_deleted.fetch_add(1, Ordering::Relaxed);
                    }
                    Path::Direct { container } => {
                        let _ = tokio::process::Command::new("docker")
                            .args(["rm", "-f", &container])
                            .output()
                            .await;
                        containers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .retain(|x| *x != container);
                    }
                    Path::Ssh { .. } => {}
                }
                Ok::<_, anyhow::Error>(())
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

/// A bare container of `image` for the direct baseline, as `docker run -d` makes it.
async fn docker_run(image: &str) -> anyhow::Result<String> {
    let o = tokio::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--label",
            "warren.loadtest=baseline",
            "--entrypoint",
            "/bin/sh",
            image,
            "-c",
            "exec sleep 2147483647",
        ])
        .output()
        .await
        .context("running docker")?;
    if !o.status.success() {
        bail!("docker run: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}
