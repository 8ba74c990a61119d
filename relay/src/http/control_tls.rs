//! How the relay reaches control behind `api.<domain>` when control
//! serves TLS: the name on its certificate and the CA that signed it.
use std::sync::Arc;

/// TLS to control behind `api.<domain>`: the name its certificate is for
/// and the CA that signed it (else the system's roots).
pub struct ControlTls {
    pub server_name: String,
    pub ca: Option<Arc<[pingora::utils::tls::WrappedX509]>>,
}

impl ControlTls {
    /// From the relay's `control.url` (TLS when it is `https://`) and the
    /// PEM in `control.ca_file`.
    pub fn from_url(url: &str, ca_pem: Option<&str>) -> anyhow::Result<Option<ControlTls>> {
        let first = url.split(',').next().unwrap_or("").trim();
        let Some(rest) = first.strip_prefix("https://") else {
            return Ok(None);
        };
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        let ca = match ca_pem {
            Some(pem) => {
                let ders = rustls_pemfile::certs(&mut pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("control.ca_file: {e}"))?;
                anyhow::ensure!(!ders.is_empty(), "control.ca_file holds no certificate");
                let wrapped: Vec<_> = ders
                    .into_iter()
                    .map(|d| {
                        pingora::utils::tls::WrappedX509::new(
                            d.as_ref().to_vec(),
                            pingora::utils::tls::parse_x509,
                        )
                    })
                    .collect();
                Some(Arc::from(wrapped.into_boxed_slice()))
            }
            None => None,
        };
        Ok(Some(ControlTls {
            server_name: host.to_string(),
            ca,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::ControlTls;

    #[test]
    fn tls_to_control_follows_its_url() {
        assert!(
            ControlTls::from_url("http://10.0.0.1:7000", None)
                .unwrap()
                .is_none()
        );
        let t = ControlTls::from_url("https://control.internal:7000,https://b:7000", None)
            .unwrap()
            .unwrap();
        assert_eq!(t.server_name, "control.internal");
        assert!(t.ca.is_none());
        let t = ControlTls::from_url("https://[::1]:7000/", None)
            .unwrap()
            .unwrap();
        assert_eq!(t.server_name, "::1");
        assert!(ControlTls::from_url("https://x:1", Some("not a pem")).is_err());
    }
}
