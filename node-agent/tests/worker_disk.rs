//! The engine's default paths out of a session, tried from inside one as a
//! hostile tenant would (security review, December: F1, F3, F4, F6, F11):
//! the files the engine binds in, an image's volume, healthcheck and
//! `warren.*` labels, the engine's DNS and IPv6.
#![allow(clippy::unwrap_used)]
mod common;

use common::{Stack, docker, docker_or_skip, random_suffix};
use warren_agent::testing::worker_free_mb;

/// Removes the test's image, also when the test fails.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

/// Builds an image from `warren/session:mini` that declares a volume, a
/// healthcheck every second and labels with the agent's names.
fn hostile_image() -> Image {
    let tag = format!("warren-test/hostile:{}", random_suffix());
    warren_agent::testing::build_image(
        &tag,
        "FROM warren/session:mini\n\
         VOLUME /data\n\
         LABEL warren.cpuset=0 warren.cpus=64 warren.disk=loop warren.memory_mb=999999\n\
         HEALTHCHECK --interval=1s CMD touch /tmp/healthcheck-ran\n",
    );
    Image(tag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_session_writes_reaches_the_workers_disk() {
    if !docker_or_skip().await {
        return;
    }
    let image = hostile_image();
    let mut stack = Stack::start("wdisk").await;
    let disk = stack.agent().runtime().disk_limits();
    let a = stack
        .agent()
        .create_session(&warren_agent::SessionSpec {
            id: format!("w{}", random_suffix()),
            image: Some(image.0.clone()),
            memory_mb: Some(256),
            disk_mb: disk.then_some(256),
            ..Default::default()
        })
        .await
        .unwrap();
    let b = stack.session("warren/session:mini", 64).await;
    let before = worker_free_mb();
    let mut t = stack.terminal(&a.id, "").await;
    // 300 MB into each bound file and into the image's volume.
    let mut outs = Vec::new();
    for (i, path) in [
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/data/fill",
    ]
    .iter()
    .enumerate()
    {
        let done = format!("wrote-{}", i * 7 + 100);
        let out = t
            .run(
                &format!(
                    "dd if=/dev/zero of={path} bs=1M count=300 2>&1; echo wrote-$(({i}*7+100))"
                ),
                &done,
            )
            .await;
        outs.push(out);
    }
    let used = before - worker_free_mb();
    assert!(
        used < 150,
        "the worker lost {used} MB to writes from a session: {outs:?}"
    );
    for out in &outs[..3] {
        assert!(
            out.contains("Read-only") || out.contains("Permission denied"),
            "a bound file took the write: {out}"
        );
    }
    assert!(
        outs[3].contains("No space left"),
        "the volume is bounded: {}",
        outs[3]
    );

    // No healthcheck runs (the image asks for one every second); the
    // agent's labels are its own, not the image's.
    let inspect = docker(&[
        "inspect",
        "-f",
        "{{json .Config.Healthcheck}} {{.State.Health}} cpuset={{index .Config.Labels \"warren.cpuset\"}} cpus={{index .Config.Labels \"warren.cpus\"}} mem={{index .Config.Labels \"warren.memory_mb\"}}",
        &a.container_id,
    ]);
    assert!(inspect.contains("[\"NONE\"]"), "{inspect}");
    assert!(inspect.contains("<nil>"), "a health state: {inspect}");
    assert!(
        !inspect.contains("cpus=64") && inspect.contains("mem=256"),
        "{inspect}"
    );
    let ran = t
        .run(
            "sleep 2; ls /tmp/healthcheck-ran 2>&1; echo hc-$((6*6))",
            "hc-36",
        )
        .await;
    assert!(ran.contains("No such file"), "the healthcheck ran: {ran}");

    // DNS: the engine's resolver names no neighbour (and answers nothing).
    let b_ip = b.ip.unwrap().to_string();
    let dns = t
        .run(
            &format!("timeout 8 nslookup {b_ip} 127.0.0.11 2>&1; echo dns-$((7*9))"),
            "dns-63",
        )
        .await;
    assert!(
        !dns.contains(&b.id) && !dns.contains("name ="),
        "a neighbour's name over DNS: {dns}"
    );

    // IPv6: off in the session, so no link-local path to a neighbour.
    let v6 = t
        .run(
            "cat /proc/sys/net/ipv6/conf/all/disable_ipv6; ip -6 addr | grep -c inet6; echo v6-$((8*9))",
            "v6-72",
        )
        .await;
    let lines: Vec<&str> = v6.lines().map(str::trim).collect();
    assert!(lines.contains(&"1"), "IPv6 is on: {v6}");
    assert!(lines.contains(&"0"), "the session has IPv6 addresses: {v6}");
    let ping = t
        .run(
            "ping6 -c1 -W2 ff02::1%eth0 2>&1 | tail -1; echo p6-$((9*9))",
            "p6-81",
        )
        .await;
    assert!(!ping.contains("1 packets received"), "{ping}");
    drop(t);

    // After an agent restart the adopted session's labels still count for
    // nothing the image said, and its DNS stays closed.
    stack.stop_agent().await;
    stack.start_agent().await;
    let mut t = stack.terminal(&a.id, "").await;
    let dns = t
        .run(
            &format!("timeout 8 nslookup {b_ip} 127.0.0.11 2>&1; echo dns2-$((7*9))"),
            "dns2-63",
        )
        .await;
    assert!(!dns.contains("name ="), "{dns}");
    drop(t);

    // Removing the session removes the agent's copies of its files.
    let files = stack.data_dir().join("sessions").join(&a.id);
    assert!(files.join("hosts").is_file());
    stack.agent().remove_session(&a.id).await.unwrap();
    assert!(!files.exists(), "the session's bound files are left");
}

/// Images the agent pulled go once the budget is passed, unless a session
/// uses them; images it did not pull (built here, no registry gives them
/// back) are never removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_images_are_pruned_under_the_budget_never_in_use() {
    if !docker_or_skip().await {
        return;
    }
    let stack = Stack::start_configured("prune", |d| d.image_budget_mb = 1).await;
    let suffix = random_suffix();
    let (unused, used) = (
        Image(format!("warren-test/prune-unused:{suffix}")),
        Image(format!("warren-test/prune-used:{suffix}")),
    );
    for img in [&unused, &used] {
        docker(&["tag", "warren/session:mini", &img.0]);
        stack.agent().runtime().images().note_pulled(&img.0);
    }
    let s = stack
        .agent()
        .create_session(&warren_agent::SessionSpec {
            id: format!("p{}", random_suffix()),
            image: Some(used.0.clone()),
            memory_mb: Some(64),
            ..Default::default()
        })
        .await
        .unwrap();
    let pruned = stack.agent().runtime().prune_images().await.unwrap();
    assert_eq!(pruned.removed, vec![unused.0.clone()], "{pruned:?}");
    let exists = |name: &str| {
        std::process::Command::new("docker")
            .args(["image", "inspect", name])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!exists(&unused.0));
    assert!(exists(&used.0), "an image in use was removed");
    assert!(exists("warren/session:mini"), "a built image was removed");
    stack.agent().remove_session(&s.id).await.unwrap();
    let pruned = stack.agent().runtime().prune_images().await.unwrap();
    assert_eq!(pruned.removed, vec![used.0.clone()], "{pruned:?}");
    assert!(exists("warren/session:mini"));
}
