//! "Required here, else skip": what a test needs from the machine (Docker,
//! Chromium, PostgreSQL, Prometheus). Missing, the test is skipped with a
//! note, except under CI (`CI=true`), where it fails.
use std::path::PathBuf;

/// True under CI (`CI=true`), where nothing a test needs may be missing.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `present`, after failing the test under CI if it is not; outside CI a
/// missing `what` prints a SKIPPED note (with `hint`, how to get it).
pub fn required(what: &str, present: bool, hint: &str) -> bool {
    if !present {
        assert!(!under_ci(), "{what} is required under CI: {hint}");
        eprintln!("SKIPPED: {what} is missing ({hint}); set CI=true to make this a failure");
    }
    present
}

/// True when Docker answers (`docker info`).
pub fn docker_or_skip() -> bool {
    let ok = std::process::Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    required("Docker", ok, "`docker info` does not answer")
}

/// True when Chromium is installed for the browser tests (`$CHROMIUM`,
/// default Debian's `/usr/bin/chromium`).
pub fn chromium_or_skip() -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    required(
        "Chromium",
        std::path::Path::new(&chromium).exists(),
        &format!("{chromium} is not installed"),
    )
}

/// The PostgreSQL server tests may create databases on
/// (`WARREN_TEST_POSTGRES_URL`).
pub fn postgres_or_skip() -> Option<String> {
    let url = std::env::var("WARREN_TEST_POSTGRES_URL").ok();
    required(
        "PostgreSQL",
        url.is_some(),
        "WARREN_TEST_POSTGRES_URL is not set",
    );
    url
}

/// Debian's Prometheus binary.
pub fn prometheus_or_skip() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/prometheus");
    required(
        "Prometheus",
        p.is_file(),
        "Debian package prometheus; scripts/setup-host.sh installs it",
    )
    .then_some(p)
}
