//! The sandbox API against the engine's own tools, in the same run, on one
//! session of the whole stack (`warren up`'s wiring on loopback):
//! - exec round trip for `true`: `POST /v1/sessions/{id}/exec` (control →
//!   relay → agent → init), the same request straight to the relay with an
//!   exec token, and `docker exec` of the same container;
//! - a file up and down: `PUT`/`GET /v1/sessions/{id}/files` beside
//!   `docker cp` in and out.
//!
//! ```sh
//! scripts/build-init.sh && scripts/build-images.sh mini
//! cargo run --release -p warren --example sandboxbench
//! ```
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use warren::client::Client;
use warren_proto::sandbox::{EXEC_PATH, ExecRequest};

const EXECS: usize = 300;
const DOCKER_EXECS: usize = 100;
const MB: usize = 200;
const REPS: usize = 3;

fn hist() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new(3).unwrap()
}

fn row(name: &str, h: &hdrhistogram::Histogram<u64>) {
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    println!(
        "| {name} | {} | {} | {} | {} |",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn docker(args: &[&str]) {
    let st = Command::new("docker").args(args).status().unwrap();
    assert!(st.success(), "docker {args:?}");
}

#[tokio::main]
async fn main() {
    let run = format!("sandboxbench-{}", std::process::id());
    let mut opts = warren::stack::StackOptions::loopback(
        "warren.bench",
        &run,
        "warren/session:mini",
        4096,
        512,
    );
    let (dir, network) = (opts.data_dir.clone(), opts.network.clone());
    opts.data_dir = dir.join("stack");
    let st = warren::stack::start(opts).await.unwrap();
    let c = Client::new(&st.control_url, &st.admin_key, Duration::from_secs(300)).unwrap();
    let s = c
        .create_session(&serde_json::from_value(serde_json::json!({"disk_mb": 2048})).unwrap())
        .await
        .unwrap();
    let id = s.id.clone();
    let container = String::from_utf8(
        Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=warren.session={id}"),
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let truth = ExecRequest {
        argv: Some(vec!["true".into()]),
        ..Default::default()
    };
    // Warm every path once.
    c.exec(&id, &truth).await.unwrap();

    let mut api = hist();
    for _ in 0..EXECS {
        let t = Instant::now();
        let r = c.exec(&id, &truth).await.unwrap();
        api.record(t.elapsed().as_micros() as u64).unwrap();
        assert_eq!(r.exit_code, Some(0));
    }

    let token = c.token(&id, Some("exec")).await.unwrap().token;
    let host = format!("{id}.warren.localhost");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&st.ca_file).unwrap()).unwrap();
    let edge = reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve(&host, st.https)
        .build()
        .unwrap();
    let url = format!("https://{host}:{}{EXEC_PATH}", st.https.port());
    let mut direct = hist();
    for i in 0..=EXECS {
        let t = Instant::now();
        let r = edge
            .post(&url)
            .bearer_auth(&token)
            .json(&truth)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        r.bytes().await.unwrap();
        if i > 0 {
            direct.record(t.elapsed().as_micros() as u64).unwrap();
        }
    }

    let mut dexec = hist();
    for _ in 0..DOCKER_EXECS {
        let t = Instant::now();
        docker(&["exec", &container, "true"]);
        dexec.record(t.elapsed().as_micros() as u64).unwrap();
    }

    println!("## Exec round trip for `true` (one session, `warren/session:mini`)\n");
    println!("| path | runs | p50 | p99 | max |\n|---|---|---|---|---|");
    row(
        "`POST /v1/sessions/{id}/exec` (control → relay → agent → init)",
        &api,
    );
    row(
        "the relay's `/_warren/api/exec` with an exec token (relay → agent → init)",
        &direct,
    );
    row("`docker exec` (the engine's exec setup)", &dexec);
    println!(
        "\nAPI p50 / docker exec p50: {:.2}\n",
        api.value_at_quantile(0.5) as f64 / dexec.value_at_quantile(0.5) as f64
    );

    // A file of incompressible bytes, up and down both ways.
    let big = dir.join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&big).unwrap();
        let mut block = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..MB {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    // To the session's disk (uploads are written as the session, under
    // its `docker.disk_write_mbps` throttle), and to its /dev/shm (tmpfs:
    // the API's own pipeline); `docker cp` writes as the engine.
    let shm_mb: usize = 48;
    let small = dir.join("small.bin");
    std::fs::write(&small, &std::fs::read(&big).unwrap()[..shm_mb << 20]).unwrap();
    println!("## A file in and out (median of {REPS})\n");
    println!("| path | size | upload MB/s | download MB/s |\n|---|---|---|---|");
    for (what, file, mb, dest) in [
        ("the session's disk", &big, MB, "/root/big.bin"),
        (
            "the session's /dev/shm (tmpfs)",
            &small,
            shm_mb,
            "/dev/shm/big.bin",
        ),
    ] {
        let mbs = |t: Instant| mb as f64 * 1.048_576 / t.elapsed().as_secs_f64();
        let (mut up, mut down, mut cp_in, mut cp_out) = (vec![], vec![], vec![], vec![]);
        let back = dir.join("back.bin");
        let cp_dest = format!("{container}:{dest}.cp");
        for _ in 0..REPS {
            let f = tokio::fs::File::open(file).await.unwrap();
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                f,
                256 * 1024,
            ));
            let t = Instant::now();
            c.upload(&id, dest, None, Some((mb << 20) as u64), body)
                .await
                .unwrap();
            up.push(mbs(t));

            let t = Instant::now();
            let d = c.download(&id, dest).await.unwrap();
            let mut s = Box::pin(d.bytes());
            let mut n = 0usize;
            while let Some(chunk) = s.next().await {
                n += chunk.unwrap().len();
            }
            assert_eq!(n, mb << 20);
            down.push(mbs(t));
            c.remove(&id, dest, false).await.unwrap();

            let t = Instant::now();
            let ok = Command::new("docker")
                .args(["cp", file.to_str().unwrap(), &cp_dest])
                .output()
                .unwrap()
                .status
                .success();
            if ok {
                cp_in.push(mbs(t));
                let t = Instant::now();
                docker(&["cp", &cp_dest, back.to_str().unwrap()]);
                cp_out.push(mbs(t));
                let _ = std::fs::remove_file(&back);
                // (`docker cp` into a tmpfs mount writes beneath it, where
                // the session does not see it: removed the engine's way.)
                let _ = Command::new("docker")
                    .args(["exec", &container, "rm", "-f", &format!("{dest}.cp")])
                    .output();
            }
        }
        println!(
            "| API `PUT`/`GET …/files` to {what} | {mb} MiB | {:.0} | {:.0} |",
            median(up),
            median(down)
        );
        if cp_in.is_empty() {
            println!("| `docker cp` to {what} | {mb} MiB | (refused by the engine) | |");
        } else {
            println!(
                "| `docker cp` to {what} | {mb} MiB | {:.0} | {:.0} |",
                median(cp_in),
                median(cp_out)
            );
        }
    }

    c.delete_session(&id).await.unwrap();
    st.stop.cancel();
    // The agent stops with the stack before it gets to the container.
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    let _ = Command::new("docker")
        .args(["network", "rm", &network])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
}
