//! Recording pieces written in groups: every recorded terminal on every
//! worker sends a piece about once a second, and one transaction per piece
//! (a commit, and with SQLite a sync of the log) made control's database
//! the cost of recording at scale (issue 25: a fifth of `warren up`'s CPU
//! at 200 recorded terminals). Pieces that arrive within [`GATHER`] of each
//! other share one transaction; each request still gets its own answer.
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::store::{Appended, Piece, Result, Store, StoreError};

/// How long the first piece of a group waits for others. A piece's answer
/// only paces its recorder (which sends at most one a second): the wait
/// costs nothing a user sees.
pub const GATHER: Duration = Duration::from_millis(25);
/// At most this many pieces per transaction.
pub const MAX_PIECES: usize = 256;
/// At most this many bytes of pieces per transaction (one piece more may
/// pass it by at most a piece's size).
pub const MAX_BYTES: usize = 8 << 20;
/// Pieces waiting for the writer; past this, requests wait their turn
/// (back-pressure on the workers).
const QUEUE: usize = 1024;
/// A piece not written within this is answered "try again", as a request
/// that waited this long for a database connection was before groups.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

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
    /// what became of it. A piece whose caller stopped waiting before its
    /// group was written is not written (its worker sends it again).
    pub async fn append(&self, piece: Piece) -> Result<Appended> {
        let (reply, answer) = oneshot::channel();
        let asked = async {
            if self.tx.send((piece, reply)).await.is_err() {
                return Err(unavailable("the recording writer stopped"));
            }
            answer
                .await
                .unwrap_or_else(|_| Err(unavailable("the recording writer dropped a piece")))
        };
        tokio::time::timeout(ANSWER_WITHIN, asked)
            .await
            .unwrap_or_else(|_| Err(unavailable("no answer within 30 s")))
    }
}

fn unavailable(why: &str) -> StoreError {
    StoreError::Unavailable(why.to_string())
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
        // In a task of its own, awaited: a panic fails this group's
        // requests (their replies are dropped), not every later one.
        if let Err(e) = tokio::spawn(write_group(store.clone(), group)).await {
            error!("writing a group of recording pieces failed: {e}");
        }
    }
}

async fn write_group(store: Store, mut group: Vec<(Piece, Reply)>) {
    // Pieces whose requests gave up are left out: written late, one could
    // answer the next piece its recorder sends under the same number.
    group.retain(|(_, reply)| !reply.is_closed());
    if group.is_empty() {
        return;
    }
    // Rows are locked in one order in every group (tenant, session,
    // terminal, seq), so two control replicas writing groups on one
    // PostgreSQL database never wait on each other in a cycle; a
    // terminal's pieces keep their order.
    group.sort_by(|(a, _), (b, _)| {
        (&a.tenant, &a.session, a.terminal, a.seq).cmp(&(&b.tenant, &b.session, b.terminal, b.seq))
    });
    let (pieces, replies): (Vec<Piece>, Vec<Reply>) = group.into_iter().unzip();
    match store.append_recordings(&pieces).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        // A statement one piece made fail: each is tried alone (the failed
        // group kept nothing of them), so it fails by itself.
        Err(StoreError::Db(sqlx::Error::Database(e))) if pieces.len() > 1 => {
            warn!(
                pieces = pieces.len(),
                "a group of recording pieces failed ({e}); writing them one by one"
            );
            for (piece, reply) in pieces.iter().zip(replies) {
                if reply.is_closed() {
                    continue;
                }
                let one = store
                    .append_recordings(std::slice::from_ref(piece))
                    .await
                    .map(|mut v| v.pop().unwrap_or(Appended::Full));
                let _ = reply.send(one);
            }
        }
        // The database itself (a connection, a timeout): one piece at a
        // time would wait as long for each; all are answered "try again".
        Err(e) => {
            warn!(pieces = pieces.len(), "recording pieces not written: {e}");
            for reply in replies {
                let _ = reply.send(Err(unavailable("the database did not take the pieces")));
            }
        }
    }
}
