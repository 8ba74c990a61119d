//! `/v1/sessions/{id}/exec` and `/v1/sessions/{id}/files`: the sandbox API.
//!
//! Control checks the API key and the session, then goes to the session the
//! way any client does: through a relay's HTTPS edge ([`crate::edge`]) with
//! a short token of the `exec` scope. The agent there serves the request
//! through the session's `warren-init`. Bodies stream both ways (an upload
//! never sits whole in control's memory); answers and errors come back as
//! the agent gave them, and a session control cannot reach is a JSON error
//! of its own.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body as RawBody;
use axum::extract::rejection::QueryRejection;
use axum::http::header;
use futures_util::StreamExt;
use warren_proto::sandbox::{
    AGENT_HEADER, EXEC_PATH, ExecRequest, ExecResult, FILES_PATH, FileList, FilesQuery,
    MAX_EXEC_BODY, check_path,
};

use super::*;
use crate::edge::Edge;

/// Time a request to the session may take beyond a command's own limit.
const SLACK: Duration = Duration::from_secs(30);
/// Files requests other than transfers.
const FILES_TIMEOUT: Duration = Duration::from_secs(120);

/// The session, the edge and a token to reach it with.
pub(super) struct Reach<'a> {
    pub(super) session: Session,
    pub(super) edge: &'a Edge,
    pub(super) client: reqwest::Client,
    pub(super) token: String,
}

impl Control {
    /// The running session `id` of the caller, with a token of `scope`.
    pub(super) async fn reach(
        &self,
        p: &Principal,
        id: &str,
        scope: Scope,
    ) -> ApiResult<Reach<'_>> {
        let s = self.owned(p, id).await?;
        if s.status != SessionStatus::Running {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "session_not_running",
                format!("session {id} is {}", s.status),
            ));
        }
        let edge = self.edge.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_edge",
                "control knows no relay to reach sessions through (set `relays`)",
            )
        })?;
        let client = edge.client().map_err(|e| {
            tracing::warn!("the edge client: {e:#}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_edge",
                "control cannot reach the relays yet (their CA is not readable); try again",
            )
        })?;
        // Only the sandbox API: this token never opens a terminal or a port.
        let (token, _) = self.issuer.mint(&s, &p.key_id, scope.as_str())?;
        Ok(Reach {
            session: s,
            edge,
            client,
            token,
        })
    }
}

pub(super) fn unreachable(e: &reqwest::Error) -> ApiError {
    tracing::warn!("sandbox API: the session's edge did not answer: {e}");
    if e.is_timeout() {
        return ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "session_timeout",
            "the session did not answer in time",
        );
    }
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "session_unreachable",
        "the session could not be reached through the relays; try again",
    )
}

/// The agent's answer as the API's: its JSON (answers and errors) passes;
/// anything else that is an error (a relay's page) becomes one of ours.
pub(super) fn relay(resp: reqwest::Response) -> Response {
    let status = resp.status();
    // The agent's answers say so; anything else is a relay's refusal (its
    // words are its own, never passed on).
    if !resp.headers().contains_key(AGENT_HEADER) {
        tracing::warn!(%status, "sandbox API: the relay refused control's request");
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "session_unreachable",
            format!(
                "the session's relay refused the request ({})",
                status.as_u16()
            ),
        )
        .into_response();
    }
    let mut out = Response::builder().status(status.as_u16());
    for h in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(v) = resp.headers().get(&h) {
            out = out.header(h, v.as_bytes());
        }
    }
    out.body(RawBody::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

#[utoipa::path(post, path = "/v1/sessions/{id}/exec", tag = "sandbox",
    params(("id" = String, Path, description = "session id")),
    request_body = ExecRequest,
    responses((status = 200, description = "the command ran (or its time limit killed it: `timed_out`)", body = ExecResult),
        (status = 400, description = "bad_request: the body does not parse; invalid: cwd or env init refused", body = ErrorBody),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 404, description = "no such session (or another tenant's); not_found: the working directory", body = ErrorBody),
        (status = 409, description = "session_not_running", body = ErrorBody),
        (status = 413, description = "too_large: the body is over 1 MiB and 64 KiB", body = ErrorBody),
        (status = 422, description = "invalid: no command, too long, a bad time limit; spawn_failed: the program cannot run", body = ErrorBody),
        (status = 501, description = "session_too_old: its init predates the API", body = ErrorBody),
        (status = 502, description = "session_unreachable", body = ErrorBody),
        (status = 503, description = "no_edge", body = ErrorBody)))]
