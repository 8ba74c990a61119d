//! Warm pools on the whole stack with real Docker: a pool fills, concurrent
//! creates of its size claim each warm container exactly once (the rest
//! start cold), a claimed container carries the same limits and isolation
//! as a cold session of that size and answers under its session's id, the
//! pool refills with new containers, and a session that claims one never
//! sees anything of an earlier claim; an agent restarted would adopt the
//! claimed containers as their sessions and never a warm one.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // uses part of the module
#[path = "support/cluster.rs"]
mod cluster;
#[allow(dead_code)] // each test binary uses part of this module
mod common;
use cluster::{EVERY, WAIT};
use common::{call, tenant_key};

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bollard::query_parameters::ListContainersOptions;
use serde_json::{Value, json};
use warren::client::Client;
use warren_proto::sandbox::ExecRequest;
use warren_testkit::{TEST_LABEL, until};

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: Some(cmd.into()),
        ..Default::default()
    }
}

/// This run's containers: engine name (without `/`) → (id, labels).
async fn containers(
    st: &warren::stack::Stack,
    run: &str,
) -> HashMap<String, (String, HashMap<String, String>)> {
    let mut filters = HashMap::new();
    filters.insert("label".to_string(), vec![format!("{TEST_LABEL}={run}")]);
    st.agent
        .runtime()
        .docker()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            let name = c.names.unwrap()[0].trim_start_matches('/').to_string();
            (name, (c.id.unwrap(), c.labels.unwrap_or_default()))
        })
        .collect()
}

/// Warm containers ready now (pool label, never renamed).
async fn warm_ids(st: &warren::stack::Stack, run: &str) -> HashSet<String> {
    containers(st, run)
        .await
        .into_iter()
        .filter(|(name, (_, l))| {
            l.get("warren.pool").is_some_and(|p| !p.is_empty())
                && l.get("warren.session")
                    .is_some_and(|k| name.ends_with(k.as_str()))
        })
        .map(|(_, (id, _))| id)
        .collect()
}

