//! The tunnel alone, in this process: a relay-side QUIC endpoint and an
//! agent-side client on loopback; stream throughput and stream-open rate
//! beside plain TCP on loopback, in the same run.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_tunnel::client::Backoff;
use warren_tunnel::loopback::{LoopbackRelay, Source};
use warren_tunnel::proto::{StreamHeader, StreamKind};

use crate::{Args, Stats};

const SECRET: &str = "loadtest-tunnel-secret";

async fn drain_for(mut r: impl tokio::io::AsyncRead + Unpin, until: tokio::time::Instant) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout_at(until, r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got += n as u64,
            _ => break,
        }
    }
    got
}

pub async fn run(args: &Args, stats: &Arc<Stats>) -> anyhow::Result<Value> {
    let relay = LoopbackRelay::start(SECRET)?;
    let registry = relay.registry.clone();
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let tracker = TaskTracker::new();
    relay.connect(
        "loadtest",
        Arc::new(Source),
        Backoff::default(),
        stop.clone(),
        &tracker,
    )?;
    if !registry
        .wait_until(Duration::from_secs(10), |n| n.contains("loadtest"))
        .await
    {
        anyhow::bail!("the in-process tunnel did not connect");
    }
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let taddr = tcp.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut one = [0u8; 1];
                if s.read_exact(&mut one).await.is_err() || one[0] == b'c' {
                    return;
                }
                let buf = vec![b'x'; 64 * 1024];
                while s.write_all(&buf).await.is_ok() {}
            });
        }
    });
    let hdr = |kind| StreamHeader {
        session: "loadtest".into(),
        kind,
        request_id: "lt".into(),
        client_addr: None,
    };
    let streams = args.terminals.clamp(1, 256);
    let secs = (args.duration / 2).max(1);

    // Throughput, each for half the duration, `--terminals` streams at once.
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut js = tokio::task::JoinSet::new();
    for _ in 0..streams {
        js.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(taddr).await?;
            s.write_all(b"s").await?;
            Ok::<_, anyhow::Error>(drain_for(s, until).await)
        });
    }
    let mut tcp_bytes = 0;
    while let Some(r) = js.join_next().await {
        tcp_bytes += r??;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    for _ in 0..streams {
        let (reg, h) = (registry.clone(), hdr(StreamKind::Port(19)));
        js.spawn(async move {
            let s = reg.open_stream("loadtest", &h).await?;
            Ok::<_, anyhow::Error>(drain_for(s, until).await)
        });
    }
    let mut quic_bytes = 0;
    while let Some(r) = js.join_next().await {
        quic_bytes += r??;
    }
    stats
        .bytes_received
        .fetch_add(tcp_bytes + quic_bytes, Ordering::Relaxed);

    // Stream opens, one after another, for a bounded count.
    let n = 2000;
    stats.measuring.store(true, Ordering::Relaxed);
    let t = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        let s = registry
            .open_stream("loadtest", &hdr(StreamKind::Port(7)))
            .await?;
        stats.record(t0.elapsed().as_micros() as u64);
        drop(s);
    }
    let quic_open_rate = n as f64 / t.elapsed().as_secs_f64();
    stats.measuring.store(false, Ordering::Relaxed);
    let t = Instant::now();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(taddr).await?;
        s.write_all(b"c").await?;
        let _ = s.read(&mut [0u8; 1]).await;
    }
    let tcp_open_rate = n as f64 / t.elapsed().as_secs_f64();
    stop.cancel();
    let (tq, tt) = (
        quic_bytes as f64 / secs as f64,
        tcp_bytes as f64 / secs as f64,
    );
    Ok(json!({
        "streams": streams,
        "seconds_each": secs,
        "tunnel_bytes_per_sec": tq,
        "tcp_loopback_bytes_per_sec": tt,
        "throughput_ratio": tq / tt.max(1.0),
        "tunnel_stream_opens_per_sec": quic_open_rate,
        "tcp_connects_per_sec": tcp_open_rate,
    }))
}
