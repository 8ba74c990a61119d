//! The relay's certificate: PEM files from the operator, or for
//! development a self-signed CA and a wildcard certificate for `*.<domain>`
//! and `<domain>`, made once and kept in the data directory so clients can
//! trust the CA (`ca.pem`).
use std::path::{Path, PathBuf};

use anyhow::Context;

pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Present for development certificates.
    pub ca: Option<PathBuf>,
}

/// Returns existing development certificate files in `dir`, or makes them.
pub fn dev_certificate(dir: &Path, domain: &str) -> anyhow::Result<CertPaths> {
    let paths = CertPaths {
        cert: dir.join("relay.pem"),
        key: dir.join("relay.key"),
        ca: Some(dir.join("ca.pem")),
    };
    let ca_path = dir.join("ca.pem");
    if paths.cert.exists() && paths.key.exists() && ca_path.exists() {
        return Ok(paths);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Warren development CA ({domain})"),
    );
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let key = rcgen::KeyPair::generate()?;
    let mut params =
        rcgen::CertificateParams::new(vec![format!("*.{domain}"), domain.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("*.{domain}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;

    warren_config::write_private(&paths.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&paths.cert, format!("{}{}", cert.pem(), ca_cert.pem()))?;
    std::fs::write(&ca_path, ca_cert.pem())?;
    tracing::info!(ca = %ca_path.display(), "made a development CA and a wildcard certificate for *.{domain}");
    Ok(paths)
}
