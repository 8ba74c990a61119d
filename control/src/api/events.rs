//! `GET /v1/events`: session lifecycle changes as server-sent events, for
//! the caller's tenant (the admin key: every tenant).
//!
//! Each stream reads the events table from the last id it sent: at once
//! after this replica commits a change, and every [`POLL`] for other
//! replicas' (they share the database, not memory). `Last-Event-ID` (or
//! `?since=`) replays what is still stored after that id first.
use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use warren_proto::api::SessionEvent;

use super::*;
use crate::limits::Slot;
use crate::store::Event;

/// How often a stream looks for other replicas' events.
const POLL: Duration = Duration::from_millis(500);
/// A comment this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Replay the stored events after this id first (as `Last-Event-ID`).
    since: Option<i64>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(EventsQuery, ("Last-Event-ID" = Option<i64>, Header, description = "resume after this event id")),
    responses((status = 200, content_type = "text/event-stream",
            description = "`event: session` frames: `id:` the event id, `data:` a SessionEvent", body = SessionEvent),
        (status = 400, description = "a resume point that is not an integer", body = ErrorBody),
        (status = 401, description = "unauthorized: no valid API key", body = ErrorBody),
        (status = 429, description = "too_many_streams: the tenant's streams on this replica", body = ErrorBody)))]
pub(super) async fn event_stream(
    State(c): State<Arc<Control>>,
    Caller(p): Caller,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let Query(q) = query.map_err(|_| bad("since must be an event id (an integer)"))?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| bad("Last-Event-ID must be an event id (an integer)"))?,
        ),
        None => q.since,
    };
    let slot = c.limits.event_streams.take(&p.tenant).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            "this tenant has as many event streams open as it may; close one",
        )
    })?;
    let newest = c.store.last_event_id().await?;
    // No resume point: live from now. One past the newest (a database
    // restored from a backup): from the newest, not from a future id.
    let last = resume.map_or(newest, |r| r.clamp(0, newest));
    let follow = Follow {
        c: c.clone(),
        tenant: (!p.admin).then(|| p.tenant.clone()),
        last,
        queue: VecDeque::new(),
        ticks: c.store.event_ticks(),
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let e = f.next().await?;
        Some((Ok(sse(&e)), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One stream's place in the events table.
struct Follow {
    c: Arc<Control>,
    /// `None`: every tenant's (the admin key).
    tenant: Option<String>,
    /// The last id sent (or skipped as before the start).
    last: i64,
    queue: VecDeque<Event>,
    ticks: tokio::sync::watch::Receiver<u64>,
    /// Its place among the tenant's streams, given back with the stream.
    _slot: Slot,
}

impl Follow {
    /// The next event; `None` when control stops.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            // Marked seen before reading: a commit meanwhile wakes us again.
            self.ticks.borrow_and_update();
            match self
                .c
                .store
                .events_after(self.tenant.as_deref(), self.last)
                .await
            {
                Ok(page) if !page.is_empty() => {
                    self.last = page.last().map_or(self.last, |e| e.id);
                    self.queue.extend(page);
                    continue;
                }
                Ok(_) => {}
                // The database is away for a moment: try again at the next poll.
                Err(e) => tracing::warn!("reading session events: {e}"),
            }
            tokio::select! {
                _ = self.c.stopping.cancelled() => return None,
                _ = self.ticks.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

fn sse(e: &Event) -> SseEvent {
    let data = SessionEvent {
        id: e.session.clone(),
        tenant: e.tenant.clone(),
        status: e.status,
        node: e.node.clone(),
        at: e.at / 1000,
        reason: e.reason.clone(),
    };
    SseEvent::default()
        .id(e.id.to_string())
        .event("session")
        .data(serde_json::to_string(&data).unwrap_or_default())
}
