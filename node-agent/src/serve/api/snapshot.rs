//! `POST /_warren/api/snapshot` `{"image"}`: commit the session as a
//! snapshot image. Only control gets there: the relay opens this path for
//! a token of the `snapshot` scope alone, which no API caller can obtain.
//! The commit itself is the agent's (it needs the engine): the request is
//! handed over as a [`SnapshotJob`] and its answer awaited.
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tokio::sync::{mpsc, oneshot};
use warren_proto::sandbox::{SnapshotDone, SnapshotRequest, snapshot_id};

use super::{ApiError, ApiState};

/// Why a commit failed, as the API may say it.
pub enum SnapshotError {
    /// The request or the worker's state: said as is.
    Refused(String),
    /// The engine's words stay in the agent's log.
    Failed,
}

/// A commit for the agent to run.
pub struct SnapshotJob {
    pub image: String,
    pub version: i64,
    pub reply: oneshot::Sender<Result<u64, SnapshotError>>,
}

pub type SnapshotJobs = mpsc::Sender<SnapshotJob>;

pub(super) async fn commit(
    State(st): State<ApiState>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<SnapshotDone>), ApiError> {
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        axum::body::to_bytes(body, 4096),
    )
    .await
    .map_err(|_| ApiError::bad("the snapshot request did not arrive within 30 s"))?
    .map_err(|_| ApiError::bad("a snapshot request is at most 4 KiB"))?;
    let req: SnapshotRequest = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad("not a snapshot request: {\"image\"}"))?;
    if snapshot_id(&req.image).is_none() {
        return Err(ApiError::bad("the image is not a snapshot name"));
    }
    let (reply, answer) = oneshot::channel();
    let gone = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "agent_stopping",
            "the worker's agent is stopping",
        )
    };
    let Some(jobs) = &st.snapshots else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        ));
    };
    jobs.send(SnapshotJob {
        image: req.image.clone(),
        version: req.version,
        reply,
    })
    .await
    .map_err(|_| gone())?;
    match answer.await.map_err(|_| gone())? {
        Ok(size_bytes) => Ok((
            StatusCode::CREATED,
            Json(SnapshotDone {
                image: req.image,
                size_bytes,
            }),
        )),
        Err(SnapshotError::Refused(m)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "snapshot_refused",
            m,
        )),
        Err(SnapshotError::Failed) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "snapshot_failed",
            "the worker could not save the session",
        )),
    }
}
