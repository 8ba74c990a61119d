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
