//! Recording pieces written in groups: every recorded terminal on every
//! worker sends a piece about once a second, and one transaction per piece
//! (a commit, and with SQLite a sync of the log) made control's database
//! the cost of recording at scale (issue 25: a fifth of `warren up`'s CPU
//! at 200 recorded terminals). Pieces that arrive within [`GATHER`] of each
//! other share one transaction; each request still gets its own answer.
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::store::{Appended, Piece, Result, Store};

/// How long the first piece of a group waits for others. A piece's answer
/// only paces its recorder (which sends at most one a second): the wait
/// costs nothing a user sees.
pub const GATHER: Duration = Duration::from_millis(25);
/// At most this many pieces per transaction.
pub const MAX_PIECES: usize = 256;
/// At most this many bytes of pieces per transaction.
pub const MAX_BYTES: usize = 8 << 20;
/// Pieces waiting for the writer; past this, requests wait their turn
/// (back-pressure on the workers, not memory).
const QUEUE: usize = 1024;

type Reply = oneshot::Sender<Result<Appended>>;

/// The group writer: [`Pieces::append`] hands a piece to a task that
/// writes groups of them.
pub struct Pieces {
    tx: mpsc::Sender<(Piece, Reply)>,
}

impl Pieces {
    /// Starts the writer on `store`; it stops when this is dropped.
    pub fn start(store: Store) -> Pieces {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write(store, rx));
        Pieces { tx }
    }

    /// Appends `piece` (with the pieces that arrive beside it) and says
    /// what became of it.
    pub async fn append(&self, piece: Piece) -> Result<Appended> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((piece, reply)).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> crate::store::StoreError {
    crate::store::StoreError::Db(sqlx::Error::PoolClosed)
}

async fn write(store: Store, mut rx: mpsc::Receiver<(Piece, Reply)>) {
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + GATHER;
        let mut bytes = first.0.data.len();
        let mut group = vec![first];
        while group.len() < MAX_PIECES && bytes < MAX_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => {
                    bytes += p.0.data.len();
                    group.push(p);
                }
                // The wait is over, or every sender is gone (this group
                // is still written).
                Ok(None) | Err(_) => break,
            }
        }
        let (pieces, replies): (Vec<Piece>, Vec<Reply>) = group.into_iter().unzip();
        match store.append_recordings(&pieces).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            // One piece must not fail the others: each is tried alone
            // (the failed group kept nothing of them).
            Err(e) if pieces.len() > 1 => {
                warn!(
                    pieces = pieces.len(),
                    "a group of recording pieces failed ({e}); writing them one by one"
                );
                for (piece, reply) in pieces.iter().zip(replies) {
                    let one = store
                        .append_recordings(std::slice::from_ref(piece))
                        .await
                        .map(|mut v| v.pop().unwrap_or(Appended::Full));
                    let _ = reply.send(one);
                }
            }
            Err(e) => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
}
