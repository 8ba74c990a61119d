//! The sandbox API's file operations on the in-process init server: bytes
//! round-trip, cut uploads leave nothing, kernel files and FIFOs are refused.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use warren_init::client::{self, InitConn};
use warren_init::proto::{DirEntry, ErrorCode, Frame, Op};

mod common;
use common::*;

async fn upload(socket: &std::path::Path, path: &str, data: &[u8]) -> Result<u64, String> {
    let op = Op::WriteFile {
        path: path.into(),
        mode: None,
    };
    let (mut c, _) = client::request(socket, op)
        .await
        .map_err(|e| e.to_string())?;
    for chunk in data.chunks(60_000) {
        c.send(Frame::Data(Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
    }
    c.send(Frame::Eof).await.unwrap();
    match c.next().await {
        Some(Ok(Frame::Response(r))) if r.ok => Ok(r.size.unwrap_or(0)),
        Some(Ok(Frame::Response(r))) => Err(format!("{:?}: {:?}", r.code, r.message)),
        other => panic!("unexpected {other:?}"),
    }
}

async fn download(socket: &std::path::Path, path: &str) -> Result<Vec<u8>, String> {
    let op = Op::ReadFile { path: path.into() };
    let (mut c, resp) = client::request(socket, op)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    loop {
        match c.next().await {
            Some(Ok(Frame::Data(b))) => out.extend_from_slice(&b),
            Some(Ok(Frame::Exit(0))) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(resp.size, Some(out.len() as u64));
    Ok(out)
}

async fn listing(c: &mut InitConn) -> (Vec<DirEntry>, i32) {
    let mut v = Vec::new();
    loop {
        match c.next().await {
            Some(Ok(Frame::Data(b))) => v.push(serde_json::from_slice(&b).unwrap()),
            Some(Ok(Frame::Exit(code))) => return (v, code),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn files_round_trip_and_bad_paths_are_refused() {
    let f = start(Duration::from_secs(60)).await;
    let root = f.dir.join("files");
    let file = format!("{}/a/b/data.bin", root.display());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(
        upload(&f.socket, &file, &data).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(download(&f.socket, &file).await.unwrap(), data);

    // An overwrite replaces the bytes; no temporary file is left behind.
    upload(&f.socket, &file, b"short").await.unwrap();
    assert_eq!(download(&f.socket, &file).await.unwrap(), b"short");
    let (mut c, _) = client::request(
        &f.socket,
        Op::ListDir {
            path: format!("{}/a/b", root.display()),
        },
    )
    .await
    .unwrap();
    let (entries, cut) = listing(&mut c).await;
    assert_eq!(cut, 0);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (
            entries[0].name.as_str(),
            entries[0].kind.as_str(),
            entries[0].size
        ),
        ("data.bin", "file", 5)
    );

    // A cut upload leaves the old file as it was.
    let (mut c, _) = client::request(
        &f.socket,
        Op::WriteFile {
            path: file.clone(),
            mode: None,
        },
    )
    .await
    .unwrap();
    c.send(Frame::Data(Bytes::from_static(b"partial")))
        .await
        .unwrap();
    drop(c);
    let dir = format!("{}/a/b", root.display());
    warren_testkit_free_wait(|| std::fs::read_dir(&dir).unwrap().count() == 1).await;
    assert_eq!(download(&f.socket, &file).await.unwrap(), b"short");

    // mkdir, then remove (recursive for a non-empty directory).
    let made = format!("{}/x/y/z", root.display());
    client::request(&f.socket, Op::MakeDir { path: made.clone() })
        .await
        .unwrap();
    assert!(std::path::Path::new(&made).is_dir());
    let e = client::request(
        &f.socket,
        Op::Remove {
            path: format!("{}/x", root.display()),
            recursive: false,
        },
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("not_empty"), "{e}");
    client::request(
        &f.socket,
        Op::Remove {
            path: format!("{}/x", root.display()),
            recursive: true,
        },
    )
    .await
    .unwrap();
    assert!(!root.join("x").exists());

    // Refusals, each with its code; the server keeps serving.
    for (op, code) in [
        (
            Op::ReadFile {
                path: "relative".into(),
            },
            ErrorCode::BadPath,
        ),
        (
            Op::ReadFile {
                path: format!("{}/nope", root.display()),
            },
            ErrorCode::NotFound,
        ),
        (Op::ReadFile { path: dir.clone() }, ErrorCode::IsADirectory),
        (
            Op::ReadFile {
                path: "/proc/self/environ".into(),
            },
            ErrorCode::NotAFile,
        ),
        (
            Op::WriteFile {
                path: "/proc/self/fd/1".into(),
                mode: None,
            },
            ErrorCode::NotAFile,
        ),
        (
            Op::WriteFile {
                path: dir.clone(),
                mode: None,
            },
            ErrorCode::IsADirectory,
        ),
        (Op::ListDir { path: file.clone() }, ErrorCode::NotADirectory),
        (
            Op::Remove {
                path: "/".into(),
                recursive: true,
            },
            ErrorCode::BadPath,
        ),
    ] {
        let e = client::request(&f.socket, op.clone()).await.err();
        match e {
            Some(client::ClientError::Refused { code: got, .. }) => assert_eq!(got, code, "{op:?}"),
            other => panic!("{op:?}: {other:?}"),
        }
    }

    // A FIFO is refused at once, never waited on.
    let fifo = root.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let e = tokio::time::timeout(
        WAIT,
        client::request(
            &f.socket,
            Op::ReadFile {
                path: fifo.display().to_string(),
            },
        ),
    )
    .await
    .expect("no hang")
    .err()
    .unwrap();
    assert!(e.to_string().contains("not_a_file"), "{e}");
}

/// Waits for `cond` with a deadline.
async fn warren_testkit_free_wait(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
