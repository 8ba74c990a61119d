//! How shells and commands are started: the environment a client may set,
//! argv checks, the user's home, the login shell.
use super::*;

/// Environment variables a client may set on a new shell.
pub(super) fn env_allowed(k: &str) -> bool {
    matches!(k, "TERM" | "LANG" | "COLORTERM" | "TZ") || k.starts_with("LC_")
}

pub(super) fn check_env(
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), (ErrorCode, String)> {
    if env.len() > 32
        || env
            .iter()
            .any(|(k, v)| !env_allowed(k) || v.len() > 256 || v.contains('\0'))
    {
        return Err((
            ErrorCode::BadEnv,
            "only TERM, LANG, LC_*, COLORTERM and TZ may be set, 256 bytes each".into(),
        ));
    }
    Ok(())
}

pub(super) fn command_of(argv: &[String]) -> Result<Command, (ErrorCode, String)> {
    if argv.len() > 256 || argv.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
        return Err((ErrorCode::BadCommand, "command too long".into()));
    }
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    Ok(c)
}

/// Starts `cmd` in the user's home, as a login would.
pub(super) fn in_home(cmd: &mut Command) -> &mut Command {
    let home = std::env::var("HOME")
        .ok()
        .filter(|h| Path::new(h).is_dir())
        .unwrap_or_else(|| {
            if Path::new("/root").is_dir() {
                "/root".into()
            } else {
                "/".into()
            }
        });
    cmd.current_dir(&home).env("HOME", home)
}

pub(super) fn login_shell() -> Command {
    let (path, arg0) = if Path::new("/bin/bash").exists() {
        ("/bin/bash", "-bash")
    } else {
        ("/bin/sh", "-sh")
    };
    let mut c = Command::new(path);
    std::os::unix::process::CommandExt::arg0(&mut c, arg0);
    c.env("SHELL", path);
    c
}
