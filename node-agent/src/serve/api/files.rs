//! `/_warren/api/files?path=…`: download (`GET`), list (`GET …&list=true`),
//! upload (`PUT`, streamed; the file appears whole or not at all), mkdir
//! (`POST …&mkdir=true`), remove (`DELETE`, `&recursive=true` for a tree).
//! Every path is resolved by the session's init, inside the session.
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use warren_init::client::ClientError;
use warren_init::proto::{DirEntry, ErrorCode, Frame, MAX_PAYLOAD, Op};
use warren_proto::sandbox::{FileEntry, FileList, FilesQuery, MAX_LIST_ENTRIES, check_path};

use super::ApiError;
use crate::serve::initsock::{self, InitTarget};

type Q = Result<Query<FilesQuery>, axum::extract::rejection::QueryRejection>;

/// Time an upload may go without a byte.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// Time one listing may take.
const LIST_TIME: std::time::Duration = std::time::Duration::from_secs(60);

fn query(q: Q) -> Result<FilesQuery, ApiError> {
    let Query(q) = q.map_err(|_| {
        ApiError::bad(
            "the query takes path=/abs/path and list, mkdir, recursive (true/false), mode (octal)",
        )
    })?;
    check_path(&q.path).map_err(ApiError::bad)?;
    Ok(q)
}

fn refused(r: warren_init::proto::Response) -> ApiError {
    ClientError::Refused {
        code: r.code.unwrap_or(ErrorCode::Unknown),
        message: r.message.unwrap_or_default(),
    }
    .into()
}

fn cut_short() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "session_error",
        "the session's init ended the transfer early",
    )
}

pub(super) async fn get(State(init): State<Arc<InitTarget>>, q: Q) -> Result<Response, ApiError> {
    let q = query(q)?;
    if q.list {
        return list(&init, q.path).await.map(IntoResponse::into_response);
    }
    let (conn, resp) = initsock::request(&init, Op::ReadFile { path: q.path }).await?;
    let size = resp.size.unwrap_or(0);
    // Bytes as init sends them; a stream that ends before `Exit` ends the
    // body with an error, so the client never takes a short file for whole.
    let body = futures_util::stream::unfold(Some(conn), |conn| async move {
        let mut conn = conn?;
        match conn.next().await {
            Some(Ok(Frame::Data(b))) => Some((Ok(b), Some(conn))),
            Some(Ok(Frame::Exit(0))) => None,
            _ => Some((Err(std::io::Error::other("download cut short")), None)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

async fn list(init: &InitTarget, path: String) -> Result<Json<FileList>, ApiError> {
    let (mut conn, _) = initsock::request(init, Op::ListDir { path: path.clone() }).await?;
    let mut entries = Vec::new();
    let deadline = tokio::time::Instant::now() + LIST_TIME;
    loop {
        // Init caps a listing itself; the agent does not rely on that.
        if entries.len() >= MAX_LIST_ENTRIES {
            return Ok(Json(FileList {
                path,
                entries,
                truncated: true,
            }));
        }
        let next = tokio::time::timeout_at(deadline, conn.next())
            .await
            .map_err(|_| cut_short())?;
        match next {
            Some(Ok(Frame::Data(b))) => {
                let e: DirEntry = serde_json::from_slice(&b).map_err(|_| cut_short())?;
                entries.push(FileEntry {
                    name: e.name,
                    kind: e.kind,
                    size: e.size,
                    mode: e.mode,
                    mtime: e.mtime,
                });
            }
            Some(Ok(Frame::Exit(code))) => {
                return Ok(Json(FileList {
                    path,
                    entries,
                    truncated: code != 0,
                }));
            }
            _ => return Err(cut_short()),
        }
    }
}

pub(super) async fn put(
    State(init): State<Arc<InitTarget>>,
    q: Q,
    body: axum::body::Body,
) -> Result<StatusCode, ApiError> {
    let q = query(q)?;
    let mode = q.mode_bits().map_err(ApiError::bad)?;
    let op = Op::WriteFile { path: q.path, mode };
    let (conn, _) = initsock::request(&init, op).await?;
    let (mut sink, mut answers) = conn.split();
    let mut body = body.into_data_stream();
    loop {
        tokio::select! {
            chunk = tokio::time::timeout(UPLOAD_IDLE, body.next()) => match chunk {
                // A stalled client would hold the stream (and init's file).
                Err(_) => {
                    return Err(ApiError::bad("the upload stalled for 60 s; nothing was written"));
                }
                Ok(Some(Ok(b))) => {
                    for piece in b.chunks(MAX_PAYLOAD) {
                        if sink.send(Frame::Data(Bytes::copy_from_slice(piece))).await.is_err() {
                            // Init stopped taking data: its answer says why.
                            return Err(final_answer(&mut answers).await.err().unwrap_or_else(cut_short));
                        }
                    }
                }
                // The client went away mid-upload: dropping the connection
                // makes init discard the partial file.
                Ok(Some(Err(_))) => {
                    return Err(ApiError::bad("the upload was cut short; nothing was written"));
                }
                Ok(None) => break,
            },
            // An answer before the end is a refusal (the disk is full).
            early = answers.next() => {
                return Err(match early {
                    Some(Ok(Frame::Response(r))) if !r.ok => refused(r),
                    _ => cut_short(),
                });
            }
        }
    }
    sink.send(Frame::Eof).await.map_err(|_| cut_short())?;
    final_answer(&mut answers).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn final_answer<S>(answers: &mut S) -> Result<(), ApiError>
where
    S: futures_util::Stream<Item = Result<Frame, warren_init::proto::FrameError>> + Unpin,
{
    match answers.next().await {
        Some(Ok(Frame::Response(r))) if r.ok => Ok(()),
        Some(Ok(Frame::Response(r))) => Err(refused(r)),
        _ => Err(cut_short()),
    }
}

pub(super) async fn post(
    State(init): State<Arc<InitTarget>>,
    q: Q,
) -> Result<StatusCode, ApiError> {
    let q = query(q)?;
    if !q.mkdir {
        return Err(ApiError::bad("POST on files takes mkdir=true"));
    }
    initsock::request(&init, Op::MakeDir { path: q.path }).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn delete(
    State(init): State<Arc<InitTarget>>,
    q: Q,
) -> Result<StatusCode, ApiError> {
    let q = query(q)?;
    let op = Op::Remove {
        path: q.path,
        recursive: q.recursive,
    };
    initsock::request(&init, op).await?;
    Ok(StatusCode::NO_CONTENT)
}
