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

/// Returns existing development certificate files in `dir`, or makes them
/// (again, when the names they must cover changed).
pub fn dev_certificate(
    dir: &Path,
    domain: &str,
    preview_domain: Option<&str>,
) -> anyhow::Result<CertPaths> {
    let paths = CertPaths {
        cert: dir.join("relay.pem"),
        key: dir.join("relay.key"),
        ca: Some(dir.join("ca.pem")),
    };
    let ca_path = dir.join("ca.pem");
    let mut names = vec![format!("*.{domain}"), domain.to_string()];
    if let Some(p) = preview_domain {
        names.push(format!("*.{p}"));
        names.push(p.to_string());
    }
    let names_path = dir.join("relay.names");
    let same_names = std::fs::read_to_string(&names_path)
        .map(|n| n == names.join("\n"))
        // Made before names were recorded: only the domain's.
        .unwrap_or(preview_domain.is_none());
    if paths.cert.exists() && paths.key.exists() && ca_path.exists() && same_names {
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
    let mut params = rcgen::CertificateParams::new(names.clone())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("*.{domain}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;

    warren_config::write_private(&paths.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&paths.cert, format!("{}{}", cert.pem(), ca_cert.pem()))?;
    std::fs::write(&ca_path, ca_cert.pem())?;
    std::fs::write(&names_path, names.join("\n"))?;
    tracing::info!(ca = %ca_path.display(), "made a development CA and a wildcard certificate for *.{domain}");
    Ok(paths)
}
