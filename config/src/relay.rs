use crate::{ConfigError, Secret, Validate, check_label};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Configuration of `warren relay`, the edge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Sessions live at `<id>.<domain>`, previews at `<port>-<id>.<domain>`.
    pub domain: String,
    /// Where the development CA, certificate and state are kept.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub https: HttpsConfig,
    /// Plain HTTP, for `warren up` on loopback only.
    #[serde(default)]
    pub http: Option<ListenConfig>,
    /// Prometheus metrics.
    #[serde(default)]
    pub admin: Option<ListenConfig>,
    /// SSH into sessions (`ssh -p 2222 <session>@<domain>`); the host key is
    /// made in `data_dir` on first start.
    #[serde(default)]
    pub ssh: Option<ListenConfig>,
    pub tunnel: RelayTunnelConfig,
    pub auth: AuthConfig,
    /// A static `session → node` table (until the control plane serves routes).
    #[serde(default)]
    pub routes: Vec<StaticRoute>,
    /// Where `api.<domain>` is proxied to (the control plane), if anywhere.
    #[serde(default)]
    pub control_upstream: Option<SocketAddr>,
    /// Previews at `<port>-<session>.<preview_domain>` instead of under
    /// `domain`: another site, so a preview's pages share nothing with the
    /// terminals (the production setting; docs/security.md).
    #[serde(default)]
    pub preview_domain: Option<String>,
    /// The control plane that serves routes and checks node credentials
    /// (instead of `routes` and `tunnel.node_secret`).
    #[serde(default)]
    pub control: Option<RelayControl>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayControl {
    /// e.g. `https://control.internal:7000`; several replicas
    /// comma-separated.
    pub url: String,
    /// The control plane's `relay_secret`.
    pub secret: Secret,
    /// PEM CA that signed control's certificate, when it is not one of the
    /// system's roots (also used for `auth.jwks_url`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsConfig {
    pub listen: SocketAddr,
    /// PEM wildcard certificate for `*.<domain>` and `<domain>`; when both
    /// are unset a development CA and certificate are made in `data_dir`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// `Strict-Transport-Security: max-age=` on every HTTPS answer (0: not
    /// sent). Browsers then refuse plain HTTP and certificate bypasses for
    /// the host.
    #[serde(default = "default_hsts")]
    pub hsts_max_age_secs: u64,
    /// Open connections one client address (IPv6: its /64) may hold on
    /// this listener, counted before the TLS handshake; more are refused.
    #[serde(default = "default_per_address")]
    pub max_connections_per_address: usize,
}

fn default_per_address() -> usize {
    256
}

fn default_hsts() -> u64 {
    31_536_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayTunnelConfig {
    /// UDP address for agents' QUIC connections.
    pub listen: SocketAddr,
    /// Shared secret agents present (until control issues node credentials).
    pub node_secret: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// JWKS with the control plane's Ed25519 public keys: a file...
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// ...or a URL, fetched again when a token names an unknown key id.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The `aud` every session token must carry.
    #[serde(default = "default_audience")]
    pub audience: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    pub session: String,
    pub node: String,
    pub tenant: String,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/warren/relay")
}

fn default_audience() -> String {
    "warren".into()
}

/// A DNS name of labels under 200 bytes, for the key `key`.
fn check_dns_name(key: &str, name: &str, example: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 200
        || name.starts_with('.')
        || name.ends_with('.')
        || name.contains("..")
    {
        return Err(ConfigError::invalid(
            key,
            format!("must be a DNS name like {example}"),
        ));
    }
    for label in name.split('.') {
        check_label(key, label)?;
    }
    Ok(())
}

impl Validate for RelayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.domain;
        check_dns_name("domain", d, "warren.example.com")?;
        if !(1..=100_000).contains(&self.https.max_connections_per_address) {
            return Err(ConfigError::invalid(
                "https.max_connections_per_address",
                "must be between 1 and 100000",
            ));
        }
        if self.https.hsts_max_age_secs > 63_072_000 {
            return Err(ConfigError::invalid(
                "https.hsts_max_age_secs",
                "must be at most 63072000 (two years)",
            ));
        }
        if let Some(p) = &self.preview_domain {
            check_dns_name("preview_domain", p, "preview.example.net")?;
            if p == d || p.ends_with(&format!(".{d}")) || d.ends_with(&format!(".{p}")) {
                return Err(ConfigError::invalid(
                    "preview_domain",
                    "must be a separate domain, neither the domain nor above or below it",
                ));
            }
        }
        if !self.data_dir.is_absolute() {
            return Err(ConfigError::invalid("data_dir", "must be an absolute path"));
        }
        if self.https.cert_file.is_some() != self.https.key_file.is_some() {
            return Err(ConfigError::invalid(
                "https.cert_file",
                "cert_file and key_file go together (leave both unset for a development certificate)",
            ));
        }
        if let Some(h) = &self.http
            && !h.listen.ip().is_loopback()
        {
            return Err(ConfigError::invalid(
                "http.listen",
                "plain HTTP is served on loopback only",
            ));
        }
        if self.tunnel.node_secret.expose().len() < 16 {
            return Err(ConfigError::invalid(
                "tunnel.node_secret",
                "must be at least 16 characters",
            ));
        }
        if self.auth.jwks_file.is_none() == self.auth.jwks_url.is_none() {
            return Err(ConfigError::invalid(
                "auth",
                "set exactly one of jwks_file and jwks_url",
            ));
        }
        if let Some(u) = &self.auth.jwks_url
            && !u
                .split(',')
                .all(|u| u.trim().starts_with("http://") || u.trim().starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "auth.jwks_url",
                "must be an http(s) URL",
            ));
        }
        if self.auth.audience.is_empty() {
            return Err(ConfigError::invalid("auth.audience", "must not be empty"));
        }
        if let Some(c) = &self.control {
            if !c
                .url
                .split(',')
                .all(|u| u.trim().starts_with("http://") || u.trim().starts_with("https://"))
            {
                return Err(ConfigError::invalid(
                    "control.url",
                    "must be an http(s) URL",
                ));
            }
            if c.secret.expose().len() < 16 {
                return Err(ConfigError::invalid(
                    "control.secret",
                    "must be at least 16 characters",
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            check_label(&format!("routes[{i}].session"), &r.session)?;
            check_label(&format!("routes[{i}].node"), &r.node)?;
            if r.tenant.is_empty() || r.tenant.len() > 64 {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].tenant"),
                    "must be 1-64 characters",
                ));
            }
        }
        Ok(())
    }
}
