//! Where the deployment under test is: from flags, else `up.json`.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::conn::RelayTarget;

/// Where the deployment under test is.
#[derive(Clone)]
pub struct Target {
    pub control_url: String,
    pub api_key: String,
    pub relay: RelayTarget,
    pub ssh: Option<SocketAddr>,
    /// A private CA (PEM) control's certificate is signed by, besides the
    /// system's roots: `--ca` is trusted for control too.
    pub control_ca: Option<String>,
}

impl Target {
    /// From flags, else `up.json` (as `warren up` writes it).
    pub fn resolve(
        control_url: Option<String>,
        api_key: Option<String>,
        relay: Option<String>,
        ca: Option<PathBuf>,
        ssh: Option<String>,
        up_json: &std::path::Path,
    ) -> anyhow::Result<Target> {
        let up = warren_proto::api::UpFile::read(up_json).map_err(|e| anyhow::anyhow!(e))?;
        let control_url = control_url
            .or_else(|| up.as_ref().map(|u| u.control_url.clone()))
            .context("no control URL: pass --control-url or run `warren up` here")?;
        let api_key = api_key
            .or_else(|| up.as_ref().map(|u| u.admin_api_key.clone()))
            .context("no API key: pass --api-key or run `warren up` here")?;
        // The relay URL: https://DOMAIN:PORT (with --ca) or http://DOMAIN:PORT.
        let relay_url = relay
            .or_else(|| up.as_ref().map(|u| u.relay_http_url.clone()))
            .context("no relay: pass --relay https://DOMAIN:PORT")?;
        let u = url::Url::parse(&relay_url).with_context(|| format!("--relay {relay_url}"))?;
        let domain = u.host_str().context("--relay needs a host")?.to_string();
        let port = u.port_or_known_default().context("--relay needs a port")?;
        // Names under the domain are the relay's; connect by its address.
        let addr = if domain == "localhost" || domain.ends_with(".localhost") {
            SocketAddr::from(([127, 0, 0, 1], port))
        } else {
            use std::net::ToSocketAddrs;
            (domain.as_str(), port)
                .to_socket_addrs()?
                .next()
                .context("the relay's name does not resolve")?
        };
        let control_ca = match &ca {
            Some(f) => Some(
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            ),
            None => None,
        };
        let tls = match u.scheme() {
            "https" => {
                let ca = ca
                    .or_else(|| up.as_ref().map(|u| u.ca_cert.clone()))
                    .context("https relay: pass --ca FILE")?;
                let pem =
                    std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
                Some(RelayTarget::tls_config(&pem)?)
            }
            "http" => None,
            s => bail!("--relay must be http:// or https://, not {s}://"),
        };
        let ssh = ssh
            .or_else(|| up.as_ref().map(|u| u.relay_ssh.clone()))
            .map(|s| {
                use std::net::ToSocketAddrs;
                s.to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.find(|a| a.is_ipv4()))
                    .with_context(|| format!("ssh address {s} does not resolve"))
            })
            .transpose()?;
        Ok(Target {
            control_url: control_url.trim_end_matches('/').into(),
            api_key,
            relay: RelayTarget { addr, domain, tls },
            ssh,
            control_ca,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(relay: &str, ssh: Option<&str>) -> anyhow::Result<Target> {
        Target::resolve(
            Some("http://127.0.0.1:7000/".into()),
            Some("key".into()),
            Some(relay.into()),
            None,
            ssh.map(String::from),
            std::path::Path::new("/nonexistent/up.json"),
        )
    }

    #[test]
    fn flags_alone_name_the_target() {
        let t = resolve("http://warren.localhost:8080", Some("127.0.0.1:2222")).unwrap();
        assert_eq!(t.control_url, "http://127.0.0.1:7000");
        assert_eq!(t.relay.domain, "warren.localhost");
        assert_eq!(t.relay.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!(t.relay.tls.is_none());
        assert_eq!(t.ssh, Some(SocketAddr::from(([127, 0, 0, 1], 2222))));
    }

    #[test]
    fn a_relay_url_must_be_http_or_https() {
        let e = resolve("ftp://warren.localhost:21", None).err().unwrap();
        assert!(e.to_string().contains("not ftp://"), "{e}");
        let e = resolve("https://warren.localhost:8443", None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--ca"), "{e}");
    }
}
