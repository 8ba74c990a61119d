//! The sandbox API: exec and files (`docs/api.md`). Control serves it at
//! `/v1/sessions/{id}/exec` and `/v1/sessions/{id}/files`; it reaches the
//! session through a relay at [`EXEC_PATH`] and [`FILES_PATH`] on the
//! session's host, with a token of the `exec` scope, and the agent serves
//! those through the session's `warren-init`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the agent serves exec on every session host.
pub const EXEC_PATH: &str = "/_warren/api/exec";
/// Where the agent serves files on every session host.
pub const FILES_PATH: &str = "/_warren/api/files";
/// Where the agent commits the session as a snapshot (control only, with
/// a token of the `snapshot` scope).
pub const SNAPSHOT_PATH: &str = "/_warren/api/snapshot";
/// The terminal page's drag-and-drop upload on the session host:
/// `PUT /_warren/upload?name=FILE` (the page's own cookie, from its own
/// origin), written to [`UPLOAD_DIR`]`/FILE` through the files API.
pub const UPLOAD_PATH: &str = "/_warren/upload";
/// Where the page's uploads land in the session.
pub const UPLOAD_DIR: &str = "/root";

/// A dropped file's name as the upload takes it: one path component of 1
/// to 255 bytes, no control characters, not `.` or `..`.
pub fn check_upload_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c.is_control());
    if ok {
        Ok(())
    } else {
        Err("name: one file name of 1 to 255 bytes (no '/', no control characters)".into())
    }
}
/// Every snapshot image on a worker is named `<SNAPSHOT_REPO>/<id>`; the
/// agent never pulls such a name, and control starts one only for the
/// tenant that owns it.
pub const SNAPSHOT_REPO: &str = "warren-snapshot";
/// Every answer of the agent's sandbox API carries this header: control
/// passes on the agent's errors, and turns anything else (a relay's own
/// refusal) into an error of its own.
pub const AGENT_HEADER: &str = "x-warren-agent";
/// Every path of the session-host API starts with this.
pub const API_PREFIX: &str = "/_warren/api/";
/// Output kept per stream (stdout, stderr), in bytes; the rest is counted
/// and dropped (`truncated`).
pub const MAX_OUTPUT: usize = 1 << 20;
/// Largest `stdin`, in bytes.
pub const MAX_STDIN: usize = 1 << 20;
/// Largest exec request body, in bytes (stdin plus the rest).
pub const MAX_EXEC_BODY: usize = MAX_STDIN + 64 * 1024;
/// Longest `command` (or all of `argv`), in bytes.
pub const MAX_COMMAND: usize = 8 * 1024;
/// A command's time limit when none is asked for, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// The longest time limit one may ask for, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// Longest file path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Entries one directory listing returns at most (init cuts it there,
/// and the agent does not rely on that).
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// `POST /v1/sessions/{id}/exec`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// A shell command line (`sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Or the argv itself (no shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Absolute working directory (default: the user's home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Text fed to the command's stdin (then closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Default [`DEFAULT_TIMEOUT_SECS`], at most [`MAX_TIMEOUT_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

impl ExecRequest {
    /// The argv to run, or what is wrong with the request.
    pub fn to_argv(&self) -> Result<Vec<String>, String> {
        let argv = match (&self.command, &self.argv) {
            (Some(c), None) => {
                if c.trim().is_empty() {
                    return Err("`command` is empty".into());
                }
                vec!["/bin/sh".into(), "-c".into(), c.clone()]
            }
            (None, Some(a)) if !a.is_empty() && !a[0].is_empty() => a.clone(),
            (None, Some(_)) => return Err("`argv` needs at least a program".into()),
            (Some(_), Some(_)) => return Err("give `command` or `argv`, not both".into()),
            (None, None) => return Err("give `command` (a shell line) or `argv`".into()),
        };
        let total: usize = argv.iter().map(|a| a.len() + 1).sum();
        if total > MAX_COMMAND || argv.len() > 256 {
            return Err(format!(
                "the command is over {MAX_COMMAND} bytes (or 256 arguments)"
            ));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err("the command holds a NUL byte".into());
        }
        if let Some(cwd) = &self.cwd {
            check_path(cwd).map_err(|e| format!("`cwd`: {e}"))?;
        }
        check_env(&self.env).map_err(|e| format!("`env`: {e}"))?;
        if self.stdin.as_ref().is_some_and(|s| s.len() > MAX_STDIN) {
            return Err(format!("`stdin` is over {MAX_STDIN} bytes"));
        }
        self.timeout()?;
        Ok(argv)
    }

