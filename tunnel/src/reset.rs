//! The relay's stateless-reset identity, kept on disk so that a relay that
//! crashed and restarted can tell agents at once that their old connection
//! is gone (a QUIC stateless reset), instead of leaving them to wait out
//! the idle timeout.
//!
//! A reset is only sent for a packet whose connection id this endpoint
//! could have issued, and it carries a token derived from that id with
//! the reset key. So both the key and the connection-id generator's key
//! must survive a restart: they live in one 0600 file in the data dir.
use std::io;
use std::path::Path;
use std::sync::Arc;

use rand::RngCore;

const KEY_LEN: usize = 64;
const FILE_LEN: usize = KEY_LEN + 8;

/// The secrets behind a relay endpoint's stateless resets.
#[derive(Clone)]
pub struct ResetKey {
    hmac: [u8; KEY_LEN],
    cid: u64,
}

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey(***)")
    }
}

impl ResetKey {
    /// A key for this process only (resets do not survive a restart).
    pub fn random() -> Self {
        let mut b = [0u8; FILE_LEN];
        rand::rng().fill_bytes(&mut b);
        Self::from_bytes(&b)
    }

    fn from_bytes(b: &[u8; FILE_LEN]) -> Self {
        let mut hmac = [0u8; KEY_LEN];
        hmac.copy_from_slice(&b[..KEY_LEN]);
        let mut cid = [0u8; 8];
        cid.copy_from_slice(&b[KEY_LEN..]);
        Self {
            hmac,
            cid: u64::from_be_bytes(cid),
        }
    }

    /// Reads the key at `path`, or makes one there (mode 0600) on first
    /// start. A file of the wrong size is an error, not silently replaced.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        match std::fs::read(path) {
            Ok(b) => {
                let b: [u8; FILE_LEN] = b.try_into().map_err(|b: Vec<u8>| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} holds {} bytes, not {FILE_LEN}: remove it to make a new reset key",
                            path.display(),
                            b.len()
                        ),
                    )
                })?;
                Ok(Self::from_bytes(&b))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut b = [0u8; FILE_LEN];
                rand::rng().fill_bytes(&mut b);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_private(path, &b)?;
                Ok(Self::from_bytes(&b))
            }
            Err(e) => Err(e),
        }
    }

    /// An endpoint config whose stateless resets and connection ids a
    /// restarted endpoint with the same key recognises.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut cfg = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &self.hmac,
        )));
        let cid = self.cid;
        cfg.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid))
        });
        cfg
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_survives_a_restart_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("wrk-{}", std::process::id()));
        let p = dir.join("tunnel-reset.key");
        let _ = std::fs::remove_dir_all(&dir);
        let a = ResetKey::load_or_create(&p).expect("made");
        let b = ResetKey::load_or_create(&p).expect("read back");
        assert_eq!((a.hmac, a.cid), (b.hmac, b.cid));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&p, b"short").expect("write");
        let e = ResetKey::load_or_create(&p).expect_err("wrong size");
        assert!(e.to_string().contains("remove it"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
