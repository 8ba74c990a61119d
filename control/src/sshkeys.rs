//! SSH public keys as users paste them (`ssh-ed25519 AAAA… comment`):
//! parsed, bounded and fingerprinted the way `ssh-keygen -l` does.
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Key types accepted (what OpenSSH offers today, without DSA).
const TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];
/// Longest key line accepted (an RSA 16384-bit key is about 2.8 KB).
pub const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedKey {
    /// `type base64`, the form keys are compared in.
    pub key: String,
    pub kind: String,
    pub comment: String,
    /// `SHA256:…` as `ssh` prints it.
    pub fingerprint: String,
}

/// Parses one OpenSSH public key line; the error says what is wrong.
pub fn parse(line: &str) -> Result<ParsedKey, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("public_key is empty: paste the contents of a .pub file".into());
    }
    if line.len() > MAX_LINE || line.contains('\n') {
        return Err("public_key must be one line of at most 8 KiB".into());
    }
    let mut parts = line.splitn(3, char::is_whitespace);
    let kind = parts.next().unwrap_or_default();
    let b64 = parts.next().unwrap_or_default().trim();
    let comment = parts.next().unwrap_or_default().trim();
    if !TYPES.contains(&kind) {
        return Err(format!(
            "unsupported key type {:?}: use ssh-ed25519, ssh-rsa or ecdsa (the contents of a .pub file, not a private key)",
            kind.chars().take(40).collect::<String>()
        ));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the key's base64 does not decode".to_string())?;
    // The blob starts with its own type name, length-prefixed.
    let named = blob
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if named != Some(kind.as_bytes()) || blob.len() < 4 + kind.len() + 16 {
        return Err(format!("the key data is not a {kind} key"));
    }
    let digest = Sha256::digest(&blob);
    Ok(ParsedKey {
        key: format!("{kind} {b64}"),
        kind: kind.to_string(),
        comment: comment.chars().take(200).collect(),
        fingerprint: format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throwaway key made with ssh-keygen; its fingerprint as ssh-keygen -l shows it.
    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@warren";

    #[test]
    fn parses_and_fingerprints_like_ssh_keygen() {
        let k = parse(KEY).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k.kind, "ssh-ed25519");
        assert_eq!(k.comment, "test@warren");
        assert_eq!(
            k.fingerprint,
            "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"
        );
        assert_eq!(parse(&format!("  {KEY}\n")).map(|p| p.key), Ok(k.key));
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "unsupported"),
            ("ssh-dss AAAAB3NzaC1kc3M=", "unsupported"),
            ("ssh-ed25519 not!base64", "base64"),
            (
                "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==",
                "not a ssh-ed25519",
            ),
        ] {
            let e = parse(bad).err().unwrap_or_default();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(parse(&"x".repeat(MAX_LINE + 1)).is_err());
    }
}
