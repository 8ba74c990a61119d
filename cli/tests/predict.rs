//! Predictive echo in Chromium over a slow link: a forwarder the test runs
//! adds 50 ms each way between the browser and the relay (this kernel has
//! no netem qdisc; bytes keep their order, only their time changes).
//! web/e2e/predict.mjs checks that guesses appear before the echo, that
//! none is left at rest, that nothing typed at `read -s` is drawn, and
//! measures keystroke → glyph with prediction off and on.
#![allow(clippy::unwrap_used)]

mod common;
use common::call;

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards `listener`'s connections to `to`, each byte `delay` later than
/// it came, in order.
async fn delaying_forwarder(listener: TcpListener, to: std::net::SocketAddr, delay: Duration) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let Ok(upstream) = TcpStream::connect(to).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            tokio::join!(pipe(cr, uw, delay), pipe(ur, cw, delay));
        });
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let at = tokio::time::Instant::now() + delay;
                if tx.send((at, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predicted_echo_over_a_slow_link_in_a_real_browser() {
    if !warren_testkit::chromium_or_skip() {
        return;
    }
    let Some((_run, st)) = common::stack("predict", "warren/session:mini", 128).await else {
        return;
    };
    let (s, a) = call(
        &st.control_url,
        "POST",
        "/v1/sessions",
        &st.admin_key,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fwd = tokio::spawn(delaying_forwarder(
        listener,
        st.http.unwrap(),
        Duration::from_millis(50),
    ));
    let url = format!(
        "http://{id}.warren.localhost:{port}/?token={}",
        a["token"].as_str().unwrap()
    );
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
    let out = tokio::process::Command::new("node")
        .arg("e2e/predict.mjs")
        .arg(&url)
        .current_dir(&web)
        .output()
        .await
        .unwrap();
    fwd.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    println!("keystroke to glyph at 100 ms round trip: {v}");
}
