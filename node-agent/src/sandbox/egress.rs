//! Egress: what a session with an egress policy may reach, enforced on the
//! worker in a place the session cannot touch.
//!
//! A session without a policy (`none`, the default) stays on the internal
//! sessions network (no route out at all). A session with one gets a
//! bridge network of its own (not internal, inter-container traffic off,
//! no IPv6; [`crate::sandbox::runtime`] makes it), and the agent owns the
//! host's rules for that bridge, in the worker's network namespace: a
//! session's root, even with NET_ADMIN in its own namespace, changes only
//! its own namespace's rules, never these.
//!
//! - A chain per bridge, `WARREN-<bridge>`, jumped from Docker's
//!   `DOCKER-USER` (which Docker evaluates first in `FORWARD`, and never
//!   flushes) for packets entering or leaving the bridge. Replies to what
//!   was allowed pass; nothing new is forwarded into the session; what the
//!   session starts is refused unless the policy allows it, in this order
//!   (the first match wins): the ranges no session reaches
//!   ([`warren_proto::egress::NEVER`]: loopback, link-local with the
//!   clouds' metadata addresses, multicast, …), every Warren network on the
//!   worker (the sessions network, every session's own network: by subnet
//!   and by bridge), every other bridge of the worker (Docker's own, a
//!   test's, libvirt's) unless the policy lists that bridge's subnet or a
//!   part of it (a wider CIDR such as `172.16.0.0/12` does not open it),
//!   and any Docker bridge made since (`docker*`, `br-*`), then the policy: its CIDRs, or for `internet` everything but the
//!   private ranges. The rest is rejected.
//! - The worker itself: its addresses are local, so packets to them go to
//!   `INPUT`, not `FORWARD`: the same rule as the sessions network's
//!   ([`crate::sandbox::firewall`]) drops new connections from the bridge
//!   (IPv4 and IPv6), whatever the policy lists.
//! - IPv6: sessions have none (`disable_ipv6` in their namespace); the
//!   bridge's IPv6 forwarding is dropped as well.
//!
//! The chain is written in one `iptables-restore --noflush` (declared,
//! hence flushed and refilled atomically), so writing it again (adoption,
//! after a reboot lost it) never opens a gap. Rules go before the session's
//! container starts, and after it is removed.
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;
use warren_proto::egress::{Egress, Ipv4Cidr, NEVER, PRIVATE};

/// Every session bridge's name starts so (`wrn-` and the subnet in hex).
pub const BRIDGE_PREFIX: &str = "wrn-";
/// Each session's network is a /28 of `docker.egress_pool`.
pub const SUBNET_PREFIX: u8 = 28;
/// The agent's chains are named `WARREN-<bridge>`.
const CHAIN_PREFIX: &str = "WARREN-";
/// Docker's chain for the host's own rules, first in `FORWARD`.
const DOCKER_USER: &str = "DOCKER-USER";
/// Docker's names for its bridges (`docker0`, `br-<network id>`).
const DOCKER_BRIDGES: [&str; 2] = ["docker+", "br-+"];
/// What a session is told when a packet is refused.
const REJECT: [&str; 4] = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"];

/// A bridge on the worker and the subnet it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNet {
    pub bridge: String,
    pub subnet: Ipv4Cidr,
}

/// The bridge of a session network on `subnet` (at most 15 characters,
/// the kernel's limit; unique on the worker, as subnets are).
pub fn bridge_for(subnet: &Ipv4Cidr) -> String {
    format!("{BRIDGE_PREFIX}{:08x}", u32::from(subnet.addr()))
}

/// The agent's chain for a session bridge.
pub fn chain_for(bridge: &str) -> String {
    format!("{CHAIN_PREFIX}{bridge}")
}

/// What a session's rules depend on, gathered by the runtime.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The session's own bridge.
    pub bridge: &'a str,
    /// Its policy, checked ([`Egress::checked`]); not `None`.
    pub egress: &'a Egress,
    /// Warren's networks on this worker: refused whatever the policy says.
    pub warren: &'a [HostNet],
    /// The worker's other bridges: refused unless the policy lists their
    /// subnet or a part of it.
    pub bridges: &'a [HostNet],
}

