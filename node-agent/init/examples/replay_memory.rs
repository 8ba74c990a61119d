//! What the replay buffers cost: resident memory of `warren-init` servers
//! holding N terminals (default 1,000; a session holds at most 256, so
//! they are spread over servers of 250, as over a node's sessions),
//! measured three ways in one run:
//! shells that printed only a prompt, then after each printed 1 MiB, then
//! after each printed more than its buffer holds (3 MiB into 2 MiB).
//!
//!   cargo run --release -p warren-init --example replay_memory [-- N]
//!
//! In production each session's init holds its own terminals inside the
//! session's memory limit; the total is what a node pays for N terminals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_util::sync::CancellationToken;
use warren_init::client;
use warren_init::proto::{Frame, Op};
use warren_init::reaper::Reaper;
use warren_init::server::{Options, REPLAY_BYTES, Server};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Has every terminal print `bytes` more, and waits until all have (each
/// command touches a file when done).
async fn print_everywhere(
    dir: &std::path::Path,
    terminals: &[(std::path::PathBuf, u32)],
    bytes: u64,
    round: u32,
) {
    // Held until every command is done: a client that leaves at once can
    // take its input with it.
    let mut clients = Vec::new();
    for (i, (socket, t)) in terminals.iter().enumerate() {
        let t = *t;
        let (mut c, _) = client::request(
            socket,
            Op::Attach {
                terminal: t,
                cols: 80,
                rows: 24,
                offset: None,
                watch: false,
                input: None,
                echo_state: false,
            },
        )
        .await
        .unwrap();
        // Lines of 1,000 digits: what a build log or `cat` of a file looks like.
        let lines = bytes / 1001;
        let done = dir.join(format!("done-{i}-{round}"));
        c.send(Frame::Data(Bytes::from(format!(
            "i=0; while [ $i -lt {lines} ]; do printf '%01000d\\n' 0; i=$((i+1)); done; touch {}\n",
            done.display()
        ))))
        .await
        .unwrap();
        clients.push(c);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1200);
    for i in 0..terminals.len() {
        let done = dir.join(format!("done-{i}-{round}"));
        while !done.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "terminal {i} did not print"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Terminals per server (a session holds at most 256).
const PER_SERVER: usize = 250;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = std::env::temp_dir().join(format!("warren-replay-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let reaper = Arc::new(Reaper::default());
    let r2 = reaper.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move { r2.run().await })
    });
    let stop = CancellationToken::new();
    let servers = n.div_ceil(PER_SERVER);
    let mut sockets = Vec::new();
    for i in 0..servers {
        let socket = dir.join(format!("init-{i}.sock"));
        let server = Server::new(
            Options {
                socket: socket.clone(),
                detached_timeout: Duration::from_secs(3600),
                agent_only: false,
                replay_bytes: REPLAY_BYTES,
            },
            reaper.clone(),
        );
        tokio::spawn(server.serve(stop.clone()));
        while !socket.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sockets.push(socket);
    }
    let base = rss_kib();
    let mut terminals = Vec::new();
    for i in 0..n {
        let socket = sockets[i / PER_SERVER].clone();
        let (_c, resp) = client::request(
            &socket,
            Op::Open {
                cols: 80,
                rows: 24,
                env: BTreeMap::new(),
                command: Some(vec!["/bin/sh".into()]),
                input: None,
                echo_state: false,
            },
        )
        .await
        .unwrap();
        terminals.push((socket, resp.terminal.unwrap()));
    }
    let idle = rss_kib();
    print_everywhere(&dir, &terminals, 1 << 20, 1).await;
    let one_mib = rss_kib();
    print_everywhere(&dir, &terminals, 2 << 20, 2).await;
    let full = rss_kib();
    let per = |kib: u64| (kib.saturating_sub(base)) as f64 / n as f64;
    println!(
        "replay buffers ({} KiB each), {n} terminals in {servers} warren-init servers (RSS above the empty servers):\n\
         | terminals have printed | total | per terminal |\n|---|---|---|\n\
         | a prompt | {:.1} MiB | {:.1} KiB |\n\
         | 1 MiB each | {:.1} MiB | {:.1} KiB |\n\
         | 3 MiB each (more than the buffer holds) | {:.1} MiB | {:.1} KiB |",
        REPLAY_BYTES / 1024,
        idle.saturating_sub(base) as f64 / 1024.0,
        per(idle),
        one_mib.saturating_sub(base) as f64 / 1024.0,
        per(one_mib),
        full.saturating_sub(base) as f64 / 1024.0,
        per(full),
    );
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
