//! The image command's output on its way to the container log.
//!
//! The container log is the engine's: dockerd reads it and encodes it on the
//! worker's CPU, outside every session limit. So nothing a tenant controls
//! writes to it directly: init's own stdout and stderr stay with init (which
//! is not dumpable, so `/proc/1/fd/1` is closed to the session), and the
//! image's command writes into a pipe that init drains at once and forwards
//! at a bounded rate, dropping the excess with a notice. Draining costs the
//! session's own CPU; the engine sees at most `rate` bytes a second.
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Bytes a second forwarded to the container log, after the burst.
pub const LOG_RATE: u64 = 16 * 1024;
/// Bytes forwarded at once after a quiet spell (an engine's start-up logs).
pub const LOG_BURST: u64 = 256 * 1024;

/// Copies `from` to `to` until `from` ends, at most `burst` bytes at once
/// and `rate` a second on average; the rest is read and dropped, and a line
/// saying how much was dropped follows (at most once a second). A failing
/// `to` does not stop the draining. Returns the bytes dropped.
pub async fn forward<R, W>(mut from: R, mut to: W, rate: u64, burst: u64) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut tokens = burst as f64;
    let mut last = Instant::now();
    let mut pending = 0u64; // dropped, not yet announced
    let mut dropped = 0u64;
    let mut noticed: Option<Instant> = None;
    let mut writable = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64() * rate as f64).min(burst as f64);
        last = now;
        let take = (tokens as usize).min(n);
        if take > 0 && writable {
            writable = to.write_all(&buf[..take]).await.is_ok();
            tokens -= take as f64;
        }
        pending += (n - take) as u64;
        dropped += (n - take) as u64;
        if pending > 0 && noticed.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            let line = format!(
                "\nwarren-init: dropped {pending} bytes of output (the container log takes {rate} bytes/s)\n"
            );
            if writable {
                writable = to.write_all(line.as_bytes()).await.is_ok();
            }
            pending = 0;
            noticed = Some(now);
        }
    }
    if pending > 0 && writable {
        let line = format!("\nwarren-init: dropped {pending} bytes of output\n");
        let _ = to.write_all(line.as_bytes()).await;
    }
    let _ = to.flush().await;
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_cut_to_the_burst_and_the_rest_announced() {
        let flood = vec![b'x'; 1 << 20];
        let mut out = Vec::new();
        let dropped = forward(&flood[..], &mut out, 1000, 4096).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with(&"x".repeat(4096)));
        assert_eq!(out.iter().filter(|&&b| b == b'x').count(), 4096);
        assert_eq!(dropped, (1 << 20) - 4096);
        // Every dropped byte is announced, once a second and at the end.
        let announced: u64 = text
            .split("dropped ")
            .skip(1)
            .map(|t| t.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(announced, dropped);
    }

    #[tokio::test(start_paused = true)]
    async fn output_within_the_rate_passes_whole() {
        let (mut w, r) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for _ in 0..10 {
                w.write_all(&[b'y'; 500]).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut out = Vec::new();
        let dropped = forward(r, &mut out, 1000, 1000).await;
        writer.await.unwrap();
        assert_eq!(dropped, 0);
        assert_eq!(out, vec![b'y'; 5000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_log_does_not_stop_the_draining() {
        struct Closed;
        impl AsyncWrite for Closed {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let flood = vec![b'z'; 100_000];
        forward(&flood[..], Closed, 1000, 1000).await;
    }
}
