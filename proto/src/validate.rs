//! Rules for strings that come from outside and travel on: image references
//! (sent to a worker's engine) and names people give (shown in lists, logs
//! and terminals). Checked once, at control's edge, so that nothing behind
//! it has to guess.

/// Longest image reference accepted (the registry's own name limit).
pub const MAX_IMAGE_LEN: usize = 255;
/// Longest display name (tenants, share links) in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Checks an image reference against the grammar the engines use:
/// `[host[:port]/]path[:tag][@algo:hex]`, lower-case path components.
/// The answer says which part is wrong. Anything else (`--privileged`,
/// spaces, upper case, a leading separator) is refused before it reaches a
/// worker.
pub fn image_reference(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("image is empty".into());
    }
    if s.len() > MAX_IMAGE_LEN {
        return Err(format!("image is longer than {MAX_IMAGE_LEN} characters"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            algo.starts_with(|c: char| c.is_ascii_alphabetic())
                && algo
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_+.".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return Err("image digest must be algorithm:hex (e.g. sha256:…)".into());
        }
    }
    // A tag follows the last `:` that comes after the last `/` (a `:`
    // before it is a registry port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(
                "image tag must be 1-128 of letters, digits, '_', '.', '-' and not start with '.' or '-'"
                    .into(),
            );
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 && looks_like_host(parts[0]) {
        let host = parts.remove(0);
        let (h, port) = match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let host_ok = h.split('.').all(|c| {
            !c.is_empty()
                && !c.starts_with('-')
                && !c.ends_with('-')
                && c.chars().all(|x| x.is_ascii_alphanumeric() || x == '-')
        });
        let port_ok = port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()));
        if !host_ok || !port_ok {
            return Err("image registry must be a host name with an optional port".into());
        }
    }
    for p in &parts {
        if !path_component(p) {
            return Err(format!(
                "image path component {p:?} must be lower-case letters and digits, joined by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or any run of `-`.
fn path_component(p: &str) -> bool {
    let b = p.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

fn alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Checks a name people give (a tenant's, a share link's label): 1 to
/// [`MAX_NAME_CHARS`] characters, not blank, with no control characters
/// (NUL, CR/LF, escapes: they forge log lines and terminal output) and no
/// bidirectional overrides or invisible format characters (they make a
/// name read as another).
pub fn display_name(field: &str, s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "{field} must be at most {MAX_NAME_CHARS} characters"
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control() || is_format_char(*c)) {
        return Err(format!(
            "{field} must not contain control or formatting characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}

/// Unicode format characters that change how text around them reads:
/// bidirectional embeddings, overrides and isolates, zero-width joiners and
/// marks, the byte-order mark.
fn is_format_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x061C | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064
        | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_engines_accept_pass() {
        for ok in [
            "busybox",
            "warren/session:dind",
            "warren/session:mini",
            "library/ubuntu:22.04",
            "registry.example.com:5000/team/app:v1.2-rc_3",
            "localhost/x",
            "a.b/c__d/e-f---g.h:latest",
            "ubuntu@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(image_reference(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn hostile_images_are_refused_with_a_reason() {
        for bad in [
            "",
            "--privileged",
            "-x",
            "Ubuntu",
            "a b",
            "a/../b",
            "a//b",
            "a:",
            "a:-tag",
            "a@sha256:zz",
            "host:99999999/x",
            "x\0y",
            "x\ny",
            "/abs",
            "a/",
        ] {
            assert!(image_reference(bad).is_err(), "{bad:?} accepted");
        }
        assert!(image_reference(&"a".repeat(256)).is_err());
        assert!(
            image_reference("--privileged")
                .unwrap_err()
                .contains("path component")
        );
    }

    #[test]
    fn names_without_controls_pass() {
        assert_eq!(display_name("name", "Acme Inc."), Ok(()));
        assert_eq!(display_name("name", "Ünïcödé 名前"), Ok(()));
        for bad in [
            "",
            "   ",
            "a\0b",
            "a\r\nb",
            "evil\u{202E}gpj.exe",
            "x\u{200B}",
            "\u{1b}[31mred",
        ] {
            assert!(display_name("name", bad).is_err(), "{bad:?} accepted");
        }
        assert!(display_name("name", &"x".repeat(101)).is_err());
    }
}
