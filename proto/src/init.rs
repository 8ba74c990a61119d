//! Reply codes of `warren-init` (the `code` of a refused request; its
//! framing lives in `warren-init::proto`).
use serde::{Deserialize, Serialize};

/// Why init refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The peer may not speak the init protocol (a process in the session).
    Forbidden,
    /// No request arrived in time.
    Timeout,
    /// The first frame was malformed or not a request.
    BadFrame,
    /// The agent and init speak different protocol versions.
    VersionMismatch,
    /// The terminal asked for does not exist (any more).
    NotFound,
    /// Init holds as many terminals as it may.
    TooManyTerminals,
    /// An environment variable that may not be set, or too long.
    BadEnv,
    /// A command that is empty or too long.
    BadCommand,
    /// The PTY or the process could not be made.
    SpawnFailed,
    /// A file path that is not absolute, too long, or holds a NUL.
    BadPath,
    /// A path component that must be a directory is not one.
    NotADirectory,
    /// A file operation named a directory.
    IsADirectory,
    /// Not a regular file or directory, or on a kernel filesystem
    /// (`/proc`, `/sys`): files there are not served.
    NotAFile,
    /// The session's disk is full (or its quota is used).
    DiskFull,
    /// The session's own permissions refuse it (read-only mount, mode).
    PermissionDenied,
    /// A directory that is not empty, without `recursive`.
    NotEmpty,
    /// Any other I/O error.
    Io,
    /// A code this build does not know (a newer init).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Timeout => "timeout",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooManyTerminals => "too_many_terminals",
            ErrorCode::BadEnv => "bad_env",
            ErrorCode::BadCommand => "bad_command",
            ErrorCode::SpawnFailed => "spawn_failed",
            ErrorCode::BadPath => "bad_path",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::NotAFile => "not_a_file",
            ErrorCode::DiskFull => "disk_full",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotEmpty => "not_empty",
            ErrorCode::Io => "io",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_their_names() {
        for c in [
            ErrorCode::Forbidden,
            ErrorCode::Timeout,
            ErrorCode::BadFrame,
            ErrorCode::VersionMismatch,
            ErrorCode::NotFound,
            ErrorCode::TooManyTerminals,
            ErrorCode::BadEnv,
            ErrorCode::BadCommand,
            ErrorCode::SpawnFailed,
            ErrorCode::BadPath,
            ErrorCode::NotADirectory,
            ErrorCode::IsADirectory,
            ErrorCode::NotAFile,
            ErrorCode::DiskFull,
            ErrorCode::PermissionDenied,
            ErrorCode::NotEmpty,
            ErrorCode::Io,
        ] {
            let json = serde_json::to_string(&c).expect("serializes");
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
        let later: ErrorCode = serde_json::from_str("\"new_kind\"").expect("unknown is kept");
        assert_eq!(later, ErrorCode::Unknown);
    }
}