/// The rules of the session's chain, in order (each an `-A` line of
/// `iptables-restore`).
pub fn chain_rules(plan: &Plan<'_>) -> Vec<String> {
    let chain = chain_for(plan.bridge);
    let br = plan.bridge;
    let mut rules: Vec<Vec<String>> = Vec::new();
    let mut add = |parts: &[&str]| rules.push(parts.iter().map(|s| s.to_string()).collect());
    let established = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"];
    // Into the session: replies only (the agent's own connections to it
    // leave the host through OUTPUT, not through here).
    add(&[&["-o", br][..], &established, &["-j", "ACCEPT"]].concat());
    add(&["-o", br, "-j", "DROP"]);
    // From here on, packets the session sends.
    add(&[&established[..], &["-j", "ACCEPT"]].concat());
    for (net, _) in NEVER {
        add(&[&["-d", &net.to_string()][..], &REJECT].concat());
    }
    add(&[&["-o", &format!("{BRIDGE_PREFIX}+")][..], &REJECT].concat());
    for w in plan.warren {
        add(&[&["-d", &w.subnet.to_string()][..], &REJECT].concat());
        add(&[&["-o", &w.bridge][..], &REJECT].concat());
    }
    let listed = plan.egress.cidrs();
    for b in plan.bridges {
        for c in listed.iter().filter(|c| b.subnet.contains(c)) {
            add(&["-d", &c.to_string(), "-o", &b.bridge, "-j", "ACCEPT"]);
        }
        add(&[&["-d", &b.subnet.to_string()][..], &REJECT].concat());
        add(&[&["-o", &b.bridge][..], &REJECT].concat());
    }
    // Docker's bridges made after these rules were written.
    for wildcard in DOCKER_BRIDGES {
        add(&[&["-o", wildcard][..], &REJECT].concat());
    }
    match plan.egress {
        Egress::Internet => {
            for p in PRIVATE {
                add(&[&["-d", &p.to_string()][..], &REJECT].concat());
            }
            add(&["-j", "ACCEPT"]);
        }
        _ => {
            for c in &listed {
                add(&["-d", &c.to_string(), "-j", "ACCEPT"]);
            }
        }
    }
    add(&REJECT);
    rules
        .into_iter()
        .map(|r| format!("-A {chain} {}", r.join(" ")))
        .collect()
}

