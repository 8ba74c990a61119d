//! Snapshots: `POST /v1/sessions/{id}/snapshot`, `GET /v1/snapshots`,
//! `DELETE /v1/snapshots/{name}`.
//!
//! Control reserves the name (within the tenant's count), then asks the
//! session's agent, through a relay, to commit the container as
//! `warren-snapshot/<id>` with a token of the `snapshot` scope, which only
//! control mints. The image stays on that worker; sessions from it start
//! there. Deleting the row changes the worker's desired state and its
//! agent removes the image.
use std::time::Duration;

use warren_proto::api::{CreateSnapshot, Snapshot, SnapshotList};
use warren_proto::sandbox::{
    SNAPSHOT_PATH, SNAPSHOT_REPO, SnapshotDone, SnapshotRequest, check_snapshot_name,
    snapshot_image,
};

use super::sandbox::{relay, unreachable};
use super::*;
use crate::store::SnapshotRow;

/// A commit copies the session's writable layer: up to its whole disk.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);
/// A snapshot still not ready this long after it began was cut off
/// (control restarted mid-commit): the reaper forgets it.
pub const SNAPSHOT_COMMIT_LIMIT_MS: i64 = 2 * COMMIT_TIMEOUT.as_millis() as i64;

fn view(s: &SnapshotRow) -> Snapshot {
    Snapshot {
        image: format!("{SNAPSHOT_REPO}/{}", s.name),
        name: s.name.clone(),
        tenant: s.tenant.clone(),
        session: s.session.clone(),
        node: s.node.clone(),
        size_bytes: s.size_bytes,
        created_at: s.created_at / 1000,
    }
}

#[utoipa::path(post, path = "/v1/sessions/{id}/snapshot", tag = "snapshots",
    params(("id" = String, Path, description = "session id")),
    request_body(content = Option<CreateSnapshot>, description = "optional: a name (default: made up)"),
    responses((status = 201, description = "saved; `image` starts new sessions from it", body = Snapshot),
        (status = 400, description = "bad_request: the body does not parse", body = ErrorBody),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 404, description = "no such session (or another tenant's)", body = ErrorBody),
        (status = 409, description = "session_not_running; conflict: the name is taken", body = ErrorBody),
        (status = 422, description = "invalid: the name", body = ErrorBody),
        (status = 429, description = "quota_exceeded: sessions.tenant_max_snapshots", body = ErrorBody),
        (status = 502, description = "session_unreachable; snapshot_failed", body = ErrorBody),
        (status = 503, description = "no_edge", body = ErrorBody)))]
pub(super) async fn create_snapshot(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    OptionalBody(req): OptionalBody<CreateSnapshot>,
) -> ApiResult<Response> {
    let name = match req.and_then(|r| r.name) {
        Some(n) => {
            check_snapshot_name(&n).map_err(ApiError::invalid)?;
            n
        }
        None => format!("snap-{}", crate::store::random_id(8)),
    };
    let r = c.reach(&p, &id, Scope::Snapshot).await?;
    let s = r.session.clone();
    let (row, version) = c
        .store
        .begin_snapshot(
            &s.tenant,
            &name,
            &s.id,
            &s.node,
            c.cfg.sessions.tenant_max_snapshots as i64,
            (c.cfg.sessions.tenant_max_snapshot_mb as i64).saturating_mul(1 << 20),
        )
        .await?;
    // Its own task: a caller that goes away mid-commit leaves a snapshot
    // made or forgotten, never half-recorded.
    let url = r.edge.url(&s.id, SNAPSHOT_PATH);
    let req = r
        .client
        .post(url)
        .bearer_auth(&r.token)
        .json(&SnapshotRequest {
            image: snapshot_image(&row.id),
            version,
        })
        .timeout(COMMIT_TIMEOUT);
    let (c2, row2, actor) = (c.clone(), row.clone(), p.key_id.clone());
    let task = tokio::spawn(async move {
        let (c, row) = (c2, row2);
        let done = async {
            let resp = req
                .send()
                .await
                .map_err(|e| unreachable(&e).into_response())?;
            if !resp.status().is_success() {
                return Err(relay(resp));
            }
            resp.json::<SnapshotDone>().await.map_err(|e| {
                tracing::warn!("snapshot answer: {e}");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "snapshot_failed",
                    "the worker's answer to the snapshot was not understood",
                )
                .into_response()
            })
        }
        .await;
        let outcome: Result<i64, Response> = match done {
            Ok(d) => {
                let size = d.size_bytes.min(i64::MAX as u64) as i64;
                match c.store.finish_snapshot(&row.id, size).await {
                    Ok(()) => Ok(size),
                    Err(e) => Err(ApiError::from(e).into_response()),
                }
            }
            Err(answer) => {
                // Forgotten: its worker removes whatever the commit left
                // (and the reaper does, should this fail).
                if let Err(e) = c.store.delete_snapshot(&row.id, &row.node).await {
                    tracing::warn!("forgetting a failed snapshot: {e}");
                }
                Err(answer)
            }
        };
        c.store
            .audit(NewAudit {
                actor: &actor,
                tenant: &row.tenant,
                action: "snapshot.create",
                target: &row.session,
                detail: &row.name,
                outcome: if outcome.is_ok() { "ok" } else { "failed" },
            })
            .await;
        outcome
    });
    match task.await {
        Ok(Ok(size)) => {
            let row = SnapshotRow {
                ready: true,
                size_bytes: size,
                ..row
            };
            Ok((StatusCode::CREATED, Json(view(&row))).into_response())
        }
        Ok(Err(answer)) => Ok(answer),
        Err(e) => {
            tracing::error!("snapshot task: {e}");
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "snapshot_failed",
                "the snapshot could not be saved",
            ))
        }
    }
}

#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots",
    responses((status = 200, description = "the caller's tenant's snapshots (admin: every tenant's)", body = SnapshotList),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody)))]
pub(super) async fn list_snapshots(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
) -> ApiResult<Json<SnapshotList>> {
    let tenant = (!p.admin).then_some(p.tenant.as_str());
    let rows = c.store.snapshots(tenant).await?;
    Ok(Json(SnapshotList {
        snapshots: rows.iter().map(view).collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/snapshots/{name}", tag = "snapshots",
    params(("name" = String, Path, description = "snapshot name")),
    responses((status = 204, description = "forgotten; its worker removes the image (once no session runs from it)"),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 404, description = "no such snapshot in the caller's tenant", body = ErrorBody)))]
pub(super) async fn delete_snapshot(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if check_snapshot_name(&name).is_err() {
        return Err(ApiError::not_found(format!(
            "snapshot {name} does not exist"
        )));
    }
    let s = c.store.snapshot(&p.tenant, &name).await?;
    c.store.delete_snapshot(&s.id, &s.node).await?;
    c.store
        .audit(NewAudit {
            actor: &p.key_id,
            tenant: &s.tenant,
            action: "snapshot.delete",
            target: &s.session,
            detail: &name,
            ..NewAudit::OK
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}
