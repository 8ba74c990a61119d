//! `warren session ssh`: runs the system's OpenSSH client against the
//! relay, pinned to the relay's host key when `warren up` wrote it, with a
//! fresh session token offered as the password (after any registered key).
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

/// When set, `warren` prints it and exits: ssh's `SSH_ASKPASS` helper.
pub const ASKPASS_ENV: &str = "WARREN_SSH_ASKPASS_TOKEN";

/// `[host]:port key` lines for a known_hosts file.
pub fn known_hosts_lines(hosts: &[&str], port: u16, key: &str) -> String {
    hosts
        .iter()
        .map(|h| {
            if port == 22 {
                format!("{h} {key}\n")
            } else {
                format!("[{h}]:{port} {key}\n")
            }
        })
        .collect()
}

/// `(host, port)` from a session's `ssh` field (`ssh -p PORT ID@HOST`).
pub fn endpoint(ssh: &str) -> Option<(String, u16)> {
    let mut words = ssh.split_whitespace();
    let mut port = 22;
    let mut host = None;
    while let Some(w) = words.next() {
        match w {
            "ssh" => {}
            "-p" => port = words.next()?.parse().ok()?,
            w => host = w.rsplit_once('@').map(|(_, h)| h.to_string()),
        }
    }
    Some((host?, port))
}

/// A known_hosts file pinning the relays' host keys: the one `warren up`
/// wrote, else one made from the API's `GET /v1/ssh/host-keys`.
pub async fn known_hosts(
    client: &crate::client::Client,
    data_dir: &Path,
    host: &str,
    port: u16,
) -> anyhow::Result<std::path::PathBuf> {
    let up =
        warren_proto::api::UpFile::read(&data_dir.join("up.json")).map_err(anyhow::Error::msg)?;
    if let Some(kh) = up.map(|u| u.ssh_known_hosts)
        && kh.exists()
    {
        return Ok(kh);
    }
    let v = client.call("GET", "/v1/ssh/host-keys", None).await?;
    let keys: Vec<&str> = v["host_keys"]
        .as_array()
        .map(|a| a.iter().filter_map(|k| k["public_key"].as_str()).collect())
        .unwrap_or_default();
    if keys.is_empty() {
        anyhow::bail!(
            "the control plane knows no relay host key yet (is a relay with SSH running?)"
        );
    }
    let text: String = keys
        .iter()
        .map(|k| known_hosts_lines(&[host], port, k))
        .collect();
    let uid = rustix::process::getuid().as_raw();
    let path = std::env::temp_dir().join(format!("warren-{uid}-known_hosts"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The ssh command for session `view` (as the API shows it).
pub fn command(
    view: &Value,
    token: &str,
    known_hosts: &Path,
    extra: &[String],
) -> anyhow::Result<Command> {
    let id = view["id"]
        .as_str()
        .context("the API returned no session id")?;
    let (host, port) = view["ssh"]
        .as_str()
        .and_then(endpoint)
        .context("the control plane names no SSH endpoint for this session")?;
    let mut cmd = Command::new("ssh");
    cmd.arg("-p")
        .arg(port.to_string())
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-o")
        .arg("StrictHostKeyChecking=yes");
    if !token.is_empty() {
        let me = std::env::current_exe().context("locating the warren binary")?;
        cmd.env("SSH_ASKPASS", me)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env(ASKPASS_ENV, token);
    }
    cmd.arg(format!("{id}@{host}"));
    cmd.args(extra);
    Ok(cmd)
}

/// Replaces this process with `cmd`.
pub fn exec(mut cmd: Command) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let e = cmd.exec();
    Err(anyhow::anyhow!(
        "running ssh (is openssh-client installed?): {e}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_read_from_the_ssh_field() {
        assert_eq!(
            endpoint("ssh -p 2222 abcdefabcdef12@localhost"),
            Some(("localhost".into(), 2222))
        );
        assert_eq!(
            endpoint("ssh x@example.com"),
            Some(("example.com".into(), 22))
        );
        assert_eq!(endpoint("ssh -p nope x@h"), None);
        assert_eq!(endpoint(""), None);
    }

    #[test]
    fn known_hosts_brackets_other_ports() {
        assert_eq!(
            known_hosts_lines(&["localhost", "a"], 2222, "ssh-ed25519 AAAA"),
            "[localhost]:2222 ssh-ed25519 AAAA\n[a]:2222 ssh-ed25519 AAAA\n"
        );
        assert_eq!(known_hosts_lines(&["h"], 22, "k"), "h k\n");
    }
}
