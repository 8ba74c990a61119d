//! Control's way to a session for the sandbox API (exec, files): through a
//! relay's HTTPS edge, as any client goes, with a short token of the `exec`
//! scope. Agents have no inbound port; the relays hold their tunnels.
//!
//! The edge is found from the relays control hands to workers: each
//! relay's tunnel host at the public HTTPS port (`https_port`, else 443),
//! checked against that relay's CA. Every name under the domain resolves
//! to those addresses, so no DNS is needed for `<id>.<domain>`.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use warren_config::ControlConfig;

/// A client for `https://<id>.<domain>[:port]/…` through the relays.
///
/// Made at first use, not at start: the relays' CA files may not exist
/// before the relays have run once (a new cluster starts control first).
pub struct Edge {
    hosts: Vec<String>,
    cas: Vec<std::path::PathBuf>,
    domain: String,
    port: u16,
    client: std::sync::Mutex<Option<reqwest::Client>>,
}

/// Resolves every name to the relays' HTTPS addresses, in order.
struct Relays(Vec<String>);

impl reqwest::dns::Resolve for Relays {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let hosts = self.0.clone();
        Box::pin(async move {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for h in &hosts {
                if let Ok(found) = tokio::net::lookup_host(h.as_str()).await {
                    addrs.extend(found);
                }
            }
            if addrs.is_empty() {
                return Err("no relay address resolves".into());
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Edge {
    /// `None` when control knows no relay (nothing to reach sessions by).
    pub fn new(cfg: &ControlConfig) -> Option<Edge> {
        if cfg.relays.is_empty() {
            return None;
        }
        let port = cfg.https_port.unwrap_or(443);
        let hosts = cfg
            .relays
            .iter()
            .map(|r| {
                let h = host_of(&r.addr);
                if h.contains(':') {
                    format!("[{h}]:{port}")
                } else {
                    format!("{h}:{port}")
                }
            })
            .collect();
        let mut cas: Vec<_> = cfg
            .relays
            .iter()
            .filter_map(|r| r.ca_file.clone())
            .collect();
        cas.dedup();
        Some(Edge {
            hosts,
            cas,
            domain: cfg.domain.clone(),
            port,
            client: std::sync::Mutex::new(None),
        })
    }

    fn build(&self) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .dns_resolver(Arc::new(Relays(self.hosts.clone())))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(5))
            .https_only(true);
        for ca in &self.cas {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        b.build().context("the edge client")
    }

    /// `https://<sid>.<domain>[:port]<path_and_query>`.
    pub fn url(&self, sid: &str, path_and_query: &str) -> String {
        if self.port == 443 {
            format!("https://{sid}.{}{path_and_query}", self.domain)
        } else {
            format!(
                "https://{sid}.{}:{}{path_and_query}",
                self.domain, self.port
            )
        }
    }

    /// The client (made on first success; a CA that cannot be read yet is
    /// tried again next time).
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut c = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let made = self.build()?;
        *c = Some(made.clone());
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_taken_from_relay_addresses() {
        assert_eq!(host_of("127.0.0.1:7443"), "127.0.0.1");
        assert_eq!(host_of("relay.example.com:7443"), "relay.example.com");
        assert_eq!(host_of("[::1]:7443"), "::1");
    }
}
