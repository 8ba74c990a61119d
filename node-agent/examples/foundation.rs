//! Benchmarks of the foundation, each beside its baseline in the same run.
//!
//! ```sh
//! scripts/build-init.sh && scripts/build-images.sh mini
//! cargo run --release -p warren-agent --example foundation -- [all|tunnel|terminal|start]
//! ```
//!
//! - tunnel: bulk throughput of 1 and 16 streams (agent → relay, the
//!   direction of terminal output) and stream-open latency, beside plain TCP
//!   on loopback.
//! - terminal: keystroke echo round trip and output throughput through the
//!   tunnel, the agent and warren-init, beside `docker exec -it` and a local
//!   PTY (the floor).
//! - start: create to a shell that echoes, beside a bare container start.
//! - neighbours: keystroke echo in one session while another session runs
//!   a fork bomb, a memory hog, a CPU burner and a log flood, each beside
//!   the same echo with the noisy session idle (its ratio to that baseline).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_agent::testing::spawn_on_pty;
use warren_agent::{Agent, AgentOptions, SessionSpec};
use warren_config::{AgentConfig, DockerConfig, RelayTarget, Secret, SecurityMode, TerminalConfig};
use warren_testkit::TestTunnel;
use warren_testkit::tunnel::{NODE_SECRET, SERVER_NAME};
use warren_tunnel::client::Backoff;
use warren_tunnel::loopback::Source;
use warren_tunnel::proto::{StreamHeader, StreamKind};
use warren_tunnel::server::Registry;

const KEYSTROKES: usize = 2000;
const OUTPUT_BYTES: u64 = 100 * 1024 * 1024;

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

fn pct(h: &Histogram<u64>) -> (u64, u64) {
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
}

async fn read_n(mut r: impl tokio::io::AsyncRead + Unpin, n: u64) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < n {
        let k = r.read(&mut buf).await.unwrap();
        assert!(k > 0, "source ended early");
        got += k as u64;
    }
}

async fn bench_tunnel() {
    let r = TestTunnel::start();
    let node = r.connect("bench", Arc::new(Source)).await;

    // Plain TCP: an endless source on loopback.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taddr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let buf = vec![b'x'; 64 * 1024];
                let mut one = [0u8; 1];
                // First byte tells: 's' = source, 'c' = close at once.
                if s.read_exact(&mut one).await.is_err() || one[0] == b'c' {
                    return;
                }
                while s.write_all(&buf).await.is_ok() {}
            });
        }
    });
    let hdr = |kind| StreamHeader {
        session: "b".into(),
        kind,
        request_id: "r".into(),
        client_addr: None,
    };

    println!(
        "\n## Tunnel (loopback)\n\n| measure | plain TCP | Warren tunnel (QUIC) | ratio |\n|---|---|---|---|"
    );
    for (streams, per) in [(1usize, 1024u64 << 20), (16, 128 << 20)] {
        let t = Instant::now();
        let mut js = tokio::task::JoinSet::new();
        for _ in 0..streams {
            js.spawn(async move {
                let mut s = tokio::net::TcpStream::connect(taddr).await.unwrap();
                s.write_all(b"s").await.unwrap();
                read_n(s, per).await;
            });
        }
        while js.join_next().await.is_some() {}
        let tcp = (streams as u64 * per) as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..streams {
            let reg = r.registry().clone();
            let h = hdr(StreamKind::Port(19));
            js.spawn(async move {
                let s = reg.open_stream("bench", &h).await.unwrap();
                read_n(s, per).await;
            });
        }
        while js.join_next().await.is_some() {}
        let quic = (streams as u64 * per) as f64 / t.elapsed().as_secs_f64();
        println!(
            "| throughput, {streams} stream(s), {} MiB total | {:.0} MB/s | {:.0} MB/s | {:.2} |",
            (streams as u64 * per) >> 20,
            tcp / 1e6,
            quic / 1e6,
            quic / tcp
        );
    }
    let mut ht = Histogram::<u64>::new(3).unwrap();
    let mut hq = Histogram::<u64>::new(3).unwrap();
    for _ in 0..2000 {
        let t = Instant::now();
        let mut s = tokio::net::TcpStream::connect(taddr).await.unwrap();
        s.write_all(b"c").await.unwrap();
        let _ = s.read(&mut [0u8; 1]).await;
        ht.record(t.elapsed().as_micros() as u64).unwrap();
        let t = Instant::now();
        let s = r
            .registry()
            .open_stream("bench", &hdr(StreamKind::Port(7)))
            .await
            .unwrap();
        hq.record(t.elapsed().as_micros() as u64).unwrap();
        drop(s);
    }
    let ((t50, t99), (q50, q99)) = (pct(&ht), pct(&hq));
    println!(
        "| stream open p50 (TCP: connect + close round trip; tunnel: header + reply) | {} | {} | {:.2} |",
        ms(t50),
        ms(q50),
        q50 as f64 / t50 as f64
    );
    println!(
        "| stream open p99 | {} | {} | {:.2} |",
        ms(t99),
        ms(q99),
        q99 as f64 / t99 as f64
    );
    drop(node);
    r.stop().await;
}

