//! The sandbox API on a tunnel stream (`/_warren/api/…`): exec and files,
//! served through the session's `warren-init`, never by the agent touching
//! a container path itself. The relay lets a request through only with a
//! Bearer token of the `exec` scope for this session; one request per
//! stream.
//!
//! - `exec`: a command on pipes with a time limit, its output bounded.
//! - `files`: read, write, list, mkdir, remove.
//! - `snapshot`: commit the container (control only; the agent runs it).
use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;
use warren_init::client::ClientError;
use warren_init::proto::ErrorCode;
use warren_proto::sandbox::{EXEC_PATH, FILES_PATH, SNAPSHOT_PATH};

use super::initsock::InitTarget;

mod exec;
mod files;
mod snapshot;
mod stream;

pub use snapshot::{SnapshotError, SnapshotJob, SnapshotJobs};

use warren_proto::sandbox::AGENT_HEADER;

/// The answer when a session has [`stream::MAX_PER_SESSION`] requests in
/// flight already.
fn busy_answer() -> String {
    let body = json!({"error": {"code": "busy", "message": format!(
        "this session has {} sandbox API requests running; try again when one ends",
        stream::MAX_PER_SESSION
    )}})
    .to_string();
    format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n{AGENT_HEADER}: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// What the handlers share: the session's init, and the way to the agent
/// for commits.
#[derive(Clone)]
pub(crate) struct ApiState {
    init: Arc<InitTarget>,
    snapshots: Option<SnapshotJobs>,
}

impl axum::extract::FromRef<ApiState> for Arc<InitTarget> {
    fn from_ref(s: &ApiState) -> Self {
        s.init.clone()
    }
}

/// An answer in the API's error shape.
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// What init's refusal means to an API client.
impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let ClientError::Refused { code, message } = e else {
            // Its words name worker pids and paths: the log keeps them.
            tracing::warn!("sandbox API: the session's init did not serve the request: {e}");
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "session_unreachable",
                "the session's init did not serve the request",
            );
        };
        let (status, name) = match code {
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorCode::NotADirectory => (StatusCode::CONFLICT, "not_a_directory"),
            ErrorCode::IsADirectory => (StatusCode::CONFLICT, "is_a_directory"),
            ErrorCode::NotAFile => (StatusCode::CONFLICT, "not_a_file"),
            ErrorCode::NotEmpty => (StatusCode::CONFLICT, "not_empty"),
            ErrorCode::DiskFull => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            ErrorCode::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            ErrorCode::BadPath | ErrorCode::BadEnv | ErrorCode::BadCommand => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
            }
            ErrorCode::SpawnFailed => (StatusCode::UNPROCESSABLE_ENTITY, "spawn_failed"),
            // An older init does not know the request.
            ErrorCode::BadFrame | ErrorCode::VersionMismatch | ErrorCode::Unknown => {
                (StatusCode::NOT_IMPLEMENTED, "session_too_old")
            }
            _ => (StatusCode::BAD_GATEWAY, "session_error"),
        };
        let message = if name == "session_too_old" {
            format!(
                "this session's init cannot serve the sandbox API (restart the session): {message}"
            )
        } else {
            message
        };
        ApiError::new(status, name, message)
    }
}

/// Serves one HTTP/1.1 request of the sandbox API on `stream`.
pub async fn serve<S>(stream: S, init: InitTarget, snapshots: Option<SnapshotJobs>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let commits = snapshots.is_some();
    let state = ApiState {
        init: Arc::new(init),
        snapshots,
    };
    let app = axum::Router::new()
        .route(EXEC_PATH, axum::routing::post(exec::run))
        .route(
            FILES_PATH,
            axum::routing::get(files::get)
                .put(files::put)
                .post(files::post)
                .delete(files::delete),
        )
        .route(
            SNAPSHOT_PATH,
            if commits {
                axum::routing::post(snapshot::commit)
            } else {
                axum::routing::post(|| async {
                    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
                })
            },
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        // Uploads stream through; exec bodies are bounded by its handler.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(
            |mut r: Response| async move {
                r.headers_mut()
                    .insert(AGENT_HEADER, axum::http::HeaderValue::from_static("1"));
                r
            },
        ))
        .with_state(state);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!("sandbox API stream: {e}");
    }
}
