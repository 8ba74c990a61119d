//! A lazy watcher (the agent's recorder): the same bytes as anyone else,
//! in fewer frames, and the exit without waiting out the delay.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use warren_init::client::{self, InitConn};
use warren_init::proto::{Frame, LAZY_DELAY, Op};

mod common;
use common::*;

fn watcher(terminal: u32, lazy: bool) -> Op {
    Op::Attach {
        terminal,
        cols: 0,
        rows: 0,
        offset: Some(0),
        watch: true,
        input: None,
        echo_state: false,
        lazy,
    }
}

/// Every output byte up to the exit, the number of data frames it came
/// in, and the exit code.
async fn until_exit(conn: &mut InitConn) -> (Vec<u8>, usize, i32) {
    let mut out = Vec::new();
    let mut frames = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            match conn.next().await {
                Some(Ok(Frame::Data(b))) => {
                    frames += 1;
                    out.extend_from_slice(&b);
                }
                Some(Ok(Frame::Exit(c))) => return c,
                other => panic!("unexpected {other:?} after {} bytes", out.len()),
            }
        }
    })
    .await
    .map(|code| (out, frames, code))
    .unwrap_or_else(|_| panic!("no exit in time; got {} bytes", frames))
}

#[tokio::test]
async fn a_lazy_watcher_gets_every_byte_in_fewer_frames_and_the_exit() {
    let f = start(Duration::from_secs(60)).await;
    // Twenty lines 5 ms apart (about 100 ms in all, a fifth of the lazy
    // delay), then the exit. The shell waits for its start signal, so both
    // watchers are attached before the first line.
    let script = "read go; for i in $(seq 1 20); do echo line-$i; sleep 0.005; done; exit 7";
    let (mut owner, resp) = client::request(
        &f.socket,
        Op::Open {
            cols: 80,
            rows: 24,
            env: BTreeMap::new(),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            input: None,
            echo_state: false,
        },
    )
    .await
    .unwrap();
    let id = resp.terminal.unwrap();
    let (mut eager, _) = client::request(&f.socket, watcher(id, false))
        .await
        .unwrap();
    let (mut lazy, _) = client::request(&f.socket, watcher(id, true)).await.unwrap();
    futures_util::SinkExt::send(&mut owner, Frame::Data("go\n".into()))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (lazy_out, lazy_frames, lazy_code) = until_exit(&mut lazy).await;
    let lazy_took = started.elapsed();
    let (eager_out, eager_frames, eager_code) = until_exit(&mut eager).await;
    assert_eq!((lazy_code, eager_code), (7, 7));
    assert_eq!(lazy_out, eager_out, "the same bytes");
    assert!(
        String::from_utf8_lossy(&lazy_out).contains("line-20"),
        "{}",
        String::from_utf8_lossy(&lazy_out)
    );
    // After a frame, a lazy watcher's next one waits the delay from the
    // next output on (or a batch of 16 KiB, far more than printed here):
    // frames are a delay apart, but for the last one, cut short by the
    // exit. Over about 100 ms of printing that is one or two frames, where
    // the eager watcher gets about one per line.
    let bound = 2 + (lazy_took.as_millis() / LAZY_DELAY.as_millis()) as usize;
    assert!(
        lazy_frames <= bound,
        "lazy {lazy_frames} frames in {lazy_took:?} (at most {bound}); eager {eager_frames}"
    );
}
