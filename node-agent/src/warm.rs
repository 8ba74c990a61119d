//! Warm pools on this node: how many containers each pool keeps started
//! (as many as control's `[[pools]]` asks, memory allowing), filling them
//! in the background, and handing one to a session atomically.
//!
//! A warm container belongs to nobody until claimed: it is not a session,
//! control does not count it against a tenant or the node, and it reaches
//! nothing (the sessions network, no egress). A claim takes it out of the
//! pool under one lock, so two creates never get the same one; it is then
//! renamed after its session and removed with it, never returned.
//! Memory promised to sessions comes first: a pool keeps only the
//! containers that fit in what sessions have not reserved, so it shrinks
//! as sessions arrive and grows back as they leave.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_proto::internal::WarmPool;

use crate::sandbox::runtime::SessionInfo;
use crate::{Agent, SessionSpec};

/// How long a pool whose start failed waits before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How often the filler looks again without being woken (memory moves).
const RECHECK: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct WarmPools {
    inner: Mutex<Inner>,
    wake: Notify,
}

#[derive(Default)]
struct Inner {
    /// As control's last watch answer listed them.
    pools: Vec<WarmPool>,
    /// Ready containers by pool name, oldest first.
    warm: HashMap<String, Vec<SessionInfo>>,
    /// Pools whose last start failed, until when they rest.
    resting: HashMap<String, Instant>,
    /// Out of the pool, to be removed (a removal that failed is tried
    /// again: nothing runs outside the budget for long).
    doomed: Vec<SessionInfo>,
}

/// What the filler does next.
enum Step {
    Start(WarmPool),
    Remove(SessionInfo),
    Wait,
}

impl WarmPools {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pools control lists now (from each watch answer).
    pub fn set(&self, pools: Vec<WarmPool>) {
        let mut g = self.lock();
        if g.pools != pools {
            g.pools = pools;
            g.resting.clear();
            drop(g);
            self.wake.notify_one();
        }
    }

    /// Ready containers per pool, for the heartbeat.
    pub fn ready(&self) -> Vec<warren_proto::internal::WarmCount> {
        self.lock()
            .warm
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .take(warren_proto::internal::MAX_REPORTED_POOLS)
            .map(|(pool, l)| warren_proto::internal::WarmCount {
                pool: pool.clone(),
                ready: l.len() as u32,
            })
            .collect()
    }

    /// Ready containers, all pools together.
    pub fn warm(&self) -> usize {
        self.lock().warm.values().map(Vec::len).sum()
    }

    /// Takes a ready container for `spec`, if a pool of exactly its image
    /// and size (and no egress) has one. Only one caller ever gets a given
    /// container.
    pub fn take(&self, spec: &SessionSpec) -> Option<SessionInfo> {
        if !spec.egress.is_none() || spec.pids_limit.is_some() {
            return None;
        }
        let name = WarmPool::key(
            spec.image.as_deref()?,
            spec.memory_mb?,
            spec.cpus?,
            spec.disk_mb.unwrap_or(0),
        );
        let taken = {
            let mut g = self.lock();
            let list = g.warm.get_mut(&name)?;
            (!list.is_empty()).then(|| list.remove(0))
        };
        if taken.is_some() {
            self.wake.notify_one();
        }
        taken
    }

    /// The next step towards every pool's target: first removing what no
    /// pool wants or memory no longer allows, then starting what is missing.
    /// `budget_mb` is memory sessions have not reserved.
    fn plan(&self, budget_mb: i64, disk_limits: bool) -> Step {
        let mut g = self.lock();
        let now = Instant::now();
        g.resting.retain(|_, until| *until > now);
        if let Some(w) = g.doomed.pop() {
            return Step::Remove(w);
        }
        let mut budget = budget_mb;
        let mut targets: HashMap<String, usize> = HashMap::new();
        for p in &g.pools {
            let fit = (budget.max(0) as u64).checked_div(p.memory_mb).unwrap_or(0) as usize;
            let target = (p.size as usize).min(fit);
            budget -= (target as u64 * p.memory_mb) as i64;
            *targets.entry(effective_name(p, disk_limits)).or_default() += target;
        }
        for (name, list) in g.warm.iter_mut() {
            if list.len() > targets.get(name).copied().unwrap_or(0) {
                // The newest goes first: the oldest is next to be claimed.
                if let Some(w) = list.pop() {
                    return Step::Remove(w);
                }
            }
        }
        for p in &g.pools {
            let name = effective_name(p, disk_limits);
            let have = g.warm.get(&name).map_or(0, Vec::len);
            if have < targets.get(&name).copied().unwrap_or(0) && !g.resting.contains_key(&name) {
                return Step::Start(p.clone());
            }
        }
        Step::Wait
    }

    /// A container out of every pool that must go (tried until it does).
    pub fn discard(&self, info: SessionInfo) {
        self.lock().doomed.push(info);
        self.wake.notify_one();
    }

    fn add(&self, name: String, info: SessionInfo) {
        self.lock().warm.entry(name).or_default().push(info);
    }

    fn rest(&self, name: String) {
        self.lock()
            .resting
            .insert(name, Instant::now() + RETRY_AFTER);
    }
}

