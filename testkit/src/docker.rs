//! Docker from the outside, as an operator sees it: labelled containers and
//! networks, copying files in.

fn docker_ids(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new("docker").args(args).output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// Containers carrying `label` (`key=value`).
pub fn labelled_containers(label: &str) -> Vec<String> {
    docker_ids(&["ps", "-aq", "--filter", &format!("label={label}")])
}

/// Removes every container and network carrying `label`, and the named networks.
pub fn remove_labelled(label: &str, networks: &[&str]) {
    let ids = labelled_containers(label);
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .arg("rm")
            .arg("-f")
            .args(&ids)
            .output();
    }
    let mut nets = docker_ids(&["network", "ls", "-q", "--filter", &format!("label={label}")]);
    nets.extend(networks.iter().map(|n| n.to_string()));
    for n in nets {
        let id = docker_ids(&["network", "inspect", "-f", "{{.Id}}", &n]);
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &n])
            .output();
        if let Some(id) = id.first() {
            remove_host_rules(&format!("br-{}", &id[..id.len().min(12)]));
        }
    }
}

/// Copies a host file into a container (`docker cp`): sessions share no
/// writable host directory, so tests hand files over this way.
pub fn copy_into(container: &str, host_path: &std::path::Path, dest: &str) {
    let st = std::process::Command::new("docker")
        .arg("cp")
        .arg(host_path)
        .arg(format!("{container}:{dest}"))
        .status()
        .expect("running docker cp");
    assert!(
        st.success(),
        "docker cp {} {container}:{dest} failed",
        host_path.display()
    );
}

/// Removes the agent's host firewall rules for a bridge that is gone.
fn remove_host_rules(bridge: &str) {
    let script = format!(
        "for t in iptables ip6tables; do command -v $t >/dev/null || continue; \
         $t -w -S INPUT | grep -F -- '-i {bridge} ' | grep -F 'warren:' | sed 's/^-A /-D /' | \
         while read -r r; do eval \"$t -w $r\"; done; done"
    );
    let _ = std::process::Command::new("sh")
        .args(["-c", &script])
        .output();
}
