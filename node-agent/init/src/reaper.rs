//! Child bookkeeping for an init: reaps every child (PID 1 inherits orphans)
//! and hands exit codes to whoever spawned the process.
use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::Mutex;

use tokio::sync::oneshot;

#[derive(Default)]
pub struct Reaper {
    // Held while spawning and while reaping, so a child that exits at once is
    // registered before its status can be collected.
    waiting: Mutex<HashMap<i32, oneshot::Sender<i32>>>,
}

impl Reaper {
    /// Spawns `cmd`; the receiver yields its exit code (128+signal if killed).
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(i32, oneshot::Receiver<i32>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid, tx);
        // Dropping a std Child neither kills nor waits; we reap it ourselves.
        drop(child);
        Ok((pid, rx))
    }

    /// Like [`Reaper::spawn`], but hands back the child for its pipes. Never
    /// call `wait` on it: the reaper collects its status.
    pub fn spawn_child(
        &self,
        cmd: &mut Command,
    ) -> io::Result<(std::process::Child, oneshot::Receiver<i32>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Collects every exited child without blocking.
    pub fn reap(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        while let Ok(Some((pid, status))) =
            rustix::process::wait(rustix::process::WaitOptions::NOHANG)
        {
            let code = status
                .exit_status()
                .or_else(|| status.terminating_signal().map(|s| 128 + s))
                .unwrap_or(-1);
            if let Some(tx) = waiting.remove(&pid.as_raw_nonzero().get()) {
                let _ = tx.send(code);
            }
        }
    }

    /// Runs [`Reaper::reap`] on every `SIGCHLD`, and once a second in case
    /// signals were merged.
    pub async fn run(&self) -> io::Result<()> {
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tick.tick() => {}
            }
            self.reap();
        }
    }
}
