//! A recorder's view of a terminal ([`Op::Record`]): its output in batches
//! a few times a second, each write's age kept. A recorder that woke at
//! every write of every terminal was a third of the agent's wake-ups under
//! steady output (docs/benchmarks.md, output per core); with the ages its
//! timeline is as true as when it stamped each write on arrival.
use super::*;

/// The longest a client may ask a batch to wait.
pub(super) const MAX_BATCH: Duration = Duration::from_secs(1);
/// A batch this large goes at once: as large as a frame, so bulk output
/// wakes the recorder no more often than a viewer.
const BATCH_BYTES: u64 = proto::MAX_PAYLOAD as u64;
/// Writes timed apart within one batch, at most: past it, a write shares
/// the time of the one before (a flood of tiny writes stays bounded).
const MAX_MARKS: usize = 64;

/// Serves a recorder until the terminal ends or the recorder goes.
pub(super) async fn serve(
    framed: Framed<UnixStream, InitCodec>,
    term: Arc<Terminal>,
    offset: Option<u64>,
    batch_ms: u32,
) -> io::Result<()> {
    let batch = Duration::from_millis(batch_ms.into()).min(MAX_BATCH);
    let mut wake = term.wake.subscribe();
    let first = term.attach_at(offset);
    let resp = term.attached_response(first);
    let (mut sink, mut stream) = framed.split();
    sink.send(Frame::Response(resp))
        .await
        .map_err(io::Error::other)?;
    let output = async {
        let mut pos = first;
        // (end offset, when it was seen): the writes not yet sent.
        let mut marks: Vec<(u64, Instant)> = Vec::new();
        loop {
            // Marks the wake seen before reading, so a write after the
            // read wakes the wait below.
            wake.borrow_and_update();
            let (end, exit) = term.end_and_exit();
            if end > pos {
                note(&mut marks, end, Instant::now());
            }
            if let Some(first_write) = marks.first().map(|m| m.1) {
                // Gather more until the batch is due or large enough.
                let due = tokio::time::Instant::from_std(first_write + batch);
                let mut exited = exit.is_some();
                while !exited && term.ready_after(pos) < BATCH_BYTES {
                    match tokio::time::timeout_at(due, wake.changed()).await {
                        Ok(Ok(())) => {
                            wake.borrow_and_update();
                            let (end, exit) = term.end_and_exit();
                            note(&mut marks, end, Instant::now());
                            // The last words go at once, then the exit.
                            exited = exit.is_some();
                        }
                        // The batch is due. (The sender cannot be gone: this
                        // holds the terminal.)
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
                pos = send(&mut sink, &term, pos, &mut marks).await?;
                continue;
            }
            if let Some(code) = exit {
                sink.send(Frame::Exit(code))
                    .await
                    .map_err(io::Error::other)?;
                return Ok(());
            }
            // (Never an error while this holds the terminal.)
            if wake.changed().await.is_err() {
                return Ok(());
            }
        }
    };
    // A recorder sends nothing; whatever it sends is dropped.
    let input = async {
        while let Some(f) = stream.next().await {
            if let Err(e) = f {
                return Err(io::Error::other(e.to_string()));
            }
        }
        Ok(())
    };
    tokio::select! {
        r = output => r,
        r = input => r,
    }
}

/// Notes that output up to `end` was written by `at`. `at` is when this
/// task saw it (woken by the reader, or after sending the batch before),
/// a little after the write; past [`MAX_MARKS`] a write takes the time of
/// the one before. The agent bounds every age, so these only blur a
/// recording's times within a batch.
fn note(marks: &mut Vec<(u64, Instant)>, end: u64, at: Instant) {
    let full = marks.len() >= MAX_MARKS;
    match marks.last_mut() {
        Some(last) if last.0 >= end => {}
        Some(last) if full => last.0 = end,
        _ => marks.push((end, at)),
    }
}

/// Sends the batch: each write's bytes after its age, in one flush.
/// Returns the offset past what was sent.
async fn send<S>(
    sink: &mut S,
    term: &Terminal,
    mut pos: u64,
    marks: &mut Vec<(u64, Instant)>,
) -> io::Result<u64>
where
    S: futures_util::Sink<Frame, Error = proto::FrameError> + Unpin,
{
    let sent_at = Instant::now();
    for (end, at) in marks.drain(..) {
        let age = sent_at.saturating_duration_since(at).as_micros();
        let age = u32::try_from(age).unwrap_or(u32::MAX);
        while pos < end {
            let want = usize::try_from(end - pos).unwrap_or(usize::MAX);
            let mut c = term.read_from(pos, want.min(proto::MAX_PAYLOAD));
            if let Some(to) = c.skipped_to {
                // The recorder fell further behind than the terminal keeps.
                sink.feed(Frame::Skip(to)).await.map_err(io::Error::other)?;
                pos = to;
                // Only this write's bytes carry its age; the rest are the
                // next marks'.
                c.data
                    .truncate(usize::try_from(end.saturating_sub(pos)).unwrap_or(usize::MAX));
            }
            if c.data.is_empty() {
                break;
            }
            pos += c.data.len() as u64;
            sink.feed(Frame::Age(age)).await.map_err(io::Error::other)?;
            sink.feed(Frame::Data(c.data.into()))
                .await
                .map_err(io::Error::other)?;
        }
    }
    sink.flush().await.map_err(io::Error::other)?;
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_stay_bounded_and_in_order() {
        let t0 = Instant::now();
        let mut m = Vec::new();
        note(&mut m, 10, t0);
        note(&mut m, 10, t0 + Duration::from_millis(1)); // nothing new
        assert_eq!(m, vec![(10, t0)]);
        for i in 0..1000u64 {
            note(&mut m, 20 + i, t0 + Duration::from_millis(i));
        }
        assert_eq!(m.len(), MAX_MARKS);
        assert_eq!(m.last().unwrap().0, 1019);
        assert!(m.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }
}