impl Agent {
    /// A warm container of `spec`'s pool made this session's, if one is
    /// ready; one that cannot be claimed is removed (a cold start follows).
    pub(crate) async fn claim_warm(&self, spec: &SessionSpec) -> Option<SessionInfo> {
        let warm = self.pools().take(spec)?;
        let key = warm.key.clone();
        match self.runtime().claim_warm(warm.clone(), &spec.id).await {
            Ok(info) => {
                self.metrics()
                    .pool_claims
                    .with_label_values(&["warm"])
                    .inc();
                info!(session = %spec.id, warm = %key, "claimed a warm container");
                Some(info)
            }
            Err(e) => {
                warn!(session = %spec.id, warm = %key, "cannot claim a warm container: {e}");
                self.metrics().errors.with_label_values(&["pool"]).inc();
                // Removed by the filler, which tries until it is gone.
                self.pools().discard(warm);
                None
            }
        }
    }
}

/// The name a pool's containers are found under by a session's spec: on a
/// worker that cannot limit disks, sessions (and so the pool) run without.
fn effective_name(p: &WarmPool, disk_limits: bool) -> String {
    WarmPool::key(
        &p.image,
        p.memory_mb,
        p.cpus,
        if disk_limits { p.disk_mb } else { 0 },
    )
}

/// Keeps the pools full until `shutdown`, one container at a time (a
/// create uses the engine as much as a session's would; sessions' own
/// starts are not queued behind a burst of refills).
pub fn spawn_filler(
    agent: Arc<Agent>,
    memory_override: Option<u64>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    tracker.spawn(async move {
        let pools = agent.pools().clone();
        loop {
            let (allocatable, _) = crate::serve::control::host_memory_mb(memory_override);
            let reserved: i64 = agent.sessions().iter().map(|s| s.memory_mb as i64).sum();
            let disk_limits = agent.runtime().disk_limits();
            // Registered before planning: a claim or a new list in between
            // wakes the wait below at once.
            let woken = pools.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match pools.plan(allocatable - reserved, disk_limits) {
                Step::Start(p) => {
                    let name = effective_name(&p, disk_limits);
                    let started = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = agent.runtime().create_warm(&p) => r,
                    };
                    match started {
                        Ok(info) => {
                            info!(pool = %name, container = %info.container_id, "warm container ready");
                            pools.add(name, info);
                        }
                        Err(e) => {
                            warn!(pool = %name, "cannot start a warm container: {e}; trying again in {} s", RETRY_AFTER.as_secs());
                            agent.metrics().errors.with_label_values(&["pool"]).inc();
                            pools.rest(name);
                        }
                    }
                }
                Step::Remove(w) => {
                    if let Err(e) = agent.runtime().remove(&w).await {
                        warn!(container = %w.container_id, "cannot remove a warm container: {e}; trying again in {} s", RETRY_AFTER.as_secs());
                        agent.metrics().errors.with_label_values(&["pool"]).inc();
                        pools.discard(w);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(RETRY_AFTER) => {}
                        }
                    }
                }
                Step::Wait => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = &mut woken => {}
                        _ = tokio::time::sleep(RECHECK) => {}
                    }
                }
            }
            agent.metrics().pool_warm.set(pools.warm() as i64);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::initsock::InitTarget;

    fn pool(memory_mb: u64, size: u32) -> WarmPool {
        WarmPool {
            image: "img".into(),
            memory_mb,
            cpus: 1.0,
            disk_mb: 0,
            size,
        }
    }

    fn warm(key: &str) -> SessionInfo {
        SessionInfo {
            id: key.into(),
            key: key.into(),
            container_id: format!("c-{key}"),
            image: "img".into(),
            memory_mb: 64,
            ip: None,
            init: InitTarget {
                container_id: format!("c-{key}").into(),
                init_pid: 0,
            },
        }
    }

    fn spec(memory_mb: u64) -> SessionSpec {
        SessionSpec {
            id: "s1".into(),
            image: Some("img".into()),
            memory_mb: Some(memory_mb),
            cpus: Some(1.0),
            pids_limit: None,
            disk_mb: None,
            egress: Default::default(),
        }
    }

    #[test]
    fn fills_to_size_within_memory_and_shrinks_first() {
        let p = WarmPools::default();
        p.set(vec![pool(64, 3)]);
        assert!(matches!(p.plan(1024, true), Step::Start(_)));
        for k in ["warm-a", "warm-b", "warm-c"] {
            p.add(pool(64, 3).name(), warm(k));
        }
        assert!(matches!(p.plan(1024, true), Step::Wait));
        // Sessions reserved all but 130 MB: two fit, the newest goes.
        match p.plan(130, true) {
            Step::Remove(w) => assert_eq!(w.key, "warm-c"),
            _ => panic!("expected a removal"),
        }
        assert!(matches!(p.plan(130, true), Step::Wait));
        // No memory left at all: none is kept.
        assert!(matches!(p.plan(-5, true), Step::Remove(_)));
    }

    #[test]
    fn a_claim_is_exact_and_once() {
        let p = WarmPools::default();
        p.set(vec![pool(64, 2)]);
        p.add(pool(64, 2).name(), warm("warm-a"));
        assert!(p.take(&spec(128)).is_none(), "another size");
        let mut egress = spec(64);
        egress.egress = warren_proto::egress::Egress::Internet;
        assert!(p.take(&egress).is_none(), "a session with egress");
        assert_eq!(p.take(&spec(64)).unwrap().key, "warm-a");
        assert!(p.take(&spec(64)).is_none(), "taken once");
    }

    #[test]
    fn a_pool_no_longer_listed_is_emptied() {
        let p = WarmPools::default();
        p.set(vec![pool(64, 1)]);
        p.add(pool(64, 1).name(), warm("warm-a"));
        p.set(Vec::new());
        assert!(matches!(p.plan(1024, true), Step::Remove(_)));
        assert!(matches!(p.plan(1024, true), Step::Wait));
    }
}
