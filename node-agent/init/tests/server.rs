//! The terminal server on a real PTY, in-process (no container needed):
//! shells, resize, exit codes, multi-attach with replay, hostile clients.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_init::client::{self, InitConn};
use warren_init::proto::{ErrorCode, Frame, Op};

mod common;
use common::*;

/// Reads terminal output until `needle` shows up; returns all of it.
async fn read_until(conn: &mut InitConn, needle: &str) -> String {
    let mut out = String::new();
    tokio::time::timeout(WAIT, async {
        while !out.contains(needle) {
            match conn.next().await {
                Some(Ok(Frame::Data(b))) => out.push_str(&String::from_utf8_lossy(&b)),
                Some(Ok(Frame::Exit(c))) => out.push_str(&format!("<exit {c}>")),
                Some(Ok(Frame::Skip(o))) => out.push_str(&format!("<skip {o}>")),
                Some(Ok(Frame::InputAck { .. })) => {}
                other => panic!("unexpected {other:?} while waiting for {needle:?}; got {out:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; got {out:?}"));
    out
}

async fn type_line(conn: &mut InitConn, line: &str) {
    conn.send(Frame::Data(Bytes::from(format!("{line}\n"))))
        .await
        .unwrap();
}

#[tokio::test]
async fn shell_echo_resize_exit_code() {
    let f = start(Duration::from_secs(60)).await;
    let (mut c, resp) = client::request(&f.socket, open_op()).await.unwrap();
    assert!(resp.terminal.is_some() && resp.pid.is_some());
    type_line(&mut c, "echo $((6*7))").await;
    read_until(&mut c, "42").await;
    c.send(Frame::Resize {
        cols: 132,
        rows: 50,
    })
    .await
    .unwrap();
    type_line(&mut c, "stty size").await;
    read_until(&mut c, "50 132").await;
    type_line(&mut c, "exit 3").await;
    let out = read_until(&mut c, "<exit").await;
    assert!(out.contains("<exit 3>"), "{out}");
}

#[tokio::test]
async fn shells_outlive_clients_and_replay_on_attach() {
    let f = start(Duration::from_secs(60)).await;
    let (mut c1, resp) = client::request(&f.socket, open_op()).await.unwrap();
    let id = resp.terminal.unwrap();
    type_line(&mut c1, "echo marker-$((20+3))").await;
    read_until(&mut c1, "marker-23").await;
    drop(c1);
    // A new client sees the earlier output and the same shell.
    let (mut c2, resp2) = client::request(
        &f.socket,
        Op::Attach {
            terminal: id,
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
    assert_eq!(resp2.pid, resp.pid);
    read_until(&mut c2, "marker-23").await;
    // Two clients at once both see output.
    let (mut c3, _) = client::request(
        &f.socket,
        Op::Attach {
            terminal: id,
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
    type_line(&mut c2, "echo both-$((1+1))").await;
    read_until(&mut c2, "both-2").await;
    read_until(&mut c3, "both-2").await;
    let (_c, list) = client::request(&f.socket, Op::List).await.unwrap();
    assert_eq!(list.terminals.unwrap().len(), 1);
    let e = client::request(
        &f.socket,
        Op::Attach {
            terminal: 999,
            cols: 80,
            rows: 24,
            offset: None,
            watch: false,
            input: None,
            echo_state: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not_found"), "{e}");
}

#[tokio::test]
async fn a_watcher_sees_output_but_never_types_or_resizes() {
    let f = start(Duration::from_secs(60)).await;
    let (mut owner, resp) = client::request(&f.socket, open_op()).await.unwrap();
    let id = resp.terminal.unwrap();
    type_line(&mut owner, "stty size").await;
    read_until(&mut owner, "24 80").await;
    let (mut watcher, _) = client::request(
        &f.socket,
        Op::Attach {
            terminal: id,
            cols: 10,
            rows: 5,
            offset: Some(0),
            watch: true,
            input: None,
            echo_state: false,
        },
    )
    .await
    .unwrap();
    // The watcher's keys and resize go nowhere; the owner's size holds.
    watcher
        .send(Frame::Data("echo typed-by-$((6*7))\n".into()))
        .await
        .unwrap();
    watcher
        .send(Frame::Resize { cols: 11, rows: 6 })
        .await
        .unwrap();
    type_line(&mut owner, "echo owner-$((1+1)); stty size").await;
    let seen = read_until(&mut watcher, "owner-2").await;
    let out = read_until(&mut owner, "24 80").await;
    assert!(
        !seen.contains("typed-by-42") && !out.contains("typed-by-42"),
        "{out}"
    );
    // A watcher is not counted as attached.
    let (_c, list) = client::request(&f.socket, Op::List).await.unwrap();
    assert_eq!(list.terminals.unwrap()[0].clients, 1);
}

#[tokio::test]
async fn input_sent_twice_is_written_once() {
    let f = start(Duration::from_secs(60)).await;
    let open = Op::Open {
        cols: 80,
        rows: 24,
        env: BTreeMap::new(),
        command: None,
        input: Some("page1".into()),
        echo_state: false,
    };
    let (mut a, resp) = client::request(&f.socket, open).await.unwrap();
    assert_eq!(resp.input, Some(0));
    let id = resp.terminal.unwrap();
    let attach = || Op::Attach {
        terminal: id,
        cols: 80,
        rows: 24,
        offset: None,
        watch: false,
        input: Some("page1".into()),
        echo_state: false,
    };
    // A second connection of the same stream (a reconnect while the old
    // one still delivers): both send the same bytes at the same offsets.
    let (mut b, resp_b) = client::request(&f.socket, attach()).await.unwrap();
    assert_eq!(resp_b.input, Some(0));
    let file = std::env::temp_dir().join(format!("warren-input-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let line = format!(
        "echo once-$((20+1)) >> {}; cat {}\n",
        file.display(),
        file.display()
    );
    a.send(Frame::Data(Bytes::from(line.clone())))
        .await
        .unwrap();
    b.send(Frame::Data(Bytes::from(line.clone())))
        .await
        .unwrap();
    let out = read_until(&mut b, "once-21").await;
    // Acknowledged (to the connection that wrote): the stream's length.
    let mut acked = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked != Some(line.len() as u64) {
        match tokio::time::timeout_at(deadline, a.next()).await {
            Ok(Some(Ok(Frame::InputAck { offset, .. }))) => acked = Some(offset),
            Ok(Some(Ok(_))) => {}
            other => panic!("no input ack: {other:?}"),
        }
    }
    // A reconnect is told where the stream stands and goes on from there.
    let (mut c, resp_c) = client::request(&f.socket, attach()).await.unwrap();
    assert_eq!(resp_c.input, Some(line.len() as u64));
    c.send(Frame::Data("echo after-$((2+2))\n".into()))
        .await
        .unwrap();
    let more = read_until(&mut c, "after-4").await;
    let _ = (out, more);
    let written = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(written, "once-21\n", "the line ran more than once");
    // Another stream of the same terminal counts on its own.
    let mut other = attach();
    if let Op::Attach { input, .. } = &mut other {
        *input = Some("ssh2".into());
    }
    let (_d, resp_d) = client::request(&f.socket, other).await.unwrap();
    assert_eq!(resp_d.input, Some(0));
    // A bad stream id is refused, not ignored.
    let mut bad = attach();
    if let Op::Attach { input, .. } = &mut bad {
        *input = Some("no spaces".into());
    }
    assert!(client::request(&f.socket, bad).await.is_err());
}

#[tokio::test]
async fn detached_shells_are_hung_up_after_the_timeout() {
    let f = start(Duration::from_millis(300)).await;
    let (c, resp) = client::request(&f.socket, open_op()).await.unwrap();
    drop(c);
    let id = resp.terminal.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let (_c, list) = client::request(&f.socket, Op::List).await.unwrap();
            if !list.terminals.unwrap().iter().any(|t| t.terminal == id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("detached shell was not hung up");
}

#[tokio::test]
async fn hostile_clients_get_errors_and_the_server_keeps_serving() {
    let f = start(Duration::from_secs(60)).await;
    // Garbage bytes.
    let mut s = tokio::net::UnixStream::connect(&f.socket).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).contains("bad_frame"));
    // An oversized frame header.
    let mut s = tokio::net::UnixStream::connect(&f.socket).await.unwrap();
    s.write_all(&[3, 0x7F, 0xFF, 0xFF, 0xFF]).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).contains("exceeds"));
    // A wrong protocol version.
    let mut s = tokio::net::UnixStream::connect(&f.socket).await.unwrap();
    let body = br#"{"version":99,"op":"list"}"#;
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    s.write_all(&frame).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("version_mismatch") && text.contains("v99"),
        "{text}"
    );
    // Disallowed environment.
    let mut env = BTreeMap::new();
    env.insert("LD_PRELOAD".to_string(), "/x.so".to_string());
    let e = client::request(
        &f.socket,
        Op::Open {
            cols: 80,
            rows: 24,
            env,
            command: None,
            input: None,
            echo_state: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("bad_env"));
    // Still serving.
    let (mut c, _) = client::request(&f.socket, open_op()).await.unwrap();
    type_line(&mut c, "echo ok-$((2*2))").await;
    read_until(&mut c, "ok-4").await;
}

/// Collects an exec's stdout, stderr and exit code.
async fn exec_result(conn: &mut InitConn) -> (Vec<u8>, Vec<u8>, i32) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match conn.next().await {
                Some(Ok(Frame::Data(b))) => out.extend_from_slice(&b),
                Some(Ok(Frame::Stderr(b))) => err.extend_from_slice(&b),
                Some(Ok(Frame::Exit(c))) => return c,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("exec did not finish");
    (out, err, code)
}

fn exec_op(script: &str) -> Op {
    Op::Exec {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        cwd: None,
        vars: Default::default(),
    }
}

#[tokio::test]
async fn exec_keeps_stdout_stderr_apart_and_returns_the_exit_code() {
    let f = start(Duration::from_secs(60)).await;
    let (mut c, resp) = client::request(&f.socket, exec_op("echo out; echo err >&2; exit 7"))
        .await
        .unwrap();
    assert!(resp.pid.is_some() && resp.terminal.is_none());
    let (out, err, code) = exec_result(&mut c).await;
    assert_eq!(
        (&out[..], &err[..], code),
        (&b"out\n"[..], &b"err\n"[..], 7)
    );

    // stdin is a pipe, closed by Eof; binary data passes unchanged.
    let (mut c, _) = client::request(&f.socket, exec_op("cat; echo done >&2"))
        .await
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in payload.chunks(60_000) {
        c.send(Frame::Data(Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
    }
    c.send(Frame::Eof).await.unwrap();
    let (out, err, code) = exec_result(&mut c).await;
    assert_eq!(out.len(), payload.len());
    assert!(out == payload && err == b"done\n" && code == 0);

    // Bad commands are refused with a reason; the server keeps serving.
    let e = client::request(
        &f.socket,
        Op::Exec {
            command: vec![],
            env: BTreeMap::new(),
            cwd: None,
            vars: Default::default(),
        },
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("bad_command"), "{e}");
    let e = client::request(
        &f.socket,
        Op::Exec {
            command: vec!["/no/such/binary".into()],
            env: BTreeMap::new(),
            cwd: None,
            vars: Default::default(),
        },
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("spawn_failed"), "{e}");
}

#[tokio::test]
async fn an_exec_is_killed_when_its_client_leaves() {
    let f = start(Duration::from_secs(60)).await;
    let marker = f.dir.join("alive");
    let script = format!(
        "while true; do touch {}; sleep 0.05; done",
        marker.display()
    );
    let (c, resp) = client::request(&f.socket, exec_op(&script)).await.unwrap();
    let pid = resp.pid.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !marker.exists() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(c);
    // The process group goes: its leader disappears from /proc.
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "exec survived its client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process in the init's own PID namespace (here: this test, on the same
/// host) is refused in agent-only mode: inside a session that is every
/// process, root included; only the agent, outside, sees pid 0.
#[tokio::test]
async fn agent_only_refuses_peers_in_the_same_pid_namespace() {
    let f = start_with(Duration::from_secs(60), true).await;
    match client::request(&f.socket, Op::List).await {
        Err(client::ClientError::Refused { code, message }) => {
            assert_eq!(code, warren_init::proto::ErrorCode::Forbidden);
            assert!(message.contains("only the Warren agent"), "{message}");
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a peer in the same PID namespace was answered"),
    }
    match client::request(&f.socket, open_op()).await {
        Err(client::ClientError::Refused { code, .. }) => {
            assert_eq!(code, warren_init::proto::ErrorCode::Forbidden)
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a peer in the same PID namespace opened a terminal"),
    }
    assert!(warren_init::server::peer_allowed(true, Some(0)));
    assert!(!warren_init::server::peer_allowed(true, None));
    assert!(!warren_init::server::peer_allowed(true, Some(1)));
    assert!(warren_init::server::peer_allowed(false, Some(42)));
}

/// Reads terminal bytes until `n` have arrived (skips recorded as errors).
async fn read_bytes(conn: &mut InitConn, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        while out.len() < n {
            match conn.next().await {
                Some(Ok(Frame::Data(b))) => out.extend_from_slice(&b),
                other => panic!("unexpected {other:?} after {} bytes", out.len()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {} of {n} bytes", out.len()));
    out
}

fn attach(terminal: u32, offset: Option<u64>) -> Op {
    Op::Attach {
        terminal,
        cols: 80,
        rows: 24,
        offset,
        watch: false,
        input: None,
        echo_state: false,
    }
}

#[tokio::test]
async fn resume_by_offset_gives_exactly_the_bytes_after_it() {
    let f = start(Duration::from_secs(60)).await;
    let (mut reference, resp) = client::request(&f.socket, open_op()).await.unwrap();
    let id = resp.terminal.unwrap();
    assert_eq!(resp.offset, Some(0), "a new shell starts at offset 0");
    type_line(
        &mut reference,
        "i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo line-$i; done; echo done-$((1+1))",
    )
    .await;
    let all = read_until(&mut reference, "done-2").await.into_bytes();
    // Every offset, from the start to the end, resumes exactly.
    for k in [0, 1, all.len() / 3, all.len() / 2, all.len() - 1] {
        let (mut c, r) = client::request(&f.socket, attach(id, Some(k as u64)))
            .await
            .unwrap();
        assert_eq!(r.offset, Some(k as u64), "offset {k} is still held");
        let got = read_bytes(&mut c, all.len() - k).await;
        assert_eq!(got, all[k..], "resuming at {k}");
    }
    // Nothing is repeated: at the end, the next bytes are new output only.
    let (mut c, r) = client::request(&f.socket, attach(id, Some(all.len() as u64)))
        .await
        .unwrap();
    assert_eq!(r.offset, Some(all.len() as u64));
    type_line(&mut reference, "echo fresh-$((2+3))").await;
    let fresh = read_until(&mut c, "fresh-5").await;
    assert!(
        !fresh.contains("line-200"),
        "old output repeated: {fresh:?}"
    );
}

#[tokio::test]
async fn a_lost_offset_resumes_at_the_oldest_byte_held() {
    let cap = *warren_init::server::REPLAY_RANGE.start();
    let f = start_full(Duration::from_secs(60), false, cap).await;
    let (mut reference, resp) = client::request(&f.socket, open_op()).await.unwrap();
    let id = resp.terminal.unwrap();
    // Twice the buffer, then a marker.
    type_line(
        &mut reference,
        &format!(
            "head -c {} /dev/zero | tr '\\0' x; echo; echo end-$((4+4))",
            cap * 2
        ),
    )
    .await;
    read_until(&mut reference, "end-8").await;
    let (mut c, r) = client::request(&f.socket, attach(id, Some(0)))
        .await
        .unwrap();
    let first = r.offset.unwrap();
    assert!(
        first > 0,
        "offset 0 is no longer held, so the answer says where output resumes"
    );
    let out = read_until(&mut c, "end-8").await;
    assert!(
        out.len() <= cap,
        "more than the buffer came back: {}",
        out.len()
    );
}

#[tokio::test]
async fn a_stalled_viewer_does_not_hold_up_the_shell_or_other_viewers() {
    let cap = *warren_init::server::REPLAY_RANGE.start();
    let f = start_full(Duration::from_secs(60), false, cap).await;
    let (mut live, resp) = client::request(&f.socket, open_op()).await.unwrap();
    let id = resp.terminal.unwrap();
    // This viewer attaches and then never reads.
    let (mut stalled, _) = client::request(&f.socket, attach(id, None)).await.unwrap();
    // Far more output than the stalled viewer's socket and the buffer hold.
    type_line(
        &mut live,
        "head -c 8000000 /dev/zero | tr '\\0' y; echo; echo flood-$((3+4))",
    )
    .await;
    read_until(&mut live, "flood-7").await;
    // The live viewer's echo still comes back at once (the old fan-out
    // waited 30 s on the stalled one first: longer than WAIT).
    for n in 0..5 {
        type_line(&mut live, &format!("echo echo-{n}-$((n=0))")).await;
        read_until(&mut live, &format!("echo-{n}-0")).await;
    }
    // The stalled viewer, reading at last, is told it skipped ahead, then
    // gets the current output.
    let out = read_until(&mut stalled, "echo-4-0").await;
    assert!(
        out.contains("<skip "),
        "no skip notice in {} bytes",
        out.len()
    );
}

/// A client that opens terminals and leaves them cannot lock the session's
/// owner out: at the cap the shell detached the longest gives way (only
/// when all are attached is a new one refused, and init's connection cap
/// comes first).
#[tokio::test]
async fn detached_terminals_give_way_at_the_cap() {
    let f = start(Duration::from_secs(900)).await;
    let cap = warren_init::server::MAX_TERMINALS;
    let mut first = None;
    for i in 0..cap {
        let (c, r) = client::request(&f.socket, open_op()).await.unwrap();
        if i == 0 {
            first = r.terminal;
        }
        drop(c); // detached at once
    }
    // One more: it opens, and the first (detached the longest) is gone.
    let (mut owner, r) = client::request(&f.socket, open_op()).await.unwrap();
    assert!(r.ok, "{r:?}");
    type_line(&mut owner, "echo owner-$((4*4))").await;
    read_until(&mut owner, "owner-16").await;
    let gone = client::request(&f.socket, attach(first.unwrap(), None)).await;
    assert!(
        matches!(
            &gone,
            Err(client::ClientError::Refused {
                code: ErrorCode::NotFound,
                ..
            })
        ),
        "the longest-detached terminal is still there: {:?}",
        gone.map(|(_, r)| r)
    );
}

/// An attach says where the output ends, so a resume asked past it is
/// told apart from lost bytes.
#[tokio::test]
async fn attach_names_the_end_of_the_output() {
    let f = start(Duration::from_secs(60)).await;
    let (mut c, resp) = client::request(&f.socket, open_op()).await.unwrap();
    let id = resp.terminal.unwrap();
    type_line(&mut c, "echo end-$((5*5))").await;
    let all = read_until(&mut c, "end-25").await.len() as u64;
    let (_c2, r) = client::request(&f.socket, attach(id, Some(all + 1_000_000)))
        .await
        .unwrap();
    let end = r.end.unwrap();
    assert!(end >= all, "end {end} before what was read ({all})");
    assert!(r.offset.unwrap() <= end);
}

/// Acks carry the PTY's echo state only when asked (`echo_state`), so an
/// older agent keeps getting the 8-byte acks it reads; asked, a key written
/// at a canonical no-echo prompt (`stty -echo`, as `read -s` does) is acked
/// with `noecho`, and one written where the terminal echoes is not.
#[tokio::test]
async fn acks_report_a_no_echo_prompt_only_when_asked() {
    let f = start(Duration::from_secs(60)).await;
    let open = |echo_state| Op::Open {
        cols: 80,
        rows: 24,
        env: BTreeMap::new(),
        command: Some(vec!["/bin/sh".into()]),
        input: Some("echo1".into()),
        echo_state,
    };
    // The next ack's echo state, once the stream reaches `upto`.
    async fn ack_at(c: &mut InitConn, upto: u64) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, c.next()).await {
                Ok(Some(Ok(Frame::InputAck { offset, noecho }))) if offset >= upto => {
                    return noecho;
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("no input ack up to {upto}: {other:?}"),
            }
        }
    }
    let (mut old, resp) = client::request(&f.socket, open(false)).await.unwrap();
    assert!(!resp.echo_state);
    type_line(&mut old, "echo plain-$((1+1))").await;
    assert_eq!(
        ack_at(&mut old, 1).await,
        None,
        "an 8-byte ack when not asked"
    );

    let (mut c, resp) = client::request(&f.socket, open(true)).await.unwrap();
    assert!(resp.echo_state);
    let mut sent = 0u64;
    let line = "echo echoing-$((2+2))\n";
    type_line(&mut c, line.trim_end()).await;
    sent += line.len() as u64;
    assert_eq!(ack_at(&mut c, sent).await, Some(false));
    read_until(&mut c, "echoing-4").await;
    // A prompt that does not echo: wait until the shell has switched.
    let line = "stty -echo; echo quiet-$((3+3))\n";
    type_line(&mut c, line.trim_end()).await;
    sent += line.len() as u64;
    read_until(&mut c, "quiet-6").await;
    c.send(Frame::Data(Bytes::from_static(b"s"))).await.unwrap();
    sent += 1;
    assert_eq!(
        ack_at(&mut c, sent).await,
        Some(true),
        "a key at a no-echo prompt"
    );
}

/// A shell exits while a program it left behind prints to the terminal:
/// the exit still reaches the client, after the output.
#[tokio::test]
async fn an_exit_arrives_while_a_program_left_behind_prints() {
    let f = start(Duration::from_secs(60)).await;
    let (mut c, _) = client::request(&f.socket, open_op()).await.unwrap();
    // In a session of its own (the shell's exit does not signal it), and
    // bounded in time whatever happens to this test.
    type_line(&mut c, "setsid timeout 20 yes left-behind & exit 7").await;
    let mut got = 0usize;
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match c.next().await {
                Some(Ok(Frame::Data(b))) => got += b.len(),
                Some(Ok(Frame::Exit(code))) => return code,
                Some(Ok(Frame::Skip(_) | Frame::InputAck { .. })) => {}
                other => panic!("unexpected {other:?} after {got} bytes"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no exit after {got} bytes of output"));
    assert_eq!(code, 7);
}
