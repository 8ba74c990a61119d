//! Does a stalled viewer slow anyone down? Echo latency of one viewer of a
//! shell that floods output, with and without a second viewer that never
//! reads, in the same run (so the ratio is what matters on a noisy machine).
//!
//!   cargo run --release -p warren-init --example viewers [-- ROUNDS]
//!
//! The shell prints a steady flood of lines in the background; the measured
//! viewer types one byte at a time and waits for its echo. Before the
//! per-client fan-out rewrite, the second case waited 30 s per chunk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;
use warren_init::client::{self, InitConn};
use warren_init::proto::{Frame, Op};
use warren_init::reaper::Reaper;
use warren_init::server::{Options, Server};

async fn echo_round_trips(conn: &mut InitConn, rounds: usize) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..rounds {
        let t0 = Instant::now();
        conn.send(Frame::Data(Bytes::from_static(b"Z")))
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(60), conn.next()).await {
                Ok(Some(Ok(Frame::Data(b)))) if b.contains(&b'Z') => break,
                Ok(Some(Ok(_))) => {}
                other => panic!("no echo: {other:?}"),
            }
        }
        h.record(t0.elapsed().as_micros() as u64).unwrap();
    }
    h
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let dir = std::env::temp_dir().join(format!("warren-viewers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("init.sock");
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
    let server = Server::new(
        Options {
            socket: socket.clone(),
            detached_timeout: Duration::from_secs(600),
            agent_only: false,
            replay_bytes: warren_init::server::REPLAY_BYTES,
        },
        reaper,
    );
    tokio::spawn(server.serve(stop.clone()));
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open = Op::Open {
        cols: 80,
        rows: 24,
        env: BTreeMap::new(),
        command: Some(vec!["/bin/sh".into()]),
        input: None,
        echo_state: false,
    };
    let (mut viewer, resp) = client::request(&socket, open).await.unwrap();
    let terminal = resp.terminal.unwrap();
    // A steady flood in the background: about 1 MB/s of lines.
    viewer
        .send(Frame::Data(Bytes::from_static(
            b"stty -echoctl; (while :; do head -c 4000 /dev/zero | tr '\\0' x; echo; sleep 0.004; done) &\n",
        )))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let alone = echo_round_trips(&mut viewer, rounds).await;
    // A second viewer that never reads a byte.
    let (_stalled, _) = client::request(
        &socket,
        Op::Attach {
            terminal,
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let with_stalled = echo_round_trips(&mut viewer, rounds).await;
    println!(
        "echo under a 1 MB/s flood, {rounds} rounds each:\n  alone:                  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n  beside a stalled viewer: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n  p99 ratio (stalled / alone): {:.2}",
        ms(&alone, 0.5),
        ms(&alone, 0.99),
        alone.max() as f64 / 1000.0,
        ms(&with_stalled, 0.5),
        ms(&with_stalled, 0.99),
        with_stalled.max() as f64 / 1000.0,
        ms(&with_stalled, 0.99) / ms(&alone, 0.99).max(0.001),
    );
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
