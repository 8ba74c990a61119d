//! One test's run: its id, the label and network its containers carry, its
//! data directory; all of it removed when the run is dropped.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::docker::remove_labelled;

/// The label key test containers carry (`warren.test=<run id>`).
pub const TEST_LABEL: &str = "warren.test";

type Action = Box<dyn FnOnce() + Send>;

/// Calls so far in this test binary, for [`run_id`] and [`unique_suffix`].
static CALLS: AtomicU32 = AtomicU32::new(0);

/// `<name>-<pid>-<n>`: distinct per test binary and per call.
pub fn run_id(name: &str) -> String {
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    format!("{name}-{}-{n}", std::process::id())
}

/// A short suffix that does not repeat across calls, processes and runs
/// (the time, the process id and a counter, in hex and decimal): for ids
/// such as sessions'.
pub fn unique_suffix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "{:x}{:x}{}",
        t & 0xffff_ffff,
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    )
}

/// A test's resources, cleaned up on drop (also when the test fails):
/// containers and networks labelled `warren.test=<id>`, the network
/// `warren-test-<id>`, whatever was added with [`TestRun::also_remove`] and
/// [`TestRun::on_drop`], and the data directory.
pub struct TestRun {
    /// `<name>-<pid>`: distinct per test binary and test.
    pub id: String,
    /// `warren.test=<id>`.
    pub label: String,
    /// `warren-test-<id>`.
    pub network: String,
    /// `$TMPDIR/warren-<id>`, fresh (emptied if a past run left it).
    pub dir: PathBuf,
    labels: Vec<(String, Vec<String>)>,
    actions: Vec<Action>,
}

impl TestRun {
    pub fn new(name: &str) -> TestRun {
        let id = format!("{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("warren-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestRun {
            label: format!("{TEST_LABEL}={id}"),
            network: format!("warren-test-{id}"),
            id,
            dir,
            labels: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// Also removes, on drop, every container and network carrying `label`
    /// (`key=value`) and the named networks.
    pub fn also_remove(&mut self, label: impl Into<String>, networks: &[&str]) {
        self.labels.push((
            label.into(),
            networks.iter().map(|n| n.to_string()).collect(),
        ));
    }

    /// Runs `f` on drop, before anything else is removed.
    pub fn on_drop(&mut self, f: impl FnOnce() + Send + 'static) {
        self.actions.push(Box::new(f));
    }
}

impl Drop for TestRun {
    fn drop(&mut self) {
        for f in self.actions.drain(..) {
            f();
        }
        for (label, networks) in &self.labels {
            let nets: Vec<&str> = networks.iter().map(String::as_str).collect();
            remove_labelled(label, &nets);
        }
        remove_labelled(&self.label, &[&self.network]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