const CAT: &str = "stty raw -echo; exec cat";
fn output_cmd() -> String {
    format!(
        "yes abcdefghijklmnopqrstuvwxyz0123456789 | head -c {OUTPUT_BYTES}; echo DONE-$((40+2))"
    )
}

async fn ws_terminal(
    registry: &Registry,
    session: &str,
) -> tokio_tungstenite::WebSocketStream<warren_tunnel::TunnelStream> {
    let h = StreamHeader {
        session: session.into(),
        kind: StreamKind::Terminal,
        request_id: "b".into(),
        client_addr: None,
    };
    let s = registry.open_stream("bench-agent", &h).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{session}.warren.localhost/_warren/terminal"),
        s,
    )
    .await
    .unwrap();
    ws
}

async fn ws_wait(
    ws: &mut tokio_tungstenite::WebSocketStream<warren_tunnel::TunnelStream>,
    needle: &[u8],
) -> u64 {
    let mut seen = Vec::new();
    let mut total = 0;
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => {
                total += b.len() as u64;
                seen.extend_from_slice(&b);
                if seen.windows(needle.len()).any(|w| w == needle) {
                    return total;
                }
                if seen.len() > 4096 {
                    seen.drain(..seen.len() - 64);
                }
            }
            _ => continue,
        }
    }
}

struct Stack {
    relay: TestTunnel,
    agent: Arc<Agent>,
    stop: CancellationToken,
    label: String,
    network: String,
}

async fn stack(dir: &std::path::Path) -> Stack {
    stack_with(dir, DockerConfig::default().default_disk_mb).await
}

async fn stack_with(dir: &std::path::Path, default_disk_mb: u64) -> Stack {
    let relay = TestTunnel::start();
    let label = format!("{}", std::process::id());
    let network = format!("warren-bench-{label}");
    let cfg = AgentConfig {
        admin: Default::default(),
        control_url: None,
        control_ca_file: None,
        memory_mb: None,
        node_id: "bench-agent".into(),
        data_dir: dir.join("agent"),
        credential: Secret::new(NODE_SECRET),
        relays: vec![RelayTarget {
            addr: relay.addr().to_string(),
            server_name: SERVER_NAME.into(),
            ca_file: Some(relay.write_ca(dir)),
        }],
        docker: DockerConfig {
            network: network.clone(),
            security: SecurityMode::Auto,
            default_image: "warren/session:mini".into(),
            default_memory_mb: 256,
            default_disk_mb,
            ..Default::default()
        },
        terminal: TerminalConfig::default(),
    };
    let stop = CancellationToken::new();
    let mut labels = BTreeMap::new();
    labels.insert("warren.bench".to_string(), label.clone());
    let agent = Agent::start(
        &cfg,
        AgentOptions {
            extra_labels: labels,
        },
        stop.clone(),
    )
    .await
    .unwrap();
    agent
        .connect_relays(&cfg, Backoff::default(), &TaskTracker::new())
        .unwrap();
    relay.registered("bench-agent").await;
    Stack {
        relay,
        agent,
        stop,
        label,
        network,
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The tunnel stops when its field drops, after this.
        self.stop.cancel();
        warren_testkit::remove_labelled(&format!("warren.bench={}", self.label), &[&self.network]);
    }
}

