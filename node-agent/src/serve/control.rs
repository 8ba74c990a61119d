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
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_client::internal::{self, InternalClient};
use warren_proto::internal::{
    ErrorBody, HeartbeatRequest, JoinRequest, JoinResponse, NodeIsolation, ReportedState,
    SessionReport, WatchResponse,
};

use crate::{Agent, SessionSpec};

/// What joining returns, kept in `<data_dir>/node.json` (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    /// The replica the node joined through.
    pub control_url: String,
    /// Every replica to fail over between (the join's answer and the
    /// operator's `--control` list).
    #[serde(default)]
    pub control_urls: Vec<String>,
    pub node_id: String,
    pub credential: String,
    pub relays: Vec<RelayInfo>,
    /// PEM CA for an `https://` control with a private CA (from
    /// `control_ca_file` at join; a file named later replaces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_ca: Option<String>,
}

/// An HTTP client for control: its CA trusted besides the system's roots.
fn control_http(timeout: Duration, ca_pem: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let b = internal::trusting(internal::builder(Duration::from_secs(5), timeout), ca_pem)
        .context("control's CA is not PEM")?;
    Ok(b.build()?)
}

impl Enrollment {
    /// The replicas to try, the one joined through first, without repeats.
    pub fn urls(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for u in std::iter::once(&self.control_url).chain(&self.control_urls) {
            let u = u.trim_end_matches('/').to_string();
            if !u.is_empty() && !out.contains(&u) {
                out.push(u);
            }
        }
        out
    }
}

/// The replicas and `--control URL[,URL…]` lists, as the relay has them.
pub use warren_client::internal::{Replicas, split_urls};
pub use warren_proto::internal::RelayInfo;

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

