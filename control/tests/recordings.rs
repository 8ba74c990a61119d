//! Recording pieces in the store, on SQLite and PostgreSQL: a piece is
//! stored once (a retry is a duplicate), a piece over the session's or the
//! tenant's bound is dropped and marks its recording truncated, a first
//! piece always gets its recording listed, what was stored reads back in
//! order, and purging an ended session's recordings gives its tenant the
//! room back.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use warren_control::store::{Appended, Store};

#[tokio::test]
async fn pieces_are_stored_once_and_within_their_bounds() {
    for db in backends() {
        let url = database(db, "recpieces").await;
        let store = Store::open(&url).await.unwrap();
        let x50 = "x".repeat(50);
        let append = async |session: &str, terminal, seq, data: &str, max, tenant_max| {
            store
                .append_recording(session, "t1", terminal, seq, data, max, tenant_max)
                .await
                .unwrap()
        };
        assert_eq!(
            append("sa", 1, 0, "header\n", 100, 1000).await,
            Appended::Stored,
            "{db:?}"
        );
        assert_eq!(
            append("sa", 1, 0, "header\n", 100, 1000).await,
            Appended::Duplicate
        );
        assert_eq!(append("sa", 1, 1, &x50, 100, 1000).await, Appended::Stored);
        // 57 held, 50 more is over the session's 100.
        assert_eq!(append("sa", 1, 2, &x50, 100, 1000).await, Appended::Full);
        // A retry of a stored piece is still a duplicate when full.
        assert_eq!(
            append("sa", 1, 1, &x50, 100, 1000).await,
            Appended::Duplicate
        );
        // Another terminal's first piece, over the bound: listed, empty, truncated.
        assert_eq!(append("sa", 2, 0, &x50, 100, 1000).await, Appended::Full);
        // Another session of the same tenant: within its own bound, over the tenant's.
        assert_eq!(append("sb", 1, 0, &x50, 1000, 100).await, Appended::Full);
        assert_eq!(
            append("sb", 1, 0, "small\n", 1000, 100).await,
            Appended::Stored
        );

        let rows = store.recordings("sa").await.unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.terminal, r.bytes, r.truncated))
            .collect();
        assert_eq!(got, vec![(1, 57, true), (2, 0, true)], "{db:?}");
        let sb = store.recordings("sb").await.unwrap();
        assert_eq!((sb[0].bytes, sb[0].truncated), (6, true), "{db:?}");
        assert_eq!(
            store.recording("sa", 1).await.unwrap().unwrap(),
            vec!["header\n".to_string(), x50.clone()]
        );
        assert_eq!(
            store.recording("sb", 1).await.unwrap().unwrap(),
            vec!["small\n".to_string()]
        );

        // Session sa ended long ago: its 57 bytes leave the tenant's 63.
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO sessions (id, tenant_id, node_id, status, reason, image, memory_mb, \
             millicpus, created_at, expires_at, idle_timeout_ms, last_activity, updated_at) \
             VALUES ('sa', 't1', 'n1', 'stopped', '', 'img', 64, 1000, 0, 0, 0, 0, 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        assert_eq!(store.purge_recordings(1).await.unwrap(), 2, "{db:?}");
        assert!(store.recordings("sa").await.unwrap().is_empty());
        assert_eq!(
            append("sb", 1, 1, &"z".repeat(90), 1000, 100).await,
            Appended::Stored,
            "{db:?}"
        );
        assert_eq!(
            append("sb", 1, 2, "zzzzz", 1000, 100).await,
            Appended::Full,
            "{db:?}"
        );
    }
}

