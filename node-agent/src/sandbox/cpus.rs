//! Which CPUs each session may run on.
//!
//! A CPU limit (`--cpus`, a CFS quota) bounds a session's share over each
//! 100 ms period, not where it runs: a 1-CPU session with four busy threads
//! runs on every core of the worker at once until its quota is spent, and
//! every neighbour's keystroke waits behind it (measured: echo p99 9x the
//! idle one on a 2-core worker, 0.5x once pinned; `foundation neighbours`).
//! So each session is also pinned (`--cpuset-cpus`) to `ceil(cpus)` cores,
//! the least loaded when it is created, and a busy session can delay only
//! the sessions that share its cores. Pins live in a container label, so an
//! agent that restarts counts them again.
use std::collections::HashMap;

/// The CPUs this process may use (`Cpus_allowed_list` in
/// `/proc/self/status`), ascending.
pub fn allowed() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .and_then(|v| parse_list(v.trim()))
        })
        .unwrap_or_default()
}

/// Parses a kernel CPU list ("0-3,6,8-9"); `None` if malformed.
pub fn parse_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b): (usize, usize) = match part.split_once('-') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let n = part.parse().ok()?;
                (n, n)
            }
        };
        // Bounded: no list names more CPUs than a kernel supports.
        if a > b || b >= 8192 {
            return None;
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// Formats CPUs as Docker's `--cpuset-cpus` takes them ("0,2,3").
pub fn format_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The pins of this node's sessions.
#[derive(Debug, Default)]
pub struct Pins {
    cpus: Vec<usize>,
    /// Session → (its cores, its CPU limit).
    sessions: HashMap<String, (Vec<usize>, f64)>,
}

impl Pins {
    /// Pinning over `cpus`; with fewer than two there is nothing to choose.
    pub fn new(cpus: Vec<usize>) -> Self {
        Self {
            cpus,
            sessions: HashMap::new(),
        }
    }

    /// Chooses cores for a session limited to `limit` CPUs and records
    /// them; `None` (run anywhere) when it may use every core anyway.
    pub fn assign(&mut self, session: &str, limit: f64) -> Option<Vec<usize>> {
        self.sessions.remove(session);
        let want = (limit.ceil().max(1.0) as usize).min(self.cpus.len());
        if self.cpus.len() < 2 || want >= self.cpus.len() {
            return None;
        }
        let load = self.load();
        let mut order: Vec<usize> = self.cpus.clone();
        // Least loaded first; ties to the lower CPU number (stable).
        order.sort_by(|a, b| load[a].total_cmp(&load[b]));
        let mut chosen: Vec<usize> = order.into_iter().take(want).collect();
        chosen.sort_unstable();
        self.sessions
            .insert(session.to_string(), (chosen.clone(), limit));
        Some(chosen)
    }

    /// Records a session found running with `cores` (an adopted one).
    /// Counts an adopted session's pin; one naming a core this agent does
    /// not hand out (a label the agent did not write) is not counted.
    pub fn record(&mut self, session: &str, cores: Vec<usize>, limit: f64) {
        if cores.is_empty() || !cores.iter().all(|c| self.cpus.contains(c)) {
            return;
        }
        self.sessions.insert(session.to_string(), (cores, limit));
    }

    pub fn release(&mut self, session: &str) {
        self.sessions.remove(session);
    }

    /// CPU limit pinned to each core: a session limited to `x` CPUs on `k`
    /// cores adds `x / k` to each.
    fn load(&self) -> HashMap<usize, f64> {
        let mut load: HashMap<usize, f64> = self.cpus.iter().map(|&c| (c, 0.0)).collect();
        for (cores, limit) in self.sessions.values() {
            let share = limit / cores.len().max(1) as f64;
            for c in cores {
                if let Some(l) = load.get_mut(c) {
                    *l += share;
                }
            }
        }
        load
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_list("1"), Some(vec![1]));
        assert_eq!(parse_list(""), Some(vec![]));
        for bad in ["3-1", "a", "0-", "0-99999", "1,,x"] {
            assert_eq!(parse_list(bad), None, "{bad}");
        }
        assert_eq!(format_list(&[0, 2, 3]), "0,2,3");
        assert!(!allowed().is_empty(), "this process runs somewhere");
    }

    #[test]
    fn sessions_spread_over_the_least_loaded_cores() {
        let mut p = Pins::new(vec![0, 1, 2, 3]);
        assert_eq!(p.assign("a", 1.0), Some(vec![0]));
        assert_eq!(p.assign("b", 1.0), Some(vec![1]));
        assert_eq!(p.assign("c", 2.0), Some(vec![2, 3]));
        // Every core holds one CPU of limit now; a half-CPU session goes to
        // the first, and the next to the second.
        assert_eq!(p.assign("d", 0.5), Some(vec![0]));
        assert_eq!(p.assign("e", 0.5), Some(vec![1]));
        p.release("a");
        p.release("d");
        assert_eq!(p.assign("f", 1.0), Some(vec![0]));
        // A session as wide as the worker is not pinned.
        assert_eq!(p.assign("g", 4.0), None);
        assert_eq!(p.assign("h", 64.0), None);
    }

    #[test]
    fn one_core_or_a_recreated_session_changes_nothing_else() {
        let mut one = Pins::new(vec![0]);
        assert_eq!(one.assign("a", 0.5), None);
        let mut p = Pins::new(vec![0, 1]);
        assert_eq!(p.assign("a", 1.0), Some(vec![0]));
        assert_eq!(
            p.assign("a", 1.0),
            Some(vec![0]),
            "its own old pin is not load"
        );
        p.record("b", vec![0], 1.0);
        assert_eq!(p.assign("c", 1.0), Some(vec![1]));
    }
}