    /// The time limit, in seconds.
    pub fn timeout(&self) -> Result<u64, String> {
        match self.timeout_seconds {
            None => Ok(DEFAULT_TIMEOUT_SECS),
            Some(t) if (1..=MAX_TIMEOUT_SECS).contains(&t) => Ok(t),
            Some(_) => Err(format!("`timeout_seconds` must be 1 to {MAX_TIMEOUT_SECS}")),
        }
    }
}

/// Variables a command may be given (the API's `env`, checked again by
/// init): names `[A-Za-z_][A-Za-z0-9_]*` of at most 128 bytes, values
/// without NUL, at most 128 of them and 8 KiB in all.
pub fn check_env(vars: &BTreeMap<String, String>) -> Result<(), String> {
    let name_ok = |k: &str| {
        !k.is_empty()
            && k.len() <= 128
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    if let Some((k, _)) = vars.iter().find(|(k, v)| !name_ok(k) || v.contains('\0')) {
        return Err(format!(
            "variable {k:?}: names are [A-Za-z_][A-Za-z0-9_]*, values without NUL"
        ));
    }
    let total: usize = vars.iter().map(|(k, v)| k.len() + v.len()).sum();
    if vars.len() > 128 || total > 8 * 1024 {
        return Err("at most 128 variables, 8 KiB in all".into());
    }
    Ok(())
}

/// An absolute path inside the session, without NUL, within [`MAX_PATH`].
pub fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.len() > MAX_PATH || p.contains('\0') {
        return Err(format!("a path is at most {MAX_PATH} bytes, without NUL"));
    }
    Ok(())
}

/// Which streams were cut at [`MAX_OUTPUT`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Truncated {
    pub stdout: bool,
    pub stderr: bool,
}

/// The outcome of an exec.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    /// `null` when the time limit killed it.
    pub exit_code: Option<i32>,
    /// As UTF-8 (invalid sequences replaced).
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    /// The time limit ended it; its process group was killed.
    pub timed_out: bool,
    pub truncated: Truncated,
}

/// The query of the files endpoint.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    pub path: String,
    /// `GET`: list the directory instead of reading a file.
    #[serde(default)]
    pub list: bool,
    /// `POST`: make the directory (and its parents).
    #[serde(default)]
    pub mkdir: bool,
    /// `DELETE`: a directory with its contents.
    #[serde(default)]
    pub recursive: bool,
    /// `PUT`: permissions of a new file, octal (`"0755"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl FilesQuery {
    /// The permissions asked for, if any.
    pub fn mode_bits(&self) -> Result<Option<u32>, String> {
        match &self.mode {
            None => Ok(None),
            Some(m) => u32::from_str_radix(m, 8)
                .ok()
                .filter(|b| *b <= 0o7777)
                .map(Some)
                .ok_or_else(|| format!("`mode` {m:?} is not octal permissions (0000-7777)")),
        }
    }
}

/// One directory entry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Unix seconds.
    pub mtime: i64,
}

/// `GET …/files?path=DIR&list=true`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileList {
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// More entries than one listing returns (10,000).
    #[serde(default)]
    pub truncated: bool,
}

/// Control → agent: commit the session as `image`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub image: String,
    /// Control's desired-state version once the snapshot was recorded:
    /// the agent keeps the image against any older desired state.
    pub version: i64,
}

/// Agent → control: the committed image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDone {
    pub image: String,
    pub size_bytes: u64,
}

