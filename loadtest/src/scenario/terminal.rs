//! One terminal of a run: how it is opened (through the relay, over SSH or
//! straight into `docker exec`), and what it does once open (type and time
//! the echo, or print and count the bytes).
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::conn::{self, RelayTarget, Term};
use crate::stats::{Stats, kind};

/// Keys typed by the harness: one outstanding at a time per terminal, each
/// found again in the echo, so its round trip is exact.
const KEYS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// The terminals run `cat` on a raw TTY: every key comes back once.
pub const ECHO_COMMAND: &str = "stty raw -echo; echo WARREN-READY; exec cat";
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// How a terminal is opened for one session slot.
#[derive(Clone)]
pub(crate) enum Slot {
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

pub(crate) async fn open(
    slot: &Slot,
    relay: &RelayTarget,
    docker: Option<&bollard::Docker>,
    command: &str,
    stats: &Arc<Stats>,
) -> anyhow::Result<Box<dyn Term>> {
    match slot {
        Slot::Relay { id, token } => {
            // Every drop shows in the report, and every resume (the
            // terminal went on exactly where it was).
            let stats = stats.clone();
            let on_drop: conn::OnDrop = Arc::new(move |what| stats.error(what));
            conn::open_ws(relay, id, token, Some(command), Some(on_drop)).await
        }
        Slot::Ssh { addr, id, token } => conn::open_ssh(*addr, id, token, command).await,
        Slot::Direct { container } => {
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
pub(crate) async fn wait_for(
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
pub(crate) async fn typist(
    mut t: Box<dyn Term>,
    rate: f64,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
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
            // A terminal resuming (its relay drained or died) still echoes
            // the key late, from the kept input: lost only past that.
            r = wait_for(t.as_mut(), &key, &stats, conn::RESUME_WINDOW + ECHO_TIMEOUT) => r,
        };
        match got {
            Ok(()) => {
                stats.keystrokes_echoed.fetch_add(1, Ordering::Relaxed);
                stats.record(t0.elapsed().as_micros() as u64);
            }
            Err(e) => {
                // Its echo never came: lost (or the terminal closed).
                stats.keystrokes_lost.fetch_add(1, Ordering::Relaxed);
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
pub(crate) async fn printer(mut t: Box<dyn Term>, stats: Arc<Stats>, stop: CancellationToken) {
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

pub(crate) fn print_command(rate: u64) -> String {
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
