//! `warren-init [--socket PATH] [--detached-timeout SECS] [-- COMMAND...]`
//!
//! Runs as PID 1 of a session container: see the library docs.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use warren_init::reaper::Reaper;
use warren_init::server::{Options, Server};

fn usage() -> ! {
    eprintln!(
        "usage: warren-init [--socket PATH] [--detached-timeout SECS] [--replay-bytes N] [-- COMMAND...]"
    );
    std::process::exit(2)
}

/// A pipe for the image command's stdout and stderr, and its read end.
fn log_pipe() -> std::io::Result<(tokio::net::unix::pipe::Receiver, Stdio, Stdio)> {
    let (r, w) = std::io::pipe()?;
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(r.into())?;
    Ok((reader, Stdio::from(w.try_clone()?), Stdio::from(w)))
}

fn main() {
    let mut socket = PathBuf::from(warren_init::SOCKET_IN_CONTAINER);
    let mut detached = Duration::from_secs(900);
    let mut replay_bytes = warren_init::server::REPLAY_BYTES;
    let mut command = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => socket = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--detached-timeout" => {
                detached = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_secs)
                    .unwrap_or_else(|| usage())
            }
            "--replay-bytes" => {
                replay_bytes = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|n| warren_init::server::REPLAY_RANGE.contains(n))
                    .unwrap_or_else(|| usage())
            }
            "--" => command.extend(args.by_ref()),
            _ => usage(),
        }
    }
    // PID 1 is Warren's, not the tenant's: without this, root in the session
    // (same uid, same capabilities) could ptrace init, read its memory or
    // open `/proc/1/fd/1`, the engine's log pipe, and flood the worker's
    // dockerd. Children get dumpable again when they exec.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("warren-init: cannot make PID 1 undumpable: {e}");
    }
    // Blocking threads serve the files API; each costs a pid of the
    // session's pids limit, so few (tokio's default is 512).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(warren_init::server::BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-init: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(run(socket, detached, replay_bytes, command));
    std::process::exit(code);
}

async fn run(
    socket: PathBuf,
    detached: Duration,
    replay_bytes: usize,
    command: Vec<String>,
) -> i32 {
    if std::process::id() != 1 {
        // Not PID 1 (e.g. under another init): adopt orphans anyway.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    }
    let reaper = Arc::new(Reaper::default());
    let r = reaper.clone();
    tokio::spawn(async move {
        if let Err(e) = r.run().await {
            eprintln!("warren-init: reaper: {e}");
        }
    });

    // The image's own entrypoint and command, as a child.
    let mut main_child = None;
    if !command.is_empty() {
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..]).stdin(Stdio::null());
        // Its output reaches the container log through init, rate-limited
        // (see warren_init::logs); without a pipe it inherits init's.
        match log_pipe() {
            Ok((reader, out, err)) => {
                cmd.stdout(out).stderr(err);
                tokio::spawn(warren_init::logs::forward(
                    reader,
                    tokio::io::stderr(),
                    warren_init::logs::LOG_RATE,
                    warren_init::logs::LOG_BURST,
                ));
            }
            Err(e) => {
                eprintln!("warren-init: no log pipe ({e}); the command writes to the log directly")
            }
        }
        match reaper.spawn(&mut cmd) {
            Ok((pid, rx)) => {
                eprintln!("warren-init: started {:?} as pid {pid}", command);
                main_child = Some(pid);
                let name = command[0].clone();
                tokio::spawn(async move {
                    if let Ok(code) = rx.await {
                        // The session stays: its terminals are what users came for.
                        eprintln!("warren-init: {name} exited with {code}");
                    }
                });
            }
            Err(e) => eprintln!("warren-init: cannot start {:?}: {e}", command),
        }
    }

    let shutdown = CancellationToken::new();
    let server = Server::new(
        Options {
            socket,
            detached_timeout: detached,
            agent_only: true,
            replay_bytes,
        },
        reaper.clone(),
    );
    let serve = tokio::spawn(server.clone().serve(shutdown.clone()));

    let forward = |sig: rustix::process::Signal| {
        if let Some(pid) = main_child.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    };
    let mut streams = Vec::new();
    for (kind, sig) in [
        (SignalKind::terminate(), rustix::process::Signal::TERM),
        (SignalKind::interrupt(), rustix::process::Signal::INT),
        (SignalKind::hangup(), rustix::process::Signal::HUP),
        (SignalKind::quit(), rustix::process::Signal::QUIT),
        (SignalKind::user_defined1(), rustix::process::Signal::USR1),
        (SignalKind::user_defined2(), rustix::process::Signal::USR2),
    ] {
        match signal(kind) {
            Ok(s) => streams.push((s, sig)),
            Err(e) => eprintln!("warren-init: cannot handle {sig:?}: {e}"),
        }
    }
    loop {
        let futs = streams.iter_mut().map(|(s, sig)| {
            let sig = *sig;
            Box::pin(async move {
                s.recv().await;
                sig
            })
        });
        let (sig, _, _) = futures_util::future::select_all(futs).await;
        forward(sig);
        if matches!(
            sig,
            rustix::process::Signal::TERM | rustix::process::Signal::INT
        ) {
            break;
        }
    }
    // Stopping: hang up the shells, give the main command a moment, exit.
    for pid in server.shell_pids() {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::HUP);
        }
    }
    shutdown.cancel();
    let _ = serve.await;
    if let Some(pid) = main_child {
        for _ in 0..50 {
            if rustix::process::test_kill_process(
                rustix::process::Pid::from_raw(pid).expect("pid > 0"),
            )
            .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    0
}
