//! The in-process init server the integration tests talk to.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren_init::proto::Op;
use warren_init::reaper::Reaper;
use warren_init::server::{Options, Server};

pub const WAIT: Duration = Duration::from_secs(20);

/// Opens a terminal running `/bin/sh`, 80x24.
pub fn open_op() -> Op {
    Op::Open {
        cols: 80,
        rows: 24,
        env: BTreeMap::new(),
        command: Some(vec!["/bin/sh".into()]),
        input: None,
        echo_state: false,
    }
}

pub struct Fixture {
    pub socket: PathBuf,
    pub stop: CancellationToken,
    pub dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn start(detached: Duration) -> Fixture {
    start_with(detached, false).await
}

pub async fn start_with(detached: Duration, agent_only: bool) -> Fixture {
    start_full(detached, agent_only, warren_init::server::REPLAY_BYTES).await
}

pub async fn start_full(detached: Duration, agent_only: bool, replay_bytes: usize) -> Fixture {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wi-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("init.sock");
    // One reaper per process: two would steal each other's exit statuses.
    static REAPER: std::sync::OnceLock<Arc<Reaper>> = std::sync::OnceLock::new();
    let reaper = REAPER
        .get_or_init(|| {
            let r = Arc::new(Reaper::default());
            let r2 = r.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move { r2.run().await })
            });
            r
        })
        .clone();
    let stop = CancellationToken::new();
    let server = Server::new(
        Options {
            socket: socket.clone(),
            detached_timeout: detached,
            agent_only,
            replay_bytes,
        },
        reaper,
    );
    tokio::spawn(server.serve(stop.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !socket.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Fixture { socket, stop, dir }
}
