//! SSH through Warren against OpenSSH's own `sshd` in the same session
//! container, reached directly on its private address, in the same run:
//! keystroke echo round trip (`ssh -tt` on a local PTY, one key at a time)
//! and `scp` throughput up and down.
//!
//! ```sh
//! scripts/build-init.sh && scripts/build-images.sh
//! cargo run --release -p warren --example sshbench
//! ```
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const KEYS: usize = 2000;
const MB: usize = 100;
const REPS: usize = 3;

fn ssh_opts(key: &Path, known_hosts: &Path) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        &format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentityAgent=none",
        "-i",
        &key.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn echo(opts: &[String], port: u16, dest: &str) -> hdrhistogram::Histogram<u64> {
    let mut cmd = Command::new("ssh");
    // `cat` on the remote PTY: the line discipline echoes every key.
    cmd.args(opts)
        .args(["-tt", "-p", &port.to_string(), dest, "echo READY; exec cat"]);
    let mut p = warren_agent::testing::spawn_on_pty(&mut cmd);
    drop(cmd);
    use std::io::Write;
    // sshd applies our raw local modes (no ONLCR): no \r here.
    p.wait_for(b"READY");
    let h = p.echo(KEYS);
    p.master.write_all(&[3]).unwrap();
    h
}

fn scp_mbps(opts: &[String], port: u16, from: &str, to: &str) -> f64 {
    let mut best = Vec::new();
    for _ in 0..REPS {
        let t = Instant::now();
        let st = Command::new("scp")
            .args(opts)
            .args(["-q", "-P", &port.to_string(), from, to])
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "scp {from} {to}");
        best.push((MB as f64 * 1.048_576) / t.elapsed().as_secs_f64());
    }
    best.sort_by(|a, b| a.total_cmp(b));
    best[best.len() / 2]
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

#[tokio::main]
async fn main() {
    let run = format!("sshbench-{}", std::process::id());
    let mut opts = warren::stack::StackOptions::loopback(
        "warren.bench",
        &run,
        "warren/session:dind",
        8192,
        1024,
    );
    let (network, dir) = (opts.network.clone(), opts.data_dir.clone());
    opts.data_dir = dir.join("stack");
    let st = warren::stack::start(opts).await.unwrap();
    let http = reqwest::Client::new();
    let key = dir.join("key");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    http.post(format!("{}/v1/users/me/ssh-keys", st.control_url))
        .bearer_auth(&st.admin_key)
        .json(&serde_json::json!({"public_key": public}))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = http
        .post(format!("{}/v1/sessions", st.control_url))
        .bearer_auth(&st.admin_key)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["id"].as_str().unwrap().to_string();

    // OpenSSH's sshd in the same container, on its private address.
    let container = String::from_utf8(
        Command::new("docker")
            .args(["ps", "-q", "--filter", &format!("label=warren.bench={run}")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let ip = String::from_utf8(
        Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &container,
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let setup = format!(
        "ssh-keygen -A >/dev/null && mkdir -p /root/.ssh /run/sshd && echo '{}' > /root/.ssh/authorized_keys && chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys && /usr/sbin/sshd -p 2200",
        public.trim()
    );
    assert!(
        Command::new("docker")
            .args(["exec", &container, "sh", "-c", &setup])
            .status()
            .unwrap()
            .success()
    );
    let opts = ssh_opts(&key, &dir.join("known_hosts"));
    let warren_port = st.ssh.unwrap().port();
    let warren_dest = format!("{id}@127.0.0.1");
    let sshd_dest = format!("root@{ip}");
    // Let both paths settle once (host keys, first connection).
    for (port, dest) in [(warren_port, &warren_dest), (2200, &sshd_dest)] {
        let mut waited = 0;
        while !Command::new("ssh")
            .args(&opts)
            .args(["-p", &port.to_string(), dest, "true"])
            .stdin(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            waited += 1;
            assert!(waited < 50, "{dest}:{port} never answered");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    println!("## SSH keystroke echo ({KEYS} keys, ssh -tt on a local PTY, `cat` echoing)\n");
    println!("| path | p50 | p99 | max |\n|---|---|---|---|");
    for (name, port, dest) in [
        (
            "Warren relay (russh → QUIC → agent → init)",
            warren_port,
            &warren_dest,
        ),
        ("sshd in the container, direct", 2200, &sshd_dest),
    ] {
        let h = echo(&opts, port, dest);
        println!(
            "| {name} | {} | {} | {} |",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        );
    }

    let big = dir.join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&big).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..MB {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&chunk).unwrap();
        }
    }
    let local = big.display().to_string();
    let back = dir.join("back.bin").display().to_string();
    println!("\n## scp throughput ({MB} MiB, median of {REPS})\n");
    println!("| path | upload | download |\n|---|---|---|");
    for (name, port, dest) in [
        (
            "Warren relay (SFTP subsystem over the tunnel)",
            warren_port,
            &warren_dest,
        ),
        ("sshd in the container, direct", 2200, &sshd_dest),
    ] {
        let up = scp_mbps(&opts, port, &local, &format!("{dest}:/root/big.bin"));
        let down = scp_mbps(&opts, port, &format!("{dest}:/root/big.bin"), &back);
        println!("| {name} | {up:.1} MB/s | {down:.1} MB/s |");
    }

    st.stop.cancel();
    warren_testkit::remove_labelled(&format!("warren.bench={run}"), &[&network]);
    let _ = std::fs::remove_dir_all(&dir);
}
