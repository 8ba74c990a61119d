//! Recordings: `GET /v1/sessions/{id}/recordings` and each terminal's
//! asciicast at `…/recordings/{terminal}`; and the worker's pieces
//! (`POST /internal/v1/recordings/{id}/{terminal}?seq=N`).
use axum::body::Bytes;
use warren_proto::share::{RECORDING_PIECE_MAX, Recording, RecordingList};

use super::*;
use crate::store::{Appended, Piece};

#[derive(Debug, Deserialize)]
pub(super) struct PieceQuery {
    seq: i64,
}

#[utoipa::path(get, path = "/v1/sessions/{id}/recordings", tag = "sharing",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "the session's terminals' recordings (also after it ended, for sessions.recording_keep_hours)", body = RecordingList),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 404, description = "no such session (or another tenant's)", body = ErrorBody)))]
pub(super) async fn list_recordings(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RecordingList>> {
    let s = c.owned(&p, &id).await?;
    let recordings = c
        .store
        .recordings(&s.id)
        .await?
        .into_iter()
        // A terminal whose recording never got a byte in has nothing to get.
        .filter(|r| r.bytes > 0)
        .map(|r| Recording {
            terminal: r.terminal,
            started_at: r.started_at / 1000,
            bytes: r.bytes,
            truncated: r.truncated,
            url: format!("/v1/sessions/{}/recordings/{}", s.id, r.terminal),
        })
        .collect();
    Ok(Json(RecordingList { recordings }))
}

#[utoipa::path(get, path = "/v1/sessions/{id}/recordings/{terminal}", tag = "sharing",
    params(("id" = String, Path, description = "session id"), ("terminal" = u32, Path, description = "terminal number")),
    responses((status = 200, description = "asciicast v2 (`application/x-asciicast`): a header line, then `[time, \"o\"|\"r\", data]` lines", content_type = "application/x-asciicast", body = String),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 404, description = "no such session (or another tenant's), or no such recording", body = ErrorBody)))]
pub(super) async fn get_recording(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path((id, terminal)): Path<(String, String)>,
) -> ApiResult<Response> {
    let s = c.owned(&p, &id).await?;
    let terminal: u32 = terminal.parse().map_err(|_| {
        ApiError::not_found(format!("no recording {terminal}: terminals are numbered"))
    })?;
    let Some(pieces) = c.store.recording(&s.id, terminal).await? else {
        return Err(ApiError::not_found(format!(
            "session {id} has no recording of terminal {terminal}"
        )));
    };
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &s.tenant,
            action: "recording.download",
            target: &s.id,
            detail: &format!("terminal {terminal}"),
            ..NewAudit::OK
        })
        .await;
    let body = pieces.concat();
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/x-asciicast"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"recording.cast\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// A piece of a recording from the session's worker.
pub(super) async fn append_recording(
    State(c): State<Arc<Control>>,
    NodeCaller(node): NodeCaller,
    Path((id, terminal)): Path<(String, u32)>,
    Query(q): Query<PieceQuery>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    if !is_session_id(&id) {
        return Err(ApiError::not_found("no such session"));
    }
    if body.len() > RECORDING_PIECE_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a piece is at most {RECORDING_PIECE_MAX} bytes"),
        ));
    }
    let data = String::from_utf8(Vec::from(body))
        .map_err(|_| ApiError::invalid("a recording piece is UTF-8 text"))?;
    // Asciicast lines escape control characters; a raw NUL is no
    // recording's, and PostgreSQL refuses it in text (it would fail the
    // group it was written with).
    if data.contains('\0') {
        return Err(ApiError::invalid(
            "a recording piece holds no NUL character (asciicast escapes it)",
        ));
    }
    let s = c.store.session(&id).await?;
    if s.node != node {
        return Err(ApiError::forbidden("the session is not on this node"));
    }
    if !c.cfg.sessions.record_terminals {
        return Err(ApiError::forbidden(
            "recording is off (sessions.record_terminals)",
        ));
    }
    if q.seq < 0 {
        return Err(ApiError::invalid("seq must be 0 or more"));
    }
    let max = (c.cfg.sessions.max_recording_mb as i64).saturating_mul(1 << 20);
    let tenant_max = (c.cfg.sessions.tenant_max_recording_mb as i64).saturating_mul(1 << 20);
    let piece = Piece {
        session: s.id,
        tenant: s.tenant,
        terminal,
        seq: q.seq,
        data,
        max_bytes: max,
        tenant_max_bytes: tenant_max,
    };
    // With the pieces that arrive beside it, in one transaction.
    match c.pieces.append(piece).await? {
        Appended::Stored | Appended::Duplicate => Ok(StatusCode::NO_CONTENT),
        Appended::Full => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "recording_full",
            "the recordings reached sessions.max_recording_mb (per session) or sessions.tenant_max_recording_mb",
        )),
    }
}
