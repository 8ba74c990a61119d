//! Session start through the whole product: `POST /v1/sessions` (scheduled,
//! container created by the agent, reported running) until a shell behind
//! the relay echoes, for `warren/session:mini` and `warren/session:dind`,
//! beside a bare `docker run -d` of the same image in the same run; cold
//! (a size no pool keeps) and warm (claimed from a `[[pools]]` pool of
//! that image and size, full before each run).
//!
//! ```sh
//! scripts/build-init.sh && scripts/build-images.sh
//! cargo run --release -p warren --example start
//! ```
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

const RUNS: usize = 10;

fn ms(us: u64) -> String {
    format!("{:.0} ms", us as f64 / 1000.0)
}

#[tokio::main]
async fn main() {
    let run = format!("bench-{}", std::process::id());
    let mut opts = warren::stack::StackOptions::loopback(
        "warren.bench",
        &run,
        "warren/session:mini",
        16384,
        256,
    );
    let sizes = [
        ("warren/session:mini", 128u64),
        ("warren/session:dind", 1024),
    ];
    opts.pools = sizes
        .iter()
        .map(|(image, mem)| warren_config::PoolConfig {
            image: Some(image.to_string()),
            memory_mb: Some(*mem),
            cpus: None,
            disk_mb: None,
            size: 2,
        })
        .collect();
    let network = opts.network.clone();
    let st = warren::stack::start(opts).await.unwrap();
    let http = reqwest::Client::new();
    let port = st.http.unwrap();
    println!("| image | path | p50 | p99 |\n|---|---|---|---|");
    let full = || async {
        let deadline = Instant::now() + Duration::from_secs(120);
        while st.agent.pools().warm() < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(st.agent.pools().warm(), 4, "the pools did not fill");
    };
    for (image, pool_mem) in sizes {
        for (path, mem) in [("cold", pool_mem + 64), ("warm pool", pool_mem)] {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            for _ in 0..RUNS {
                full().await;
                let t = Instant::now();
                let v: serde_json::Value = http
                    .post(format!("{}/v1/sessions", st.control_url))
                    .bearer_auth(&st.admin_key)
                    .json(&serde_json::json!({"image": image, "memory_mb": mem}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let (id, token) = (
                    v["id"].as_str().unwrap().to_string(),
                    v["token"].as_str().unwrap().to_string(),
                );
                let tcp = tokio::net::TcpStream::connect(port).await.unwrap();
                let url = format!(
                    "ws://{id}.warren.localhost:{}/_warren/terminal?token={token}",
                    port.port()
                );
                let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
                let mut term = warren_testkit::Term::new(ws).await;
                term.run("echo $((6*7))", "42\r\n").await;
                h.record(t.elapsed().as_micros() as u64).unwrap();
                drop(term);
                http.delete(format!("{}/v1/sessions/{id}", st.control_url))
                    .bearer_auth(&st.admin_key)
                    .send()
                    .await
                    .unwrap();
            }
            println!(
                "| `{image}` | Warren, {path}: API create → running → shell echoes through the relay | {} | {} |",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99))
            );
        }
        let mem = pool_mem;
        let mut d = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for _ in 0..RUNS {
            full().await;
            let t = Instant::now();
            let o = tokio::process::Command::new("docker")
                .args([
                    "run",
                    "-d",
                    "--label",
                    &format!("warren.bench={run}"),
                    &format!("--memory={mem}m"),
                    image,
                    "sleep",
                    "60",
                ])
                .output()
                .await
                .unwrap();
            d.record(t.elapsed().as_micros() as u64).unwrap();
            let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let _ = tokio::process::Command::new("docker")
                .args(["rm", "-f", &id])
                .output()
                .await;
        }
        println!(
            "| `{image}` | bare `docker run -d` (CLI) | {} | {} |",
            ms(d.value_at_quantile(0.5)),
            ms(d.value_at_quantile(0.99))
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    st.stop.cancel();
    warren_testkit::remove_labelled(&format!("warren.bench={run}"), &[&network]);
}