pub(super) async fn exec(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    body: RawBody,
) -> ApiResult<Response> {
    let bytes = axum::body::to_bytes(body, MAX_EXEC_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("an exec request is at most {MAX_EXEC_BODY} bytes"),
            )
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a JSON object body is required",
        ));
    }
    let req: ExecRequest = body::parse(&bytes)?;
    let argv = req.to_argv().map_err(ApiError::invalid)?;
    let timeout = Duration::from_secs(req.timeout().map_err(ApiError::invalid)?);
    let r = c.reach(&p, &id, Scope::Exec).await?;
    let sent = r
        .client
        .post(r.edge.url(&r.session.id, EXEC_PATH))
        .bearer_auth(&r.token)
        .json(&req)
        .timeout(timeout + SLACK)
        .send()
        .await;
    // The program, not its arguments: command lines carry secrets.
    let program = argv.first().map(String::as_str).unwrap_or("");
    let program = if req.command.is_some() {
        "sh -c"
    } else {
        program
    };
    let ran = sent.as_ref().is_ok_and(|r| r.status().is_success());
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &r.session.tenant,
            action: "session.exec",
            target: &r.session.id,
            detail: &program.chars().take(200).collect::<String>(),
            outcome: if ran { "ok" } else { "failed" },
        })
        .await;
    Ok(relay(sent.map_err(|e| unreachable(&e))?))
}

type FilesParams = Result<Query<FilesQuery>, QueryRejection>;

/// The query, checked for the method: a flag another method takes is
/// refused rather than ignored.
fn files_query(q: FilesParams, method: &str) -> ApiResult<FilesQuery> {
    let Query(q) = q.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the query takes path=/absolute/path and list, mkdir, recursive (true or false), mode (octal)",
        )
    })?;
    check_path(&q.path).map_err(ApiError::invalid)?;
    q.mode_bits().map_err(ApiError::invalid)?;
    let stray = [
        ("list", q.list, "GET"),
        ("mkdir", q.mkdir, "POST"),
        ("recursive", q.recursive, "DELETE"),
        ("mode", q.mode.is_some(), "PUT"),
    ]
    .into_iter()
    .find(|(_, set, takes)| *set && *takes != method);
    if let Some((flag, _, takes)) = stray {
        return Err(ApiError::invalid(format!(
            "`{flag}` goes with {takes}, not {method}"
        )));
    }
    Ok(q)
}

/// The files endpoint of the session, with the caller's query.
fn files_request(
    r: &Reach<'_>,
    method: reqwest::Method,
    q: &FilesQuery,
) -> reqwest::RequestBuilder {
    r.client
        .request(method, r.edge.url(&r.session.id, FILES_PATH))
        .bearer_auth(&r.token)
        .query(q)
}

async fn audit_file(c: &Control, p: &Principal, r: &Reach<'_>, action: &str, path: &str, ok: bool) {
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &r.session.tenant,
            action,
            target: &r.session.id,
            detail: &path.chars().take(512).collect::<String>(),
            outcome: if ok { "ok" } else { "failed" },
        })
        .await;
}

/// mkdir and delete: one short request to the session, audited as
/// `action` with its outcome.
async fn change(
    c: &Control,
    p: &Principal,
    id: &str,
    q: &FilesQuery,
    method: reqwest::Method,
    action: &str,
) -> ApiResult<Response> {
    let r = c.reach(p, id, Scope::Exec).await?;
    let resp = files_request(&r, method, q)
        .timeout(FILES_TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable(&e))?;
    audit_file(c, p, &r, action, &q.path, resp.status().is_success()).await;
    Ok(relay(resp))
}

#[utoipa::path(get, path = "/v1/sessions/{id}/files", tag = "sandbox",
    params(("id" = String, Path, description = "session id"), FilesQuery),
    responses((status = 200, description = "the file's bytes (application/octet-stream), or with `list=true` the directory", body = FileList),
        (status = 400, description = "bad_request: the query does not parse", body = ErrorBody),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 403, description = "permission_denied", body = ErrorBody),
        (status = 404, description = "no such session (or another tenant's); not_found: no such path", body = ErrorBody),
        (status = 409, description = "session_not_running; is_a_directory, not_a_directory, not_a_file", body = ErrorBody),
        (status = 422, description = "invalid: the path is not absolute", body = ErrorBody),
        (status = 502, description = "session_unreachable", body = ErrorBody),
        (status = 503, description = "no_edge", body = ErrorBody)))]
pub(super) async fn get_file(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    q: FilesParams,
) -> ApiResult<Response> {
    let q = files_query(q, "GET")?;
    let r = c.reach(&p, &id, Scope::Exec).await?;
    let mut req = files_request(&r, reqwest::Method::GET, &q);
    if q.list {
        req = req.timeout(FILES_TIMEOUT);
    }
    let resp = req.send().await.map_err(|e| unreachable(&e))?;
    Ok(relay(resp))
}