/// A snapshot's engine name for its id: `warren-snapshot/<id>`.
pub fn snapshot_image(id: &str) -> String {
    format!("{SNAPSHOT_REPO}/{id}")
}

/// The id in an engine name that [`snapshot_image`] made (16 lowercase
/// letters and digits), or `None`.
pub fn snapshot_id(image: &str) -> Option<&str> {
    let id = image.strip_prefix(SNAPSHOT_REPO)?.strip_prefix('/')?;
    let id = id.strip_suffix(":latest").unwrap_or(id);
    (id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
    .then_some(id)
}

/// Whether `image` names a snapshot (well formed or not): such names are
/// never pulled, and never started unless control resolved them.
pub fn is_snapshot_name(image: &str) -> bool {
    let bare = strip_hub(image);
    bare.starts_with(SNAPSHOT_REPO) && bare[SNAPSHOT_REPO.len()..].starts_with('/')
}

/// `image` without the spellings the engine reads as Docker Hub's.
pub fn strip_hub(image: &str) -> &str {
    ["docker.io/", "index.docker.io/", "registry-1.docker.io/"]
        .iter()
        .find_map(|p| image.strip_prefix(p))
        .unwrap_or(image)
}

/// A snapshot's name as a tenant gives it: 1 to 63 of `a-z 0-9 . _ -`,
/// starting with a letter or digit.
pub fn check_snapshot_name(name: &str) -> Result<(), String> {
    // As an image path component too (no `--`, `..`, trailing `-`).
    let ok = crate::validate::image_reference(&format!("{SNAPSHOT_REPO}/{name}")).is_ok()
        && !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "snapshot name {name:?}: 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names() {
        assert_eq!(
            snapshot_id(&snapshot_image("abcdefgh12345678")),
            Some("abcdefgh12345678")
        );
        assert_eq!(snapshot_id("warren-snapshot/abc"), None);
        assert_eq!(snapshot_id("warren-snapshot/ABCDEFGH12345678"), None);
        assert!(
            is_snapshot_name("warren-snapshot/x")
                && is_snapshot_name("docker.io/warren-snapshot/x")
        );
        assert!(!is_snapshot_name("warren-snapshotx/y") && !is_snapshot_name("ubuntu"));
        assert!(check_snapshot_name("my-env.v2").is_ok());
        for bad in ["", "-x", "A", "a/b", "a:b", "env-", "a..b", &"x".repeat(64)] {
            assert!(check_snapshot_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exec_requests_are_checked() {
        let ok = |j: &str| serde_json::from_str::<ExecRequest>(j).expect(j).to_argv();
        assert_eq!(
            ok(r#"{"command":"echo hi"}"#).expect("ok")[..2],
            ["/bin/sh", "-c"]
        );
        assert_eq!(ok(r#"{"argv":["ls","-l"]}"#).expect("ok"), ["ls", "-l"]);
        for bad in [
            r#"{}"#,
            r#"{"command":" "}"#,
            r#"{"argv":[]}"#,
            r#"{"command":"x","argv":["y"]}"#,
            r#"{"command":"x","cwd":"tmp"}"#,
            r#"{"command":"x","env":{"1A":"b"}}"#,
            r#"{"command":"x","env":{"A=B":"b"}}"#,
            r#"{"command":"x","timeout_seconds":0}"#,
            r#"{"command":"x","timeout_seconds":86400}"#,
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<ExecRequest>(r#"{"cmd":"x"}"#).is_err());
        let long = ExecRequest {
            command: Some("x".repeat(MAX_COMMAND)),
            ..Default::default()
        };
        assert!(long.to_argv().is_err());
    }

    #[test]
    fn modes_are_octal() {
        let q = |m: &str| FilesQuery {
            mode: Some(m.into()),
            ..Default::default()
        };
        assert_eq!(q("0755").mode_bits(), Ok(Some(0o755)));
        assert!(q("999").mode_bits().is_err() && q("17777").mode_bits().is_err());
        assert!(check_path("/a").is_ok() && check_path("a").is_err());
    }
}