/// Pieces sent at once go through the group writer: they share
/// transactions, yet each gets its own answer: stored, a duplicate, or full
/// by the pieces stored before it, and every stored one reads back in order.
#[tokio::test]
async fn pieces_written_in_groups_keep_their_own_answers() {
    use warren_control::pieces::Pieces;
    use warren_control::store::Piece;
    for db in backends() {
        let url = database(db, "recgroups").await;
        let store = Store::open(&url).await.unwrap();
        let pieces = std::sync::Arc::new(Pieces::start(store.clone()));
        let piece = |session: &str, terminal, seq, data: String, max| Piece {
            session: session.into(),
            tenant: "t1".into(),
            terminal,
            seq,
            data,
            max_bytes: max,
            tenant_max_bytes: 1 << 30,
        };
        // 20 terminals × 10 pieces of 10 bytes, all at once, in a session
        // with room for all of them.
        let mut all = tokio::task::JoinSet::new();
        for terminal in 0..20u32 {
            for seq in 0..10i64 {
                let (p, data) = (pieces.clone(), format!("t{terminal:02}s{seq:03}..\n"));
                let piece = piece("sg", terminal, seq, data, 1 << 20);
                all.spawn(async move { p.append(piece).await.unwrap() });
            }
        }
        while let Some(r) = all.join_next().await {
            assert_eq!(r.unwrap(), Appended::Stored, "{db:?}");
        }
        for terminal in 0..20u32 {
            let want: Vec<String> = (0..10)
                .map(|seq| format!("t{terminal:02}s{seq:03}..\n"))
                .collect();
            assert_eq!(
                store.recording("sg", terminal).await.unwrap().unwrap(),
                want,
                "{db:?}"
            );
        }
        // A retry among new pieces is a duplicate; a session bound of 35
        // bytes takes three 10-byte pieces of a burst, then the rest are full.
        let mut burst = tokio::task::JoinSet::new();
        burst.spawn({
            let p = pieces.clone();
            let again = piece("sg", 0, 0, "t00s000..\n".into(), 1 << 20);
            async move { ("retry", p.append(again).await.unwrap()) }
        });
        for seq in 0..6i64 {
            let p = pieces.clone();
            let small = piece("sh", 1, seq, "0123456789".into(), 35);
            burst.spawn(async move { ("bounded", p.append(small).await.unwrap()) });
        }
        let (mut stored, mut full) = (0, 0);
        while let Some(r) = burst.join_next().await {
            match r.unwrap() {
                ("retry", got) => assert_eq!(got, Appended::Duplicate, "{db:?}"),
                (_, Appended::Stored) => stored += 1,
                (_, Appended::Full) => full += 1,
                (_, other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((stored, full), (3, 3), "{db:?}");
        let sh = store.recordings("sh").await.unwrap();
        assert_eq!((sh[0].bytes, sh[0].truncated), (30, true), "{db:?}");
    }
}

/// The pieces endpoint as a compromised worker would use it: a NUL (no
/// asciicast holds one; PostgreSQL refuses it and it would fail the group
/// written with it) and a negative number are refused by name (422), another
/// node's session is refused, and a piece sent twice is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pieces_endpoint_refuses_what_no_recorder_sends() {
    use warren_config::Strategy;
    use warren_proto::api::CreateSession;
    let url = database(Db::Sqlite, "recendpoint").await;
    let c = TestControl::start(config(&url, Strategy::Spread)).await;
    let agents = c.nodes("rp", &[4000, 4000]).await;
    let s = c
        .client(ADMIN)
        .create_session(&CreateSession {
            memory_mb: Some(256),
            ..Default::default()
        })
        .await
        .unwrap();
    warren_testkit::until("the session running on a node", WAIT, EVERY, || async {
        agents
            .iter()
            .any(|a| a.running.lock().unwrap().contains(&s.id))
    })
    .await;
    let (mine, other): (Vec<_>, Vec<_>) = agents
        .iter()
        .partition(|a| a.running.lock().unwrap().contains(&s.id));
    let (mine, other) = (mine[0], other[0]);
    let post = |who: &FakeAgent, seq: i64, body: &'static str| {
        let req = c
            .http
            .post(format!(
                "{}/internal/v1/recordings/{}/1?seq={seq}",
                c.url, s.id
            ))
            .bearer_auth(format!("{}:{}", who.node, who.credential))
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, text) = post(mine, 0, "[0.1, \"o\", \"a\u{0}b\"]\n").await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("NUL"), "{text}");
    let (status, text) = post(mine, -1, "[0.1, \"o\", \"x\"]\n").await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("seq"), "{text}");
    let (status, text) = post(other, 0, "[0.1, \"o\", \"x\"]\n").await;
    assert_eq!(status, 403, "{text}");
    for _ in 0..2 {
        let (status, text) = post(mine, 0, "{\"version\": 2}\n").await;
        assert_eq!(status, 204, "{text}");
    }
    let store = Store::open(&url).await.unwrap();
    assert_eq!(
        store.recording(&s.id, 1).await.unwrap().unwrap(),
        vec!["{\"version\": 2}\n".to_string()]
    );
}