/// `iptables-restore --noflush` input that creates (or flushes) the
/// session's chain and fills it.
pub fn restore_input(plan: &Plan<'_>) -> String {
    let mut s = format!("*filter\n:{} - [0:0]\n", chain_for(plan.bridge));
    for r in chain_rules(plan) {
        s.push_str(&r);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// The jumps into the session's chain: `-i` and `-o` its bridge.
fn jumps(bridge: &str) -> [Vec<String>; 2] {
    let chain = chain_for(bridge);
    ["-i", "-o"].map(|dir| {
        [DOCKER_USER, dir, bridge, "-j", &chain]
            .iter()
            .map(|s| s.to_string())
            .collect()
    })
}

/// IPv6 forwarding to and from the bridge, dropped.
fn ipv6_rules(bridge: &str) -> [Vec<String>; 2] {
    ["-i", "-o"].map(|dir| {
        ["FORWARD", dir, bridge, "-j", "DROP"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    })
}

fn run(tool: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(tool).arg("-w").args(args).output()
}

fn succeeds(tool: &str, action: &str, rule: &[String]) -> anyhow::Result<bool> {
    let mut args = vec![action];
    args.extend(rule.iter().map(String::as_str));
    Ok(run(tool, &args)
        .with_context(|| format!("running {tool}"))?
        .status
        .success())
}

/// Adds `rule` at the top of its chain unless it is there already.
fn ensure_first(tool: &str, rule: &[String]) -> anyhow::Result<()> {
    if succeeds(tool, "-C", rule)? {
        return Ok(());
    }
    let mut args: Vec<&str> = vec!["-I", &rule[0], "1"];
    args.extend(rule[1..].iter().map(String::as_str));
    let out = run(tool, &args).with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{tool} refused `{}`: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ipv6() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// Writes the session's chain, jumps to it, and the host rules of its
/// bridge. Idempotent; blocking (call it off the async runtime).
pub fn apply(plan: &Plan<'_>) -> anyhow::Result<()> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore (is iptables installed?)")?;
    child
        .stdin
        .take()
        .context("iptables-restore's input")?
        .write_all(restore_input(plan).as_bytes())
        .context("writing to iptables-restore")?;
    let out = child.wait_with_output().context("iptables-restore")?;
    if !out.status.success() {
        anyhow::bail!(
            "iptables-restore refused the egress rules of {}: {}",
            plan.bridge,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for j in jumps(plan.bridge) {
        ensure_first("iptables", &j).context(
            "Docker's DOCKER-USER chain is needed for egress (is Docker's iptables integration on?)",
        )?;
    }
    crate::sandbox::firewall::install(plan.bridge)?;
    if ipv6() {
        for r in ipv6_rules(plan.bridge) {
            ensure_first("ip6tables", &r)?;
        }
    }
    Ok(())
}

/// Removes every rule of the bridge and its chain (nothing to do if there
/// are none). Blocking.
pub fn remove(bridge: &str) {
    for j in jumps(bridge) {
        while let Ok(true) = succeeds("iptables", "-D", &j) {}
    }
    let chain = chain_for(bridge);
    let _ = run("iptables", &["-F", &chain]);
    let _ = run("iptables", &["-X", &chain]);
    crate::sandbox::firewall::remove(bridge);
    for r in ipv6_rules(bridge) {
        while let Ok(true) = succeeds("ip6tables", "-D", &r) {}
    }
}

/// The bridges the agent's chains on this worker are for (any agent's).
pub fn chained_bridges() -> Vec<String> {
    let Ok(out) = run("iptables", &["-S"]) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter_map(|c| c.strip_prefix(CHAIN_PREFIX))
        .filter(|b| b.starts_with(BRIDGE_PREFIX))
        .map(str::to_string)
        .collect()
}

/// Removes the rules of session bridges that no longer exist (an agent
/// stopped between removing a network and its rules). A bridge that
/// exists is left alone: another agent on this worker may own it.
pub fn sweep_stale() -> usize {
    let mut n = 0;
    for b in chained_bridges() {
        if !Path::new("/sys/class/net").join(&b).exists() {
            remove(&b);
            n += 1;
        }
    }
    n
}

fn route_table() -> String {
    std::fs::read_to_string("/proc/net/route").unwrap_or_default()
}

/// The subnets directly connected through the worker's bridges, but for
/// bridges that carry a default route (a bridge holding the uplink) and
/// those in `skip`.
pub fn host_bridges(skip: &HashSet<String>) -> Vec<HostNet> {
    let is_bridge = |i: &str| Path::new("/sys/class/net").join(i).join("bridge").is_dir();
    connected_bridges(&route_table(), is_bridge)
        .into_iter()
        .filter(|n| !skip.contains(&n.bridge))
        .collect()
}

/// Every subnet the worker is directly connected to (its LAN, its
/// bridges): a session network must not take one of them.
pub fn host_subnets() -> Vec<Ipv4Cidr> {
    connected(&route_table())
        .0
        .into_iter()
        .map(|n| n.subnet)
        .collect()
}

/// [`host_bridges`] from the text of `/proc/net/route`.
fn connected_bridges(routes: &str, is_bridge: impl Fn(&str) -> bool) -> Vec<HostNet> {
    let (connected, uplinks) = connected(routes);
    connected
        .into_iter()
        .filter(|n| !uplinks.contains(&n.bridge) && is_bridge(&n.bridge))
        .collect()
}

/// The directly connected subnets of `/proc/net/route`'s text, and the
/// interfaces that carry a default route.
fn connected(routes: &str) -> (Vec<HostNet>, HashSet<String>) {
    let mut connected = Vec::new();
    let mut uplinks = HashSet::new();
    for line in routes.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(dest), Some(gw), Some(mask)) =
            (f.first(), f.get(1), f.get(2), f.get(7))
        else {
            continue;
        };
        // The kernel prints each address's bytes (network order) as one
        // native-endian word.
        let addr = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
        let (Some(dest), Some(gw), Some(mask)) = (addr(dest), addr(gw), addr(mask)) else {
            continue;
        };
        let prefix = u32::from_be_bytes(mask).count_ones() as u8;
        if prefix == 0 {
            uplinks.insert(iface.to_string());
        } else if gw == [0; 4]
            && let Some(subnet) = Ipv4Cidr::new(dest.into(), prefix)
        {
            connected.push(HostNet {
                bridge: iface.to_string(),
                subnet,
            });
        }
    }
    (connected, uplinks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, subnet: &str) -> HostNet {
        HostNet {
            bridge: bridge.into(),
            subnet: subnet.parse().expect("subnet"),
        }
    }

    fn position(rules: &[String], needle: &str) -> usize {
        rules
            .iter()
            .position(|r| r.contains(needle))
            .unwrap_or_else(|| panic!("no rule with {needle:?} in {rules:#?}"))
    }

    #[test]
    fn refusals_come_before_what_the_policy_allows() {
        let egress = Egress::Cidrs(vec!["172.16.0.0/12".into(), "172.20.5.0/24".into()]);
        let warren = [
            net("br-sessions", "172.18.0.0/16"),
            net("wrn-0afe0010", "10.254.0.16/28"),
        ];
        let bridges = [
            net("docker0", "172.17.0.0/16"),
            net("br-test", "172.20.0.0/16"),
        ];
        let plan = Plan {
            bridge: "wrn-0afe0000",
            egress: &egress,
            warren: &warren,
            bridges: &bridges,
        };
        let rules = chain_rules(&plan);
        assert!(
            rules
                .iter()
                .all(|r| r.starts_with("-A WARREN-wrn-0afe0000 "))
        );
        assert_eq!(
            rules[0],
            "-A WARREN-wrn-0afe0000 -o wrn-0afe0000 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        assert_eq!(rules[1], "-A WARREN-wrn-0afe0000 -o wrn-0afe0000 -j DROP");
        let allowed = position(&rules, "-d 172.16.0.0/12 -j ACCEPT");
        for refused in [
            "-d 169.254.0.0/16 -j REJECT",
            "-d 127.0.0.0/8 -j REJECT",
            "-o wrn-+ -j REJECT",
            "-d 172.18.0.0/16 -j REJECT",
            "-o br-sessions -j REJECT",
            "-d 10.254.0.16/28 -j REJECT",
            "-d 172.17.0.0/16 -j REJECT",
            "-o docker0 -j REJECT",
            "-d 172.20.0.0/16 -j REJECT",
        ] {
            assert!(position(&rules, refused) < allowed, "{refused} first");
        }
        // A listed part of another bridge's subnet opens that part only.
        let part = position(&rules, "-d 172.20.5.0/24 -o br-test -j ACCEPT");
        assert!(part < position(&rules, "-d 172.20.0.0/16 -j REJECT"));
        assert!(!rules.iter().any(|r| r.contains("-o docker0 -j ACCEPT")));
        for later in ["-o docker+ -j REJECT", "-o br-+ -j REJECT"] {
            assert!(position(&rules, later) > part && position(&rules, later) < allowed);
        }
        assert_eq!(
            rules.last().map(String::as_str),
            Some("-A WARREN-wrn-0afe0000 -j REJECT --reject-with icmp-admin-prohibited")
        );
        let text = restore_input(&plan);
        assert!(text.starts_with("*filter\n:WARREN-wrn-0afe0000 - [0:0]\n"));
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn internet_is_public_addresses_only() {
        let plan = Plan {
            bridge: "wrn-0afe0000",
            egress: &Egress::Internet,
            warren: &[],
            bridges: &[],
        };
        let rules = chain_rules(&plan);
        let all = position(&rules, "0000 -j ACCEPT");
        for p in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
        ] {
            assert!(position(&rules, &format!("-d {p} -j REJECT")) < all);
        }
        assert!(position(&rules, "-d 169.254.0.0/16 -j REJECT") < all);
    }

    #[test]
    fn names_fit_the_kernel_and_iptables() {
        let subnet: Ipv4Cidr = "10.254.255.240/28".parse().expect("subnet");
        let b = bridge_for(&subnet);
        assert_eq!(b, "wrn-0afefff0");
        assert!(b.len() <= 15, "IFNAMSIZ");
        assert!(chain_for(&b).len() <= 28, "iptables chain names");
    }

    #[test]
    fn connected_bridges_come_from_the_route_table() {
        let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
            br0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n\
            br0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            br-x\t0000FEAC\t020011AC\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let got = connected_bridges(routes, |i| i != "eth0");
        // docker0 only: eth0 is no bridge, br0 holds the default route,
        // br-x's route goes through a gateway. (Little-endian layout.)
        if cfg!(target_endian = "little") {
            assert_eq!(got, vec![net("docker0", "172.17.0.0/16")]);
        }
    }
}
