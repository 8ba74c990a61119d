//! `GET /v1/events`: a session's lifecycle in order, per tenant, resumable
//! with `Last-Event-ID`, bounded per tenant; on SQLite and PostgreSQL, with
//! fake agents.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::Duration;

use common::*;
use warren_config::Strategy;
use warren_proto::api::{CreateSession, SessionEvent, SessionStatus};

/// An open event stream, read frame by frame.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    /// Opens the stream as `key`, resuming after `last` when given.
    async fn open(c: &TestControl, key: &str, last: Option<i64>) -> Events {
        let mut r = c.http.get(format!("{}/v1/events", c.url)).bearer_auth(key);
        if let Some(id) = last {
            r = r.header("Last-Event-ID", id.to_string());
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            resp,
            buf: String::new(),
        }
    }

    /// The next `event: session` (its id and data); fails the test after
    /// [`WAIT`].
    async fn next(&mut self) -> (i64, SessionEvent) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, None, None);
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<i64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str::<SessionEvent>(v.trim()).unwrap());
                    }
                }
                match (id, kind.as_deref(), data) {
                    (Some(id), Some("session"), Some(data)) => return (id, data),
                    // A keep-alive comment.
                    (None, None, None) => continue,
                    other => panic!("not a session event: {other:?} in {frame:?}"),
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .expect("no event in time")
                .unwrap()
                .expect("the stream ended");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events up to and including `session` reaching `status`.
    async fn until(&mut self, session: &str, status: SessionStatus) -> Vec<(i64, SessionEvent)> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let done = e.1.id == session && e.1.status == status;
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

fn statuses(events: &[(i64, SessionEvent)], session: &str) -> Vec<SessionStatus> {
    events
        .iter()
        .filter(|(_, e)| e.id == session)
        .map(|(_, e)| e.status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_follow_sessions_per_tenant_and_resume() {
    for db in backends() {
        let url = database(db, "events").await;
        let c = TestControl::start(config(&url, Strategy::Spread)).await;
        let _agents = c.nodes("e", &[4000]).await;
        let (ta, ka) = c.tenant("acme", 10, 4000).await;
        let (_, kb) = c.tenant("globex", 10, 4000).await;
        let (mut a, mut b) = (
            Events::open(&c, &ka, None).await,
            Events::open(&c, &kb, None).await,
        );
        let mut admin = Events::open(&c, ADMIN, None).await;

        let small = CreateSession {
            memory_mb: Some(128),
            ..Default::default()
        };
        let s = c.client(&ka).create_session(&small).await.unwrap();
        c.client(&ka).delete_session(&s.id).await.unwrap();
        let seen = a.until(&s.id, SessionStatus::Stopped).await;
        use SessionStatus::*;
        assert_eq!(
            statuses(&seen, &s.id),
            [Pending, Running, Stopping, Stopped],
            "{db:?}: {seen:?}"
        );
        let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{db:?}: {ids:?}");
        let stopping = &seen[2].1;
        assert_eq!(
            (stopping.node.as_str(), stopping.tenant.as_str()),
            ("e-n0", ta.as_str())
        );
        assert_eq!(stopping.reason, "deleted", "{db:?}");
        assert!(seen[0].1.reason.is_empty());
        // The operator's stream sees every tenant's.
        let all = admin.until(&s.id, SessionStatus::Stopped).await;
        assert_eq!(statuses(&all, &s.id), [Pending, Running, Stopping, Stopped]);

        // B's stream never saw A's session: its first event is its own
        // session, made after A's had stopped.
        let sb = c.client(&kb).create_session(&small).await.unwrap();
        let (_, first) = b.next().await;
        assert_eq!(
            (first.id.as_str(), first.status),
            (sb.id.as_str(), Pending),
            "{db:?}"
        );

        // Reconnecting after `running` replays exactly what followed.
        let mut again = Events::open(&c, &ka, Some(seen[1].0)).await;
        assert_eq!(again.next().await, seen[2], "{db:?}");
        assert_eq!(again.next().await, seen[3], "{db:?}");
        // ?since= does the same.
        let resp = c
            .http
            .get(format!("{}/v1/events?since={}", c.url, seen[2].0))
            .bearer_auth(&ka)
            .send()
            .await
            .unwrap();
        let mut since = Events {
            resp,
            buf: String::new(),
        };
        assert_eq!(since.next().await, seen[3], "{db:?}");

        // Live after the replay, and a removed node's sessions are lost.
        let s2 = c.client(&ka).create_session(&small).await.unwrap();
        let (s, v) = c.call("DELETE", "/v1/nodes/e-n0", ADMIN, None).await;
        assert_eq!(s, 204, "{v}");
        let later = again.until(&s2.id, Lost).await;
        assert_eq!(statuses(&later, &s2.id), [Pending, Running, Lost], "{db:?}");
        assert_eq!(later.last().unwrap().1.reason, "node removed");

        // Bad resume points are a 400 in the API's shape.
        let r = c
            .http
            .get(format!("{}/v1/events", c.url))
            .bearer_auth(&ka)
            .header("Last-Event-ID", "abc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(api_error(&v).code, "bad_request");
        let (s, _) = c.call("GET", "/v1/events", "wk_nobody", None).await;
        assert_eq!(s, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_tenant_are_bounded() {
    let url = database(Db::Sqlite, "events_bound").await;
    let c = TestControl::start(config(&url, Strategy::Spread)).await;
    let (_, k) = c.tenant("chatty", 10, 4000).await;
    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(Events::open(&c, &k, None).await);
    }
    let (s, v) = c.call("GET", "/v1/events", &k, None).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(api_error(&v).code, "too_many_streams");
    // Another tenant has its own streams; a closed stream gives its place back.
    Events::open(&c, ADMIN, None).await;
    open.pop();
    warren_testkit::until(
        "a closed stream's place comes back",
        WAIT,
        Duration::from_millis(50),
        || async {
            let r = c
                .http
                .get(format!("{}/v1/events", c.url))
                .bearer_auth(&k)
                .send()
                .await
                .unwrap();
            r.status() == 200
        },
    )
    .await;
}
