//! Sharing's cost, measured on the whole stack (`warren up`'s wiring on
//! loopback, real Docker), in the same run:
//! - the owner's keystroke echo (one byte typed into `cat`, until its echo
//!   is back) with 0, 1 and 10 read-only viewers attached through share
//!   links, each viewer reading everything;
//! - one terminal's output (4 MB without newlines, 3 times: under the
//!   session's 16 MB recording bound) with terminals recorded and, on a second stack, not recorded.
//!
//! ```sh
//! scripts/build-init.sh && scripts/build-images.sh mini
//! cargo run --release -p warren --example sharebench
//! ```
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const ECHOES: usize = 300;
const OUTPUT_MB: usize = 4;
const REPS: usize = 3;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn ws(http: std::net::SocketAddr, id: &str, query: &str) -> Ws {
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let url = format!(
        "ws://{id}.warren.localhost:{}/_warren/terminal?{query}",
        http.port()
    );
    tokio_tungstenite::client_async(url, tcp).await.unwrap().0
}

/// Reads until `pred` holds on the bytes seen; the bytes.
async fn read_until(w: &mut Ws, mut pred: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while !pred(&seen) {
            match w.next().await {
                Some(Ok(Message::Binary(b))) => seen.extend_from_slice(&b),
                Some(Ok(_)) => {}
                other => panic!("terminal ended: {other:?}"),
            }
        }
    })
    .await
    .expect("timed out");
    seen
}

async fn stack(run: &str, record: bool) -> warren::stack::Stack {
    let mut opts = warren::stack::StackOptions::loopback(
        "warren.bench",
        run,
        "warren/session:mini",
        4096,
        512,
    );
    opts.data_dir = opts.data_dir.join("stack");
    opts.record_terminals = record;
    warren::stack::start(opts).await.unwrap()
}

async fn session(st: &warren::stack::Stack) -> (String, String) {
    let c = reqwest::Client::new();
    let v: serde_json::Value = c
        .post(format!("{}/v1/sessions", st.control_url))
        .bearer_auth(&st.admin_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        v["id"].as_str().unwrap().into(),
        v["token"].as_str().unwrap().into(),
    )
}

/// p50 and p99 of the owner's echo, in ms, with `viewers` watching.
async fn echo(st: &warren::stack::Stack, id: &str, owner: &mut Ws, viewers: usize) -> (f64, f64) {
    let http = st.http.unwrap();
    let c = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..viewers {
        let v: serde_json::Value = c
            .post(format!("{}/v1/sessions/{id}/share", st.control_url))
            .bearer_auth(&st.admin_key)
            .json(&json!({"mode": "read", "name": format!("viewer{i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut w = ws(http, id, &format!("token={}", v["token"].as_str().unwrap())).await;
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(_)) = w.next().await {}
        }));
    }
    // Let the viewers' attach (and its replay) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for i in 0..ECHOES {
        let ch = b'a' + (i % 26) as u8;
        let t0 = Instant::now();
        owner.send(Message::Binary(vec![ch].into())).await.unwrap();
        read_until(owner, |b| b.contains(&ch)).await;
        h.record(t0.elapsed().as_micros() as u64).unwrap();
    }
    // A fresh line for the next round.
    owner
        .send(Message::Binary(b"\n".to_vec().into()))
        .await
        .unwrap();
    for t in tasks {
        t.abort();
    }
    (
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

/// MB/s of one terminal's output (median of [`REPS`]).
async fn output(owner: &mut Ws) -> f64 {
    let mut rates = Vec::new();
    for r in 0..REPS {
        let bytes = OUTPUT_MB << 20;
        let marker = format!("done-{}", 7 * (r + 1));
        let cmd = format!(
            "head -c {bytes} /dev/zero | tr '\\\\0' x; echo; echo done-$((7*{}))\n",
            r + 1
        );
        let t0 = Instant::now();
        owner
            .send(Message::Binary(cmd.into_bytes().into()))
            .await
            .unwrap();
        let m = marker.clone();
        let seen = read_until(owner, move |b| {
            b.len() > bytes && b.windows(m.len()).any(|w| w == m.as_bytes())
        })
        .await;
        let secs = t0.elapsed().as_secs_f64();
        rates.push(seen.len() as f64 / secs / 1e6);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
}

#[tokio::main]
async fn main() {
    let pid = std::process::id();
    let st = stack(&format!("sharebench-{pid}"), true).await;
    let (id, token) = session(&st).await;
    let mut owner = ws(st.http.unwrap(), &id, &format!("token={token}")).await;
    owner
        .send(Message::Binary(b"cat\n".to_vec().into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("| viewers | echo p50 | echo p99 |\n| --- | --- | --- |");
    for viewers in [0, 1, 10] {
        let (p50, p99) = echo(&st, &id, &mut owner, viewers).await;
        println!("| {viewers} | {p50:.2} ms | {p99:.2} ms |");
    }
    // Out of `cat`, then the output runs.
    owner.send(Message::Binary(vec![4].into())).await.unwrap();
    let recorded = output(&mut owner).await;
    st.stop.cancel();
    drop(owner);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st2 = stack(&format!("sharebench2-{pid}"), false).await;
    let (id2, token2) = session(&st2).await;
    let mut owner2 = ws(st2.http.unwrap(), &id2, &format!("token={token2}")).await;
    let plain = output(&mut owner2).await;
    println!(
        "\n| one terminal's output ({OUTPUT_MB} MB, median of {REPS}) | MB/s |\n| --- | --- |\n| recorded | {recorded:.1} |\n| not recorded | {plain:.1} |\n| ratio | {:.2} |",
        recorded / plain
    );
    st2.stop.cancel();
    for (label, run) in [("sharebench", pid), ("sharebench2", pid)] {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker rm -f $(docker ps -aq --filter label=warren.bench={label}-{run}) 2>/dev/null; docker network rm warren-test-{label}-{run} 2>/dev/null"
            ))
            .status();
    }
}
