//! A recorder's watch (`Op::Record`) on a real PTY, in-process: output in
//! batches with each write's age, whole and in order, then the exit.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use warren_init::client;
use warren_init::proto::{ErrorCode, Frame, Op};

mod common;
use common::*;

#[tokio::test]
async fn a_recorder_gets_every_write_in_batches_with_its_age() {
    let f = start(Duration::from_secs(60)).await;
    let (mut shell, resp) = client::request(&f.socket, open_op()).await.unwrap();
    let terminal = resp.terminal.unwrap();
    let record = Op::Record {
        terminal,
        offset: Some(0),
        batch_ms: 1000,
    };
    let (mut rec, resp) = client::request(&f.socket, record).await.unwrap();
    assert_eq!(resp.offset, Some(0));
    // Lines printed apart in time, then the shell's exit.
    shell
        .send(Frame::Data(Bytes::from_static(
            b"for i in 1 2 3 4 5; do echo line-$((i*11)); sleep 0.02; done; exit 7\n",
        )))
        .await
        .unwrap();
    let mut text = String::new();
    let mut age = None;
    // When each write happened by the recorder's reckoning: arrival less
    // its age.
    let mut written = Vec::new();
    // Writes that came already read with the write before (one batch).
    let mut together = 0;
    let mut last_was_data = false;
    let code = tokio::time::timeout(WAIT, async {
        let mut next = rec.next().await;
        loop {
            match next {
                Some(Ok(Frame::Age(us))) => age = Some(us),
                Some(Ok(Frame::Data(b))) => {
                    last_was_data = true;
                    let us = age.take().expect("every write comes after its age");
                    written.push(Instant::now() - Duration::from_micros(us.into()));
                    text.push_str(&String::from_utf8_lossy(&b));
                }
                Some(Ok(Frame::Exit(c))) => return c,
                other => panic!("unexpected {other:?}; got {text:?}"),
            }
            // The next frame, if it was read with this one.
            next = match rec.next().now_or_never() {
                Some(f) => f,
                None => {
                    last_was_data = false;
                    rec.next().await
                }
            };
            // An age read with the write before it begins a write of the
            // same batch.
            if last_was_data && matches!(next, Some(Ok(Frame::Age(_)))) {
                together += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no exit; got {text:?}"));
    assert_eq!(code, 7);
    // Every line, in order (the echo of the command shows none of them).
    let at: Vec<usize> = ["line-11", "line-22", "line-33", "line-44", "line-55"]
        .iter()
        .map(|l| {
            text.find(l)
                .unwrap_or_else(|| panic!("{l} missing from {text:?}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{text:?}");
    // The writes' times, by their ages, go forward.
    assert!(written.windows(2).all(|w| w[0] <= w[1]), "{written:?}");
    // Batched: the five lines, 20 ms apart, came in a batch of 1 s (one
    // read), not one read each.
    assert!(together > 0, "every write came alone: {text:?}");
    drop(shell);
}

#[tokio::test]
async fn recording_a_terminal_that_is_not_there_is_refused() {
    let f = start(Duration::from_secs(60)).await;
    let record = Op::Record {
        terminal: 999,
        offset: None,
        batch_ms: u32::MAX,
    };
    match client::request(&f.socket, record).await {
        Err(client::ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::NotFound),
        other => panic!("expected not found, got {:?}", other.map(|x| x.1)),
    }
}