/// Fills the relays and the node's identity of `cfg` from an enrollment:
/// the relays control named, with their CAs written into `data_dir`.
pub fn apply_enrollment(
    cfg: &mut warren_config::AgentConfig,
    e: &Enrollment,
) -> anyhow::Result<()> {
    let mut relays = Vec::new();
    for (i, r) in e.relays.iter().enumerate() {
        let ca_file = match &r.ca_pem {
            Some(pem) => {
                let p = cfg.data_dir.join(format!("relay-{i}-ca.pem"));
                std::fs::write(&p, pem).with_context(|| format!("writing {}", p.display()))?;
                Some(p)
            }
            None => None,
        };
        relays.push(warren_config::RelayTarget {
            addr: r.addr.clone(),
            server_name: r.server_name.clone(),
            ca_file,
        });
    }
    if relays.is_empty() {
        anyhow::bail!("the control plane named no relays to connect to");
    }
    cfg.node_id = e.node_id.clone();
    cfg.credential = warren_config::Secret::new(e.credential.clone());
    cfg.relays = relays;
    Ok(())
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
/// `control_urls` is one URL or several separated by commas: the first
/// replica that answers takes the join.
pub async fn join(
    control_urls: &str,
    control_ca: Option<String>,
    token: &str,
    node_id: &str,
    allocatable_mb: i64,
    data_dir: &Path,
) -> anyhow::Result<Enrollment> {
    let http = control_http(Duration::from_secs(30), control_ca.as_deref())?;
    let given = split_urls(control_urls);
    // Each replica in turn, until one answers.
    let control = InternalClient::new(given.clone(), None, http);
    let mut answer = None;
    let mut last_err = None;
    for _ in &given {
        let at = control.current();
        let url = at.url;
        let sent = at
            .post("/internal/v1/join")
            .json(&JoinRequest {
                token: token.into(),
                node_id: node_id.into(),
                allocatable_mb,
            })
            .send()
            .await;
        match sent {
            Ok(r) => {
                answer = Some((url.to_string(), r));
                break;
            }
            Err(e) => {
                warn!(control = %url, "join: replica did not answer: {e}");
                last_err = Some(anyhow::anyhow!("reaching the control plane at {url}: {e}"));
                at.failed();
            }
        }
    }
    let Some((control_url, r)) = answer else {
        return Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no control URL given")));
    };
    let status = r.status();
    if !status.is_success() {
        let why = r
            .json::<ErrorBody>()
            .await
            .map(|b| b.error.message)
            .unwrap_or_else(|_| "no reason given".into());
        anyhow::bail!("join refused ({status}): {why}");
    }
    let answer: JoinResponse = r
        .json()
        .await
        .context("the control plane's join answer is not what this agent expects")?;
    let mut urls = answer.control_urls;
    urls.extend(given);
    let e = Enrollment {
        control_url,
        control_urls: urls,
        node_id: node_id.into(),
        credential: answer.credential,
        relays: answer.relays,
        control_ca,
    };
    std::fs::create_dir_all(data_dir)?;
    warren_config::write_private(
        &data_dir.join("node.json"),
        serde_json::to_string_pretty(&e)?.as_bytes(),
    )?;
    Ok(e)
}

/// Keeps the agent in step with control until `shutdown`.
pub fn spawn_sync(
    agent: Arc<Agent>,
    e: &Enrollment,
    memory_override: Option<u64>,
    metrics_addr: Option<String>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let metrics = agent.metrics().clone();
    let http = match control_http(Duration::from_secs(60), e.control_ca.as_deref()) {
        Ok(h) => h,
        Err(e) => {
            warn!("cannot build an HTTP client: {e}");
            return;
        }
    };
    let auth = format!("{}:{}", e.node_id, e.credential);
    let control = Arc::new(InternalClient::new(e.urls(), Some(auth), http));
    agent.recorders().set_control(control.clone());
    let failed: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let starting: Arc<Mutex<HashSet<String>>> = Arc::default();
    let report_now = Arc::new(Notify::new());

    // Heartbeats: every 2 s, and at once after a change.
    {
        let (agent, control, failed, report_now, shutdown) = (
            agent.clone(),
            control.clone(),
            failed.clone(),
            report_now.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            let mut last_ok = std::time::Instant::now();
            loop {
                let (allocatable, free) = host_memory_mb(memory_override);
                let mut sessions: Vec<SessionReport> = agent
                    .sessions()
                    .iter()
                    .map(|s| SessionReport {
                        id: s.id.clone(),
                        state: ReportedState::Running,
                        reason: String::new(),
                        idle_ms: Some(agent.idle_ms(&s.id)),
                    })
                    .collect();
                for (id, reason) in failed.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    sessions.push(SessionReport {
                        id: id.clone(),
                        state: ReportedState::Failed,
                        reason: reason.clone(),
                        idle_ms: None,
                    });
                }
                let body = HeartbeatRequest {
                    allocatable_mb: allocatable,
                    free_mb: free,
                    isolation: NodeIsolation {
                        security_profile: agent.runtime().security().name().into(),
                        disk_limits: agent.runtime().disk_limits(),
                    },
                    metrics_addr: metrics_addr.clone(),
                    sessions,
                    disk: agent.runtime().disk_offer(),
                    warm: agent.pools().ready(),
                };
                let at = control.current();
                let url = at.url;
                match at.post("/internal/v1/heartbeat").json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        metrics.heartbeats.with_label_values(&["ok"]).inc();
                        last_ok = std::time::Instant::now();
                    }
                    Ok(r) if r.status().is_server_error() => {
                        warn!(control = %url, "heartbeat refused: {}; trying the next replica", r.status());
                        metrics.heartbeats.with_label_values(&["refused"]).inc();
                        metrics.control_failovers.inc();
                        at.failed();
                    }
                    Ok(r) => {
                        metrics.heartbeats.with_label_values(&["refused"]).inc();
                        warn!(control = %url, "heartbeat refused: {}", r.status())
                    }
                    Err(e) => {
                        warn!(control = %url, "heartbeat failed: {e}; trying the next replica");
                        metrics.heartbeats.with_label_values(&["unreachable"]).inc();
                        metrics.control_failovers.inc();
                        at.failed();
                    }
                }
                metrics.heartbeat_age_seconds.set(last_ok.elapsed().as_secs() as i64);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = report_now.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
    }

    crate::warm::spawn_filler(agent.clone(), memory_override, tracker, shutdown.clone());

    // The watch, and reconciliation.
    {
        let tracker2 = tracker.clone();
        tracker.spawn(async move {
            let mut index = 0i64;
            loop {
                let at = control.current();
                let url = at.url;
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = at.get(&format!("/internal/v1/watch?index={index}")).send() => r,
                };
                let answer: WatchResponse = match r {
                    Ok(r) if r.status().is_success() => match r.json().await {
                        Ok(a) => a,
                        Err(e) => {
                            warn!("watch answer not understood: {e}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    },
                    Ok(r) => {
                        warn!(control = %url, "watch refused: {}", r.status());
                        if r.status().is_server_error() {
                            at.failed();
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    // Never a reason to touch a session: try the next replica.
                    Err(e) => {
                        warn!(control = %url, "watch failed: {e}; trying the next replica");
                        at.failed();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                index = answer.index;
                agent.pools().set(answer.pools);
                // Snapshots control no longer lists (an older control
                // lists none: then nothing is removed).
                if let Some(keep) = answer.snapshots {
                    let agent = agent.clone();
                    tracker2.spawn(async move {
                        agent.runtime().prune_snapshots(&keep, index).await;
                    });
                }
                let mut desired = answer.sessions;
                let want: HashSet<String> = desired.iter().map(|d| d.id.clone()).collect();
                // Share links and recording first: a session started below
                // is recorded from its first terminal.
                agent.recorders().set_enabled(
                    desired
                        .iter()
                        .filter(|d| d.record)
                        .map(|d| d.id.clone())
                        .collect(),
                );
                agent.shares().replace(
                    desired
                        .iter_mut()
                        .filter(|d| !d.shares.is_empty())
                        .map(|d| (d.id.clone(), std::mem::take(&mut d.shares)))
                        .collect(),
                );
                for d in desired {
                    let known = agent.session(&d.id).is_some()
                        || failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains_key(&d.id);
                    if known
                        || !starting
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(d.id.clone())
                    {
                        continue;
                    }
                    let (agent, failed, starting, report_now) = (
                        agent.clone(),
                        failed.clone(),
                        starting.clone(),
                        report_now.clone(),
                    );
                    tracker2.spawn(async move {
                        let spec = SessionSpec {
                            id: d.id.clone(),
                            image: Some(d.image),
                            memory_mb: Some(d.memory_mb),
                            cpus: Some(d.cpus),
                            pids_limit: None,
                            // Control counts a disk for every session; a
                            // worker that cannot limit disk (control then
                            // places only unasked disks here) runs it
                            // without a limit rather than refuse it.
                            disk_mb: (d.disk_mb > 0 && agent.runtime().disk_limits())
                                .then_some(d.disk_mb),
                            egress: d.egress,
                        };
                        if let Err(e) = agent.create_session(&spec).await {
                            warn!(session = %d.id, "session failed to start: {e}");
                            agent.metrics().errors.with_label_values(&["create"]).inc();
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(d.id.clone(), e.tenant_reason());
                        }
                        starting
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&d.id);
                        report_now.notify_one();
                    });
                }
                for s in agent.sessions() {
                    if !want.contains(&s.id)
                        && !starting
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains(&s.id)
                    {
                        info!(session = %s.id, "no longer desired: removing");
                        if let Err(e) = agent.remove_session(&s.id).await {
                            warn!(session = %s.id, "removing: {e}");
                            agent.metrics().errors.with_label_values(&["remove"]).inc();
                        }
                        report_now.notify_one();
                    }
                }
                failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|id, _| want.contains(id));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The enrollment's replicas, in the order the agent tries them (the
    /// failover itself is `warren_client::internal`'s, tested there).
    #[test]
    fn enrollment_lists_every_replica_once_joined_first() {
        assert_eq!(
            split_urls(" http://a:1/ ,http://b:2,,"),
            vec!["http://a:1", "http://b:2"]
        );
        let e = Enrollment {
            control_url: "http://a:1/".into(),
            control_urls: vec!["http://b:2".into(), "http://a:1".into()],
            node_id: "n".into(),
            credential: "c".into(),
            relays: vec![],
            control_ca: None,
        };
        assert_eq!(e.urls(), vec!["http://a:1", "http://b:2"]);
        assert_eq!(Replicas::new(e.urls()).pick(), (0, "http://a:1"));
    }
}
