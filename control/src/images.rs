//! Which images a session may start from: the operator's name patterns
//! (`sessions.allowed_images`), decided by [`image_allowed`]; and a
//! tenant's own snapshots (`warren-snapshot/<name>`), recognised by
//! [`snapshot_name`] and resolved in the tenant alone (another tenant's
//! name is one that does not exist).
use crate::api::image_registry;

/// Whether `tenant` may start a session from `image` under `patterns`
/// (`*` matches any characters, `/` and `:` included; empty: no pattern
/// restriction). `Err` says why, naming the rule, for the 422's message.
///
/// A pattern matches the name as written or as the engine reads it:
/// `ubuntu` is `docker.io/library/ubuntu:latest`, so `docker.io/library/*`
/// admits it and `warren/session:*` admits `warren/session`.
pub fn image_allowed(image: &str, _tenant: &str, patterns: &[String]) -> Result<(), String> {
    if patterns.is_empty() {
        return Ok(());
    }
    let names = [image.to_string(), tagged(image), canonical(image)];
    if patterns.iter().any(|p| names.iter().any(|n| glob(p, n))) {
        return Ok(());
    }
    Err(format!(
        "image {image} matches none of the operator's sessions.allowed_images ({})",
        patterns.join(", ")
    ))
}

/// The snapshot name in `image` when it names one (`warren-snapshot/<name>`,
/// optionally `:latest` or under `docker.io/`): such an image is never
/// pulled, only resolved among the caller's snapshots.
pub fn snapshot_name(image: &str) -> Option<&str> {
    if !warren_proto::sandbox::is_snapshot_name(image) {
        return None;
    }
    let bare = warren_proto::sandbox::strip_hub(image);
    let name = &bare[warren_proto::sandbox::SNAPSHOT_REPO.len() + 1..];
    Some(name.strip_suffix(":latest").unwrap_or(name))
}

/// `image` with the tag the engine pulls (`latest`) unless it names a tag
/// or a digest.
fn tagged(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or_default();
    if last.contains(':') || last.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// `image` as the engine reads it: [`tagged`], with its registry (Docker
/// Hub's `docker.io`, official images under `library/`).
fn canonical(image: &str) -> String {
    let image = tagged(image);
    match image_registry(&image) {
        Some(_) => image,
        None if image.contains('/') => format!("docker.io/{image}"),
        None => format!("docker.io/library/{image}"),
    }
}

/// Whether `pattern` matches all of `text`; `*` is any run of characters.
/// Greedy with one backtrack point: linear enough for names ≤ 255 bytes.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and where in `text` it is tried up to now.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the `*` take one more character and try again.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_recognised() {
        assert_eq!(snapshot_name("warren-snapshot/env"), Some("env"));
        assert_eq!(
            snapshot_name("docker.io/warren-snapshot/env:latest"),
            Some("env")
        );
        assert_eq!(snapshot_name("warren-snapshots/env"), None);
        assert_eq!(snapshot_name("ubuntu"), None);
    }

    fn allowed(image: &str, patterns: &[&str]) -> bool {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        image_allowed(image, "t1", &p).is_ok()
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob("warren/session:*", "warren/session:dind"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "a-b-b-c"));
        assert!(!glob("a*b*c", "a-b-b-d"));
        assert!(!glob("warren/session:*", "warren/session2:dind"));
        assert!(!glob("warren/*", "evil/warren/x"), "anchored at the start");
        assert!(!glob("warren", "warren/session"), "anchored at the end");
        assert!(glob("*/session:*", "ghcr.io/acme/session:1"));
    }

    #[test]
    fn patterns_admit_names_as_written_or_as_pulled() {
        let p = ["warren/session:*", "docker.io/library/*"];
        assert!(allowed("warren/session:dind", &p));
        assert!(allowed("warren/session", &p), "warren/session:latest");
        assert!(allowed("ubuntu:24.04", &p), "docker.io/library/ubuntu");
        assert!(allowed("docker.io/library/alpine@sha256:abc", &p));
        assert!(!allowed("evil/session:dind", &p));
        assert!(!allowed("ghcr.io/warren/session:dind", &p));
        assert!(!allowed("docker.io/acme/tool:1", &p));
        assert!(
            allowed("anything/at:all", &[]),
            "no patterns: no restriction"
        );
        assert!(allowed("registry.example.com:5000/x/y", &["*"]));
    }

    #[test]
    fn a_refusal_names_the_rule() {
        let p = vec!["warren/session:*".to_string(), "alpine".to_string()];
        let e = image_allowed("evil:1", "t1", &p).unwrap_err();
        assert!(e.contains("evil:1"), "{e}");
        assert!(e.contains("sessions.allowed_images"), "{e}");
        assert!(e.contains("warren/session:*, alpine"), "{e}");
    }

    #[test]
    fn canonical_names_are_the_engines() {
        assert_eq!(canonical("ubuntu"), "docker.io/library/ubuntu:latest");
        assert_eq!(canonical("acme/x:1"), "docker.io/acme/x:1");
        assert_eq!(
            canonical("localhost:5000/x"),
            "localhost:5000/x:latest",
            "a registry's port is not a tag"
        );
        assert_eq!(canonical("x@sha256:ab"), "docker.io/library/x@sha256:ab");
    }
}