/// What isolates a container and bounds it, as the engine reports it.
async fn limits(st: &warren::stack::Stack, container: &str) -> Value {
    let c = st
        .agent
        .runtime()
        .docker()
        .inspect_container(container, None)
        .await
        .unwrap();
    let h = c.host_config.unwrap();
    json!({
        "memory": h.memory,
        "memory_swap": h.memory_swap,
        "nano_cpus": h.nano_cpus,
        "cpu_quota": h.cpu_quota,
        "pids_limit": h.pids_limit,
        "cap_add": h.cap_add,
        "cap_drop": h.cap_drop,
        "security_opt": h.security_opt,
        "privileged": h.privileged,
        "readonly_rootfs": h.readonly_rootfs,
        "network_mode": h.network_mode,
        "userns_mode": h.userns_mode,
        "runtime": h.runtime,
        "storage_opt": h.storage_opt,
        "ulimits": h.ulimits,
        "devices": h.devices,
        "hostname": c.config.as_ref().and_then(|c| c.hostname.clone()),
        "env": c.config.and_then(|c| c.env),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pools_claim_once_refill_and_carry_the_tenants_limits() {
    let Some((run, st)) = common::stack_with("pools", "warren/session:mini", 128, |o| {
        o.pools = vec![warren_config::PoolConfig {
            image: None,
            memory_mb: None,
            cpus: None,
            disk_mb: None,
            size: 2,
        }];
    })
    .await
    else {
        return;
    };
    let base = st.control_url.clone();
    let node = st.agent.node_id().to_string();
    until("the pool full", WAIT, EVERY, || async {
        st.agent.pools().warm() == 2 && warm_ids(&st, &run.id).await.len() == 2
    })
    .await;
    let first_warm = warm_ids(&st, &run.id).await;
    // Warm containers are nobody's: no session lists them.
    let (s, list) = call(&base, "GET", "/v1/sessions", &st.admin_key, None).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["sessions"].as_array().unwrap().len(), 0, "{list}");

    // Five creates at once: four of the pool's size from two tenants (two
    // find a warm container, two start cold), one of another size (cold).
    let (ka, kb) = (
        tenant_key(&base, &st.admin_key, "pool-a").await,
        tenant_key(&base, &st.admin_key, "pool-b").await,
    );
    let asks = [
        (ka.clone(), json!({})),
        (ka.clone(), json!({})),
        (kb.clone(), json!({})),
        (kb.clone(), json!({})),
        (kb.clone(), json!({"memory_mb": 256})),
    ];
    let created = futures_util::future::join_all(
        asks.iter()
            .map(|(k, body)| call(&base, "POST", "/v1/sessions", k, Some(body.clone()))),
    )
    .await;
    let ids: Vec<String> = created
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, 201, "{v}");
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    let all = containers(&st, &run.id).await;
    let of = |sid: &str| all[&format!("warren-{node}-{sid}")].clone();
    let cids: Vec<String> = ids.iter().map(|sid| of(sid).0).collect();
    assert_eq!(
        cids.iter().collect::<HashSet<_>>().len(),
        5,
        "five sessions, five containers"
    );
    let claimed: Vec<usize> = (0..5).filter(|i| first_warm.contains(&cids[*i])).collect();
    assert_eq!(
        claimed.len(),
        2,
        "each warm container claimed once: {claimed:?}"
    );
    assert!(!claimed.contains(&4), "another size never takes the pool's");
    assert_eq!(
        of(&ids[4]).1.get("warren.pool").map(String::as_str),
        Some("")
    );
    // Every start counted once (a refill that finished before a cold
    // create reached the agent may have served it warm).
    let m = st.agent.metrics();
    let warm = m.pool_claims.with_label_values(&["warm"]).get();
    assert!(warm >= 2, "{warm}");
    assert_eq!(warm + m.pool_claims.with_label_values(&["cold"]).get(), 5);

    // A claimed container is bounded and isolated exactly as a cold one of
    // the same size, and answers as its session through the edge.
    let cold = (0..4).find(|i| !claimed.contains(i)).unwrap();
    let cold_limits = limits(&st, &cids[cold]).await;
    assert_eq!(
        cold_limits["memory"],
        json!(128 * 1024 * 1024),
        "{cold_limits}"
    );
    for &i in &claimed {
        assert_eq!(
            limits(&st, &cids[i]).await,
            cold_limits,
            "session {}",
            ids[i]
        );
    }
    let ca = Client::new(&base, &ka, Duration::from_secs(120)).unwrap();
    let kb_client = Client::new(&base, &kb, Duration::from_secs(120)).unwrap();
    let client_of = |i: usize| if i < 2 { &ca } else { &kb_client };
    let mine = claimed[0];
    let r = client_of(mine)
        .exec(
            &ids[mine],
            &sh("echo secret-of-$((6*7)) > /root/note; hostname; cat /root/note"),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "warren\nsecret-of-42\n");
    // Another tenant cannot reach it by its id.
    let other = if mine < 2 { &kb_client } else { &ca };
    assert!(other.exec(&ids[mine], &sh("true")).await.is_err());

    // Refilled with new containers, never the claimed ones.
    until("the pool refilled", WAIT, EVERY, || async {
        let now = warm_ids(&st, &run.id).await;
        now.len() == 2 && now.is_disjoint(&first_warm)
    })
    .await;
    let second_warm = warm_ids(&st, &run.id).await;

    // The session that wrote a note ends; the next one claims a refilled
    // container, with nothing of the note.
    client_of(mine).delete_session(&ids[mine]).await.unwrap();
    until("the claimed container removed", WAIT, EVERY, || async {
        !containers(&st, &run.id)
            .await
            .values()
            .any(|(id, _)| *id == cids[mine])
    })
    .await;
    let warm_before = m.pool_claims.with_label_values(&["warm"]).get();
    let (s, v) = call(&base, "POST", "/v1/sessions", &kb, Some(json!({}))).await;
    assert_eq!(s, 201, "{v}");
    let next = v["id"].as_str().unwrap().to_string();
    let next_cid = containers(&st, &run.id).await[&format!("warren-{node}-{next}")]
        .0
        .clone();
    assert!(second_warm.contains(&next_cid), "claimed from the refill");
    let r = kb_client
        .exec(&next, &sh("cat /root/note 2>&1; ls -A /root | wc -l"))
        .await
        .unwrap();
    assert!(r.stdout.contains("No such file"), "{r:?}");
    assert_eq!(
        m.pool_claims.with_label_values(&["warm"]).get(),
        warm_before + 1
    );

    // What an agent restarted now would adopt: the claimed containers as
    // their sessions (kept under their warm keys), never a warm one.
    let other_claimed = claimed.iter().copied().find(|i| *i != mine).unwrap();
    let adopted = st.agent.runtime().adopt().await.unwrap();
    for sid in [&ids[other_claimed], &next] {
        let a = adopted.iter().find(|a| &a.id == sid).expect("adopted");
        assert!(a.key.starts_with("warm-"), "{a:?}");
    }
    assert!(adopted.iter().all(|a| !a.id.starts_with("warm-")));

    // Sessions deleted; what the run made is removed with it (labels).
    for (i, sid) in ids.iter().enumerate() {
        if i != mine {
            let _ = client_of(i).delete_session(sid).await;
        }
    }
    let _ = kb_client.delete_session(&next).await;
}

/// Two workers, each keeping one warm session, and binpack placement
/// (which alone would put both sessions on the same, fuller worker):
/// control places each create where a warm container of its size waits,
/// so both start warm, one on each worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_places_a_session_where_a_warm_container_waits() {
    if !warren_testkit::docker_or_skip() {
        return;
    }
    let Some(c) = cluster::Cluster::start_with(
        "poolplace",
        1,
        1,
        2,
        600,
        "strategy = \"binpack\"",
        "[[pools]]\nsize = 1\n",
    )
    .await
    else {
        return;
    };
    let base = c.control_urls[0].clone();
    until(
        "a warm container on each worker, as control sees it",
        WAIT,
        EVERY,
        || {
            let base = base.clone();
            async move {
                let nodes = cluster::nodes_seen(&base).await;
                nodes.len() == 2
                    && nodes.iter().all(|n| {
                        n["warm"]
                            .as_object()
                            .is_some_and(|w| w.values().any(|v| v.as_u64() == Some(1)))
                    })
            }
        },
    )
    .await;
    let mut placed = Vec::new();
    for _ in 0..2 {
        let s = c.create_session(0).await;
        placed.push(s["node"].as_str().unwrap_or_default().to_string());
    }
    let mut starts = HashMap::new();
    for m in &c.agent_metrics {
        let text = cluster::text(&format!("http://{m}/metrics")).await;
        for source in ["warm", "cold"] {
            let line = format!("warren_agent_session_starts_total{{source=\"{source}\"}} ");
            let n: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&line))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            *starts.entry(source).or_insert(0) += n;
        }
    }
    assert_eq!(
        (starts["warm"], starts["cold"]),
        (2, 0),
        "both sessions claimed a warm container (placed on {placed:?})"
    );
}
