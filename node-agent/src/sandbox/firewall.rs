//! Host firewall rules that keep sessions off the worker itself.
//!
//! The sessions network is `internal` (no route out) with inter-container
//! traffic off, but the host answers on the bridge's gateway address: any
//! service on the worker listening on all addresses (sshd, dockerd's TCP
//! port, the agent's admin listener) would be reachable from every session.
//! One rule per bridge drops new connections from sessions to the host; the
//! agent's own connections into sessions (port streams) are unaffected
//! because their replies are ESTABLISHED. The rule is idempotent and stays
//! while the agent is stopped, since sessions outlive it.
use std::process::Command;

use anyhow::Context;

fn rule(bridge: &str) -> Vec<String> {
    [
        "INPUT",
        "-i",
        bridge,
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-m",
        "comment",
        "--comment",
        "warren: sessions never reach the worker",
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(tool: &str, action: &str, args: &[String]) -> std::io::Result<bool> {
    let out = Command::new(tool)
        .arg("-w")
        .arg(action)
        .args(args)
        .output()?;
    Ok(out.status.success())
}

/// The Linux bridge behind a Docker bridge network.
pub fn bridge_name(
    network_id: &str,
    options: Option<&std::collections::HashMap<String, String>>,
) -> String {
    options
        .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
        .unwrap_or_else(|| format!("br-{}", &network_id[..network_id.len().min(12)]))
}

/// Installs the drop rule for `bridge` (IPv4 always, IPv6 where the
/// kernel has it). An error here stops the agent: running sessions that can reach
/// the host is worse than not running them.
pub fn install(bridge: &str) -> anyhow::Result<()> {
    let r = rule(bridge);
    let have = run("iptables", "-C", &r).context("running iptables (is it installed?)")?;
    if !have && !run("iptables", "-I", &r).context("running iptables")? {
        anyhow::bail!("iptables refused the rule isolating {bridge} from the host");
    }
    // IPv6 link-local addresses exist on every bridge even without IPv6
    // networking: where the kernel has IPv6, the rule is needed there too,
    // and a missing tool or a refused rule is an error, not a log line.
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        let have = run("ip6tables", "-C", &r)
            .context("running ip6tables (the kernel has IPv6: install ip6tables)")?;
        if !have && !run("ip6tables", "-I", &r).context("running ip6tables")? {
            anyhow::bail!("ip6tables refused the rule isolating {bridge} from the host");
        }
    }
    Ok(())
}

/// Removes the rule (every copy) for `bridge`.
pub fn remove(bridge: &str) {
    let r = rule(bridge);
    for tool in ["iptables", "ip6tables"] {
        while let Ok(true) = run(tool, "-D", &r) {}
    }
}
