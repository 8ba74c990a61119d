//! The agent's side of the control plane: join with a one-time token,
//! heartbeat (memory and the state of its sessions), and a watch (long poll
//! on a version index) that drives reconciliation of desired sessions
//! against the containers it runs.
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::{Agent, SessionSpec};

/// What joining returns, kept in `<data_dir>/node.json` (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub control_url: String,
    pub node_id: String,
    pub credential: String,
    pub relays: Vec<RelayInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayInfo {
    pub addr: String,
    pub server_name: String,
    #[serde(default)]
    pub ca_pem: Option<String>,
}

/// Memory this host offers to sessions: `MemTotal` less a reserve for the
/// system (1 GiB or a quarter, whichever is less). `(allocatable, free)` in MB.
pub fn host_memory_mb(override_mb: Option<u64>) -> (i64, i64) {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
            .unwrap_or(0)
            / 1024
    };
    let (total, available) = (field("MemTotal:"), field("MemAvailable:"));
    let reserve = (total / 4).min(1024);
    let allocatable = override_mb
        .map(|m| m as i64)
        .unwrap_or(total - reserve)
        .max(0);
    let free = (available - reserve).clamp(0, allocatable);
    (allocatable, free)
}

pub fn load_enrollment(data_dir: &Path) -> anyhow::Result<Option<Enrollment>> {
    let p = data_dir.join("node.json");
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?,
    ))
}

/// Exchanges a join token for a node credential and stores it.
pub async fn join(
    control_url: &str,
    token: &str,
    node_id: &str,
    allocatable_mb: i64,
    data_dir: &Path,
) -> anyhow::Result<Enrollment> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let r = http
        .post(format!("{control_url}/internal/v1/join"))
        .json(&json!({"token": token, "node_id": node_id, "allocatable_mb": allocatable_mb}))
        .send()
        .await
        .with_context(|| format!("reaching the control plane at {control_url}"))?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "join refused ({status}): {}",
            v["error"]["message"].as_str().unwrap_or("no reason given")
        );
    }
    let e = Enrollment {
        control_url: control_url.into(),
        node_id: node_id.into(),
        credential: v["credential"]
            .as_str()
            .context("no credential in the answer")?
            .into(),
        relays: serde_json::from_value(v["relays"].clone()).unwrap_or_default(),
    };
    std::fs::create_dir_all(data_dir)?;
    warren_config::write_private(
        &data_dir.join("node.json"),
        serde_json::to_string_pretty(&e)?.as_bytes(),
    )?;
    Ok(e)
}

#[derive(Deserialize)]
struct Desired {
    id: String,
    image: String,
    memory_mb: u64,
    cpus: f64,
    /// 0: the agent's default.
    #[serde(default)]
    disk_mb: u64,
}

/// Keeps the agent in step with control until `shutdown`.
pub fn spawn_sync(
    agent: Arc<Agent>,
    e: &Enrollment,
    memory_override: Option<u64>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            warn!("cannot build an HTTP client: {e}");
            return;
        }
    };
    let auth = format!("{}:{}", e.node_id, e.credential);
    let base = e.control_url.clone();
    let failed: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let starting: Arc<Mutex<HashSet<String>>> = Arc::default();
    let report_now = Arc::new(Notify::new());

    // Heartbeats: every 2 s, and at once after a change.
    {
        let (agent, http, auth, base, failed, report_now, shutdown) = (
            agent.clone(),
            http.clone(),
            auth.clone(),
            base.clone(),
            failed.clone(),
            report_now.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            loop {
                let (allocatable, free) = host_memory_mb(memory_override);
                let mut sessions: Vec<serde_json::Value> = agent
                    .sessions()
                    .iter()
                    .map(|s| json!({"id": s.id, "state": "running", "idle_ms": agent.idle_ms(&s.id)}))
                    .collect();
                for (id, reason) in failed.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    sessions.push(json!({"id": id, "state": "failed", "reason": reason}));
                }
                let body = json!({
                    "allocatable_mb": allocatable,
                    "free_mb": free,
                    "security_profile": agent.runtime().security().name(),
                    "disk_limits": agent.runtime().disk_limits(),
                    "sessions": sessions,
                });
                match http.post(format!("{base}/internal/v1/heartbeat")).bearer_auth(&auth).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => warn!("heartbeat refused: {}", r.status()),
                    Err(e) => warn!("heartbeat failed: {e}"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = report_now.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
    }

    // The watch, and reconciliation.
    {
        let tracker2 = tracker.clone();
        tracker.spawn(async move {
            let mut index = 0i64;
            loop {
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = http.get(format!("{base}/internal/v1/watch?index={index}")).bearer_auth(&auth).send() => r,
                };
                let v: serde_json::Value = match r {
                    Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
                    Ok(r) => {
                        warn!("watch refused: {}", r.status());
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => {
                        warn!("watch failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                index = v["index"].as_i64().unwrap_or(index);
                let desired: Vec<Desired> = serde_json::from_value(v["sessions"].clone()).unwrap_or_default();
                let want: HashSet<String> = desired.iter().map(|d| d.id.clone()).collect();
                for d in desired {
                    let known = agent.session(&d.id).is_some() || failed.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&d.id);
                    if known || !starting.lock().unwrap_or_else(|p| p.into_inner()).insert(d.id.clone()) {
                        continue;
                    }
                    let (agent, failed, starting, report_now) = (agent.clone(), failed.clone(), starting.clone(), report_now.clone());
                    tracker2.spawn(async move {
                        let spec = SessionSpec { id: d.id.clone(), image: Some(d.image), memory_mb: Some(d.memory_mb), cpus: Some(d.cpus), pids_limit: None, disk_mb: (d.disk_mb > 0).then_some(d.disk_mb) };
                        if let Err(e) = agent.create_session(&spec).await {
                            warn!(session = %d.id, "session failed to start: {e}");
                            failed.lock().unwrap_or_else(|p| p.into_inner()).insert(d.id.clone(), e.to_string());
                        }
                        starting.lock().unwrap_or_else(|p| p.into_inner()).remove(&d.id);
                        report_now.notify_one();
                    });
                }
                for s in agent.sessions() {
                    if !want.contains(&s.id) && !starting.lock().unwrap_or_else(|p| p.into_inner()).contains(&s.id) {
                        info!(session = %s.id, "no longer desired: removing");
                        if let Err(e) = agent.remove_session(&s.id).await {
                            warn!(session = %s.id, "removing: {e}");
                        }
                        report_now.notify_one();
                    }
                }
                failed.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| want.contains(id));
            }
        });
    }
}
