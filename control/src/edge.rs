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
pub struct Edge {
    client: reqwest::Client,
    domain: String,
    port: u16,
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
    pub fn new(cfg: &ControlConfig) -> anyhow::Result<Option<Edge>> {
        if cfg.relays.is_empty() {
            return Ok(None);
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
        let mut b = reqwest::Client::builder()
            .dns_resolver(Arc::new(Relays(hosts)))
            .connect_timeout(Duration::from_secs(5))
            // Long commands send nothing until they end; their own time
            // limit bounds the wait.
            .pool_idle_timeout(Duration::from_secs(5))
            .https_only(true);
        let mut cas: Vec<_> = cfg
            .relays
            .iter()
            .filter_map(|r| r.ca_file.clone())
            .collect();
        cas.dedup();
        for ca in cas {
            let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        Ok(Some(Edge {
            client: b.build().context("the edge client")?,
            domain: cfg.domain.clone(),
            port,
        }))
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

    pub fn client(&self) -> &reqwest::Client {
        &self.client
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