#[utoipa::path(put, path = "/v1/sessions/{id}/files", tag = "sandbox",
    params(("id" = String, Path, description = "session id"), FilesQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the file's bytes, streamed; the file appears whole or not at all"),
    responses((status = 204, description = "written"),
        (status = 400, description = "bad_request: the query does not parse", body = ErrorBody),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 403, description = "permission_denied", body = ErrorBody),
        (status = 404, description = "no such session (or another tenant's); not_found: the parent directory", body = ErrorBody),
        (status = 409, description = "session_not_running; is_a_directory, not_a_directory", body = ErrorBody),
        (status = 413, description = "too_large: over sessions.max_upload_mb", body = ErrorBody),
        (status = 422, description = "invalid: the path or mode", body = ErrorBody),
        (status = 502, description = "session_unreachable", body = ErrorBody),
        (status = 503, description = "no_edge", body = ErrorBody),
        (status = 507, description = "disk_full: the session's disk", body = ErrorBody)))]
pub(super) async fn put_file(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    q: FilesParams,
    headers: HeaderMap,
    body: RawBody,
) -> ApiResult<Response> {
    let q = files_query(q, "PUT")?;
    let max = c.cfg.sessions.max_upload_mb.saturating_mul(1 << 20);
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "an upload is at most {} MB (sessions.max_upload_mb)",
                c.cfg.sessions.max_upload_mb
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let r = c.reach(&p, &id, Scope::Exec).await?;
    // Counted as it passes: a body without a length (chunked) that grows
    // past the bound is cut, and the agent drops the half-written file.
    let seen = Arc::new(AtomicU64::new(0));
    let over = Arc::new(AtomicBool::new(false));
    let (s2, o2) = (seen.clone(), over.clone());
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        let n = s2.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if n > max {
            o2.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("upload over the bound"));
        }
        Ok(chunk)
    });
    let mut req = files_request(&r, reqwest::Method::PUT, &q)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(n) = declared {
        req = req.header(header::CONTENT_LENGTH, n);
    }
    let sent = req.send().await;
    if over.load(Ordering::Relaxed) {
        audit_file(&c, &p, &r, "files.write", &q.path, false).await;
        return Err(too_large());
    }
    let resp = sent.map_err(|e| unreachable(&e))?;
    let ok = resp.status().is_success();
    audit_file(&c, &p, &r, "files.write", &q.path, ok).await;
    Ok(relay(resp))
}

#[utoipa::path(post, path = "/v1/sessions/{id}/files", tag = "sandbox",
    params(("id" = String, Path, description = "session id"), FilesQuery),
    responses((status = 204, description = "the directory (and its parents) exists"),
        (status = 400, description = "bad_request: the query does not parse", body = ErrorBody),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 404, description = "no such session (or another tenant's)", body = ErrorBody),
        (status = 409, description = "session_not_running; not_a_directory", body = ErrorBody),
        (status = 422, description = "invalid: the path, or mkdir=true missing", body = ErrorBody),
        (status = 502, description = "session_unreachable", body = ErrorBody),
        (status = 503, description = "no_edge", body = ErrorBody)))]
pub(super) async fn post_file(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    q: FilesParams,
) -> ApiResult<Response> {
    let q = files_query(q, "POST")?;
    if !q.mkdir {
        return Err(ApiError::invalid(
            "POST on files makes a directory: add mkdir=true",
        ));
    }
    change(&c, &p, &id, &q, reqwest::Method::POST, "files.mkdir").await
}

#[utoipa::path(delete, path = "/v1/sessions/{id}/files", tag = "sandbox",
    params(("id" = String, Path, description = "session id"), FilesQuery),
    responses((status = 204, description = "removed"),
        (status = 400, description = "bad_request: the query does not parse", body = ErrorBody),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 404, description = "no such session (or another tenant's); not_found: no such path", body = ErrorBody),
        (status = 409, description = "session_not_running; not_empty: a directory without recursive=true", body = ErrorBody),
        (status = 422, description = "invalid: the path", body = ErrorBody),
        (status = 502, description = "session_unreachable", body = ErrorBody),
        (status = 503, description = "no_edge", body = ErrorBody)))]
pub(super) async fn delete_file(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    q: FilesParams,
) -> ApiResult<Response> {
    let q = files_query(q, "DELETE")?;
    change(&c, &p, &id, &q, reqwest::Method::DELETE, "files.delete").await
}