async fn bench_terminal(st: &Stack) {
    let s = st
        .agent
        .create_session(&SessionSpec {
            id: "benchterm".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Warren: tunnel + agent + warren-init.
    let mut ws = ws_terminal(st.relay.registry(), &s.id).await;
    ws.send(Message::Binary(format!("{CAT}\n").into_bytes().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(b"S".to_vec().into()))
        .await
        .unwrap();
    ws_wait(&mut ws, b"S").await;
    let hw = echo_hist(&mut ws, KEYSTROKES).await;
    drop(ws);
    let mut ws = ws_terminal(st.relay.registry(), &s.id).await;
    ws.send(Message::Binary(
        format!("{}\n", output_cmd()).into_bytes().into(),
    ))
    .await
    .unwrap();
    let t = Instant::now();
    let bytes = ws_wait(&mut ws, b"DONE-42").await;
    let warren_tp = bytes as f64 / t.elapsed().as_secs_f64();
    drop(ws);

    // docker exec -it and a local PTY, driven from a blocking thread.
    let cid = s.container_id.clone();
    let (hd, docker_tp, hl, local_tp) = tokio::task::spawn_blocking(move || {
        let mut p =
            spawn_on_pty(Command::new("docker").args(["exec", "-it", &cid, "sh", "-c", CAT]));
        let hd = p.echo(KEYSTROKES);
        drop(p);
        let mut p = spawn_on_pty(Command::new("docker").args([
            "exec",
            "-it",
            &cid,
            "sh",
            "-c",
            &output_cmd(),
        ]));
        let t = Instant::now();
        let b = p.wait_for(b"DONE-42");
        let dtp = b as f64 / t.elapsed().as_secs_f64();
        drop(p);
        let mut p = spawn_on_pty(Command::new("sh").args(["-c", CAT]));
        let hl = p.echo(KEYSTROKES);
        drop(p);
        let mut p = spawn_on_pty(Command::new("sh").args(["-c", &output_cmd()]));
        let t = Instant::now();
        let b = p.wait_for(b"DONE-42");
        let ltp = b as f64 / t.elapsed().as_secs_f64();
        (hd, dtp, hl, ltp)
    })
    .await
    .unwrap();

    println!(
        "\n## Terminal ({KEYSTROKES} keystrokes echoed by `cat` in raw mode; {} MiB of `yes` output)\n",
        OUTPUT_BYTES >> 20
    );
    println!("| path | echo p50 | echo p99 | output |\n|---|---|---|---|");
    for (name, h, tp) in [
        (
            "Warren: QUIC tunnel + agent + warren-init PTY",
            &hw,
            warren_tp,
        ),
        ("`docker exec -it`", &hd, docker_tp),
        ("local PTY (floor)", &hl, local_tp),
    ] {
        let (p50, p99) = pct(h);
        println!(
            "| {name} | {} | {} | {:.1} MB/s |",
            ms(p50),
            ms(p99),
            tp / 1e6
        );
    }
    st.agent.remove_session(&s.id).await.unwrap();
}

/// Echo round trips in an open `cat` on `ws`.
async fn echo_hist(
    ws: &mut tokio_tungstenite::WebSocketStream<warren_tunnel::TunnelStream>,
    n: usize,
) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for i in 0..n {
        let c = b'a' + (i % 26) as u8;
        let t = Instant::now();
        ws.send(Message::Binary(vec![c].into())).await.unwrap();
        ws_wait(ws, &[c]).await;
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    h
}

async fn bench_neighbours(st: &Stack) {
    const ROUNDS: usize = 3;
    // 5000 keystrokes: a p99 rests on 50 samples, not 10 (a few stray
    // scheduler delays on a 2-core VM moved a 1000-sample p99 by 5x).
    let n_keys: usize = std::env::var("WARREN_BENCH_KEYSTROKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    // WARREN_BENCH_LOADS=cpu,disk runs only the loads whose names start so.
    let only: Vec<String> = std::env::var("WARREN_BENCH_LOADS")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    // Its command (`sleep`) holds the pipe init drains into the log.
    let noisy_image = warren_agent::testing::long_command_image();
    let noisy_spec = SessionSpec {
        id: "benchnoisy".into(),
        image: Some(noisy_image),
        memory_mb: Some(128),
        pids_limit: Some(128),
        cpus: Some(1.0),
        disk_mb: Some(256),
        egress: Default::default(),
    };
    let noisy = st.agent.create_session(&noisy_spec).await.unwrap();
    let quiet = st
        .agent
        .create_session(&SessionSpec {
            id: "benchquiet".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut q = ws_terminal(st.relay.registry(), &quiet.id).await;
    q.send(Message::Binary(format!("{CAT}\n").into_bytes().into()))
        .await
        .unwrap();
    q.send(Message::Binary(b"S".to_vec().into())).await.unwrap();
    ws_wait(&mut q, b"S").await;
    let mut n = ws_terminal(st.relay.registry(), &noisy.id).await;
    println!(
        "\n## Neighbours\n\nEcho in a quiet session while another session misbehaves \
         ({ROUNDS} rounds of {n_keys} keystrokes idle, then {n_keys} busy, pooled; noisy session: 128 MB, 128 pids, 1 CPU, 256 MB disk; ratio to the idle run just before it)\n"
    );
    println!(
        "| noisy session | p50 idle / busy | p99 idle / busy | p99 / idle p99 | per round |\n| --- | --- | --- | --- | --- |"
    );
    let loads: [(&str, &str); 9] = [
        (
            "fork bomb (at its pids limit)",
            "b() { b | b & }; b 2>/dev/null",
        ),
        (
            "memory hog (OOM-killed in a loop)",
            "while true; do dd if=/dev/zero of=/dev/null bs=300M count=1 2>/dev/null; done",
        ),
        (
            "memory streamer (a 64 MB buffer zeroed over and over, no faults)",
            "dd if=/dev/zero of=/dev/null bs=64M count=100000000 2>/dev/null",
        ),
        (
            "page faulter (a fresh 64 MB buffer faulted in, in a loop; no OOM)",
            "while :; do dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; done",
        ),
        (
            "CPU burner (4 busy loops)",
            "for i in 1 2 3 4; do (while :; do :; done) & done",
        ),
        (
            "disk filler (its 256 MB disk, filled and emptied in a loop)",
            "while true; do dd if=/dev/zero of=/fill bs=1M 2>/dev/null; rm -f /fill; done",
        ),
        (
            "fsync storm (4 KiB writes, each synced, 4 writers)",
            "for i in 1 2 3 4; do (while :; do dd if=/dev/zero of=/sync$i bs=4k count=1 conv=fsync 2>/dev/null; done) & done",
        ),
        (
            "disk reader (its disk read back uncached, 4 readers)",
            "dd if=/dev/zero of=/fill bs=1M count=200 2>/dev/null; sync; for i in 1 2 3 4; do (while :; do dd if=/fill of=/dev/null bs=1M iflag=direct 2>/dev/null; done) & done",
        ),
        (
            "log flood (the image command's stdout; PID 1's is refused)",
            "s=$(for p in /proc/[0-9]*; do [ \"$(cat $p/comm)\" = sleep ] && echo $p; done); \
             while true; do head -c 10000000 /dev/zero > $s/fd/1; done",
        ),
    ];
    for (name, cmd) in loads {
        if !only.is_empty() && !only.iter().any(|o| name.starts_with(o.as_str())) {
            continue;
        }
        // Three rounds of (idle, busy), pooled: one round's p99 swings with
        // where a stray scheduler delay lands; the spread is printed too.
        let mut idle = Histogram::<u64>::new(3).unwrap();
        let mut busy = Histogram::<u64>::new(3).unwrap();
        let mut ratios = Vec::new();
        for _ in 0..ROUNDS {
            let i = echo_hist(&mut q, n_keys).await;
            n.send(Message::Binary(format!("{cmd}\n").into_bytes().into()))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await; // let the load build up
            let b = echo_hist(&mut q, n_keys).await;
            ratios.push(pct(&b).1 as f64 / pct(&i).1.max(1) as f64);
            idle.add(&i).unwrap();
            busy.add(&b).unwrap();
            // Stop the load: a new noisy session shell kills everything but init.
            drop(n);
            st.agent.remove_session(&noisy.id).await.unwrap();
            st.agent.create_session(&noisy_spec).await.unwrap();
            n = ws_terminal(st.relay.registry(), &noisy.id).await;
        }
        let (ip50, ip99) = pct(&idle);
        let (b50, b99) = pct(&busy);
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {name} | {} / {} | {} / {} | {:.2} | {:.2}–{:.2} |",
            ms(ip50),
            ms(b50),
            ms(ip99),
            ms(b99),
            b99 as f64 / ip99.max(1) as f64,
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
}

/// Warren's start, create to an answering shell, `N` runs.
async fn warren_starts(st: &Stack, n: usize) -> Histogram<u64> {
    let mut hw = Histogram::<u64>::new(3).unwrap();
    for i in 0..n {
        let id = format!("benchstart{i}");
        let t = Instant::now();
        let s = st
            .agent
            .create_session(&SessionSpec {
                id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut ws = ws_terminal(st.relay.registry(), &s.id).await;
        ws.send(Message::Binary(b"echo $((6*7))\n".to_vec().into()))
            .await
            .unwrap();
        ws_wait(&mut ws, b"42\r\n").await;
        hw.record(t.elapsed().as_micros() as u64).unwrap();
        drop(ws);
        st.agent.remove_session(&id).await.unwrap();
    }
    hw
}

/// Session start with the node's disk limits (loop disks on ext4) beside
/// the same agent with none, alternating so both see the same machine.
async fn bench_start_disk(dir: &std::path::Path) {
    const N: usize = 10;
    let mut with = Histogram::<u64>::new(3).unwrap();
    let mut without = Histogram::<u64>::new(3).unwrap();
    let mut backend = "";
    for round in 0..2 {
        for (h, disk) in [(&mut with, true), (&mut without, false)] {
            let d = dir.join(format!("disk-{round}-{disk}"));
            std::fs::create_dir_all(&d).unwrap();
            let st = if disk {
                stack_with(&d, 1024).await
            } else {
                stack_with(&d, 0).await
            };
            if disk {
                backend = st.agent.runtime().disk_backend();
            }
            h.add(warren_starts(&st, N / 2).await).unwrap();
            st.stop.cancel();
        }
    }
    println!(
        "\n## Session start with and without a disk limit ({N} runs each, `warren/session:mini`)\n\n| disk | p50 | p99 |\n|---|---|---|"
    );
    let (a, b) = pct(&without);
    println!("| no limit | {} | {} |", ms(a), ms(b));
    let (a, b) = pct(&with);
    println!("| 1 GiB limit ({backend}) | {} | {} |", ms(a), ms(b));
}

async fn bench_start(st: &Stack) {
    const N: usize = 10;
    let hw = warren_starts(st, N).await;
    let mut hd = Histogram::<u64>::new(3).unwrap();
    let label = format!("warren.bench={}", st.label);
    for _ in 0..N {
        let t = Instant::now();
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--label",
                &label,
                "--network",
                &st.network,
                "warren/session:mini",
                "sleep",
                "60",
            ])
            .output()
            .unwrap();
        hd.record(t.elapsed().as_micros() as u64).unwrap();
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    }
    println!(
        "\n## Session start ({N} runs, `warren/session:mini`)\n\n| path | p50 | p99 |\n|---|---|---|"
    );
    let (a, b) = pct(&hw);
    println!(
        "| Warren: create container + init ready + terminal over the tunnel + `echo` answered | {} | {} |",
        ms(a),
        ms(b)
    );
    let (a, b) = pct(&hd);
    println!("| bare `docker run -d` (CLI) | {} | {} |", ms(a), ms(b));
}

#[tokio::main]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let dir = std::env::temp_dir().join(format!("warren-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "# Warren foundation benchmarks\n\nmachine: {} cores; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        chrono_free_date()
    );
    if what == "all" || what == "tunnel" {
        bench_tunnel().await;
    }
    if what == "all" || what == "terminal" || what == "start" {
        let st = stack(&dir).await;
        if what != "start" {
            bench_terminal(&st).await;
        }
        if what != "terminal" {
            bench_start(&st).await;
        }
    }
    if what == "all" || what == "disk" {
        bench_start_disk(&dir).await;
    }
    if what == "all" || what == "neighbours" {
        let st = stack(&dir).await;
        bench_neighbours(&st).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn chrono_free_date() -> String {
    Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
