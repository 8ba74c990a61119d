//! The command line: which scenario, how hard, for how long, where the
//! report goes.
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Terminals,
    Throughput,
    Sessions,
    Ssh,
    Tunnel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// The same terminals straight into `docker exec -it` (Docker's API
    /// with a TTY, as the CLI uses it), no Warren in the path.
    Direct,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Args {
    pub scenario: Scenario,
    /// Sessions to create (terminals, throughput, ssh).
    #[arg(long, default_value_t = 4)]
    pub sessions: usize,
    /// Terminals per session.
    #[arg(long, default_value_t = 2)]
    pub terminals: usize,
    /// Keystrokes per second per terminal.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// throughput: bytes per second each printing terminal writes (0: flat out).
    #[arg(long, default_value_t = 0)]
    pub output_rate: u64,
    /// throughput: echo probes per session beside the printing terminals.
    #[arg(long, default_value_t = 1)]
    pub probes: usize,
    /// sessions: new sessions per second.
    #[arg(long, default_value_t = 1.0)]
    pub session_rate: f64,
    /// Time measured (after ramp-up and warm-up), like 20s, 2m (a bare
    /// number is seconds).
    #[arg(long, default_value = "20s", value_parser = warren_proto::duration::parse_secs)]
    pub duration: u64,
    /// Time over which terminals are opened.
    #[arg(long, default_value = "5s", value_parser = warren_proto::duration::parse_secs)]
    pub ramp_up: u64,
    /// Time run but not measured, after ramp-up.
    #[arg(long, default_value = "3s", value_parser = warren_proto::duration::parse_secs)]
    pub warmup: u64,
    /// The run ends here whatever happens (default: everything above + 120 s).
    #[arg(long, value_parser = warren_proto::duration::parse_secs)]
    pub hard_stop: Option<u64>,
    #[arg(long, default_value = "warren/session:mini")]
    pub image: String,
    #[arg(long, default_value_t = 64)]
    pub memory_mb: u64,
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
    /// Where report.json, report.md and the SVG charts go.
    #[arg(long, default_value = "loadtest-report")]
    pub out: PathBuf,
    /// Processes to sample (`name=PID`, repeatable); default: every process
    /// called `warren` on this machine.
    #[arg(long = "pid")]
    pub pids: Vec<String>,
    /// No progress bar (logs and tests).
    #[arg(long)]
    pub quiet: bool,
}
