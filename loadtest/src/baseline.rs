//! The direct baseline: the same terminals straight into `docker exec -it`
//! on bare containers, no Warren in the path.
use anyhow::{Context, bail};

/// The label every baseline container carries.
pub const LABEL: &str = "warren.loadtest=baseline";

/// The local Docker engine, which the direct baseline opens terminals on.
pub async fn engine() -> anyhow::Result<bollard::Docker> {
    bollard::Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await
        .context("the direct baseline needs the local Docker engine")
}

/// A bare container of `image` for the direct baseline, as `docker run -d` makes it.
pub async fn docker_run(image: &str) -> anyhow::Result<String> {
    let o = tokio::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--label",
            LABEL,
            "--entrypoint",
            "/bin/sh",
            image,
            "-c",
            "exec sleep 2147483647",
        ])
        .output()
        .await
        .context("running docker")?;
    if !o.status.success() {
        bail!("docker run: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Removes baseline containers (`docker rm -f`); failures are ignored.
pub async fn remove(containers: &[String]) {
    if containers.is_empty() {
        return;
    }
    let _ = tokio::process::Command::new("docker")
        .arg("rm")
        .arg("-f")
        .args(containers)
        .output()
        .await;
}
