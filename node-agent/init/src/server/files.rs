//! The sandbox API's files, served from inside the container.
//!
//! Init resolves every path itself, from the container's root, so a
//! symlink (even one to `/`) resolves inside the session and never on the
//! worker. It acts as the session's own root, in the session's cgroup and
//! namespaces: what it writes is the session's, counted on the session's
//! disk, and devices stay behind the session's device rules. On top of that:
//! - no magic links (`/proc/self/fd/…`, `/proc/1/root`): init's own file
//!   descriptors, its log pipe to the engine among them, are not reachable;
//! - only regular files and directories on ordinary filesystems are served;
//!   `/proc`, `/sys` and other kernel filesystems are refused (writing
//!   `/proc/1/mem` would hand PID 1 to the tenant);
//! - opens never block (a FIFO is refused, not waited on);
//! - an upload goes to a temporary file renamed into place at its end, so a
//!   cut or failed upload leaves the old file (or nothing) behind.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::proto::DirEntry;

/// Entries one listing returns; a larger directory is cut (`Exit(1)`).
pub use warren_proto::sandbox::MAX_LIST_ENTRIES as MAX_ENTRIES;
/// Time an upload may sit with no data before it is dropped.
const IDLE: Duration = Duration::from_secs(60);

type Fail = (ErrorCode, String);
type Conn = Framed<UnixStream, InitCodec>;

/// Filesystems files are served from: disks, overlays, tmpfs, network and
/// FUSE mounts. Anything else (proc, sysfs, cgroup, debugfs, …) is refused.
fn ordinary_fs(magic: u64) -> bool {
    const OK: [u64; 13] = [
        0x794c_7630, // overlayfs
        0xef53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683e, // btrfs
        0x0102_1994, // tmpfs
        0x6573_5546, // fuse (fuse-overlayfs under podman)
        0x2fc1_2fc1, // zfs
        0xf2f5_2010, // f2fs
        0x7371_7368, // squashfs
        0x4d44,      // vfat
        0x6969,      // nfs
        0x0187,      // autofs (its mounts are ordinary)
        0x5346_544e, // ntfs
    ];
    OK.contains(&(magic & 0xffff_ffff))
}

fn errno_fail(e: Errno, path: &str) -> Fail {
    let (code, what) = match e {
        Errno::NOENT => (ErrorCode::NotFound, "does not exist"),
        Errno::NOTDIR => (
            ErrorCode::NotADirectory,
            "has a part that is not a directory",
        ),
        Errno::ISDIR => (ErrorCode::IsADirectory, "is a directory"),
        Errno::NOSPC | Errno::DQUOT => (
            ErrorCode::DiskFull,
            "cannot be written: the session's disk is full",
        ),
        Errno::ROFS => (ErrorCode::PermissionDenied, "is on a read-only mount"),
        Errno::ACCESS | Errno::PERM => (ErrorCode::PermissionDenied, "is not permitted"),
        Errno::LOOP | Errno::XDEV => (
            ErrorCode::BadPath,
            "goes through a link that is not followed (/proc magic links, or a symlink loop)",
        ),
        Errno::NOTEMPTY | Errno::EXIST => (ErrorCode::NotEmpty, "is a directory that is not empty"),
        Errno::NAMETOOLONG => (ErrorCode::BadPath, "has a name that is too long"),
        _ => (ErrorCode::Io, "failed"),
    };
    if code == ErrorCode::Io {
        return (code, format!("{path}: {e}"));
    }
    (code, format!("{path} {what}"))
}

fn io_fail(e: &io::Error, path: &str) -> Fail {
    match e.raw_os_error() {
        Some(n) => errno_fail(Errno::from_raw_os_error(n), path),
        None => (ErrorCode::Io, format!("{path}: {e}")),
    }
}

/// An absolute path without NUL, within
/// [`warren_proto::sandbox::MAX_PATH`] (the API's own rule).
pub fn check_path(p: &str) -> Result<(), Fail> {
    warren_proto::sandbox::check_path(p).map_err(|m| (ErrorCode::BadPath, m))
}

/// Splits `/a/b/c` into `/a/b` and `c`; `None` for `/` (or a last part
/// of `.` or `..`, which names no entry of its own).
fn split(p: &str) -> Option<(&str, &str)> {
    let t = p.trim_end_matches('/');
    let (dir, name) = t.rsplit_once('/')?;
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some((if dir.is_empty() { "/" } else { dir }, name))
}

fn open_at(dir: BorrowedFd<'_>, path: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        dir,
        path,
        flags | OFlags::CLOEXEC | OFlags::NONBLOCK,
        mode,
        ResolveFlags::NO_MAGICLINKS,
    )
}

fn check_fs(fd: BorrowedFd<'_>, path: &str) -> Result<(), Fail> {
    let st = rustix::fs::fstatfs(fd).map_err(|e| errno_fail(e, path))?;
    if !ordinary_fs(st.f_type as u64) {
        return Err((
            ErrorCode::NotAFile,
            format!("{path} is on a kernel filesystem; only the session's own files are served"),
        ));
    }
    Ok(())
}

/// Opens (and with `create`, makes) the directory `path`, one part at a time.
fn open_dir(path: &str, create: bool) -> Result<OwnedFd, Fail> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY;
    let mut fd =
        open_at(rustix::fs::CWD, "/", flags, Mode::empty()).map_err(|e| errno_fail(e, "/"))?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let next = match open_at(fd.as_fd(), part, flags, Mode::empty()) {
            Err(Errno::NOENT) if create => {
                // Nothing is made on a kernel filesystem (`/proc/…/x`).
                check_fs(fd.as_fd(), path)?;
                match rustix::fs::mkdirat(&fd, part, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(errno_fail(e, path)),
                }
                open_at(fd.as_fd(), part, flags, Mode::empty())
            }
            other => other,
        };
        fd = next.map_err(|e| errno_fail(e, path))?;
    }
    check_fs(fd.as_fd(), path)?;
    Ok(fd)
}

fn kind_of(mode: u32) -> &'static str {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        _ => "other",
    }
}

async fn fail(framed: &mut Conn, (code, msg): Fail) -> io::Result<()> {
    reply(framed, Response::error(code, msg)).await
}

async fn send(framed: &mut Conn, f: Frame) -> io::Result<()> {
    framed.send(f).await.map_err(io::Error::other)
}

/// Opens a regular file for reading, without blocking on a FIFO.
fn open_file(path: &str) -> Result<(std::fs::File, u64), Fail> {
    check_path(path)?;
    let fd = open_at(rustix::fs::CWD, path, OFlags::RDONLY, Mode::empty())
        .map_err(|e| errno_fail(e, path))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| errno_fail(e, path))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        FileType::Directory => return Err(errno_fail(Errno::ISDIR, path)),
        _ => {
            return Err((ErrorCode::NotAFile, format!("{path} is not a regular file")));
        }
    }
    check_fs(fd.as_fd(), path)?;
    // Back to blocking reads (the flag was only for the open).
    rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(|e| errno_fail(e, path))?;
    Ok((std::fs::File::from(fd), st.st_size.max(0) as u64))
}

pub(super) async fn read(mut framed: Conn, path: String) -> io::Result<()> {
    let (file, size) = match open_file(&path) {
        Ok(x) => x,
        Err(f) => return fail(&mut framed, f).await,
    };
    let ok = Response {
        ok: true,
        size: Some(size),
        ..Default::default()
    };
    send(&mut framed, Frame::Response(ok)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut buf = vec![0u8; proto::MAX_PAYLOAD];
    loop {
        // An error mid-file just ends the stream short of `size`: the
        // agent tells its client the download failed.
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        send(&mut framed, Frame::Data(Bytes::copy_from_slice(&buf[..n]))).await?;
    }
    send(&mut framed, Frame::Exit(0)).await
}

/// Where an upload goes: the directory (made), the final name, the
/// temporary file and its name.
fn prepare_write(
    path: &str,
    mode: Option<u32>,
) -> Result<(OwnedFd, String, std::fs::File, String), Fail> {
    check_path(path)?;
    let Some((dir, name)) = split(path) else {
        return Err((ErrorCode::IsADirectory, format!("{path} names a directory")));
    };
    let dirfd = open_dir(dir, true)?;
    let existing = rustix::fs::statat(&dirfd, name, AtFlags::SYMLINK_NOFOLLOW);
    let mode = match existing {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            return Err(errno_fail(Errno::ISDIR, path));
        }
        // An overwrite keeps the file's permissions unless asked otherwise.
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
            mode.unwrap_or(st.st_mode & 0o7777)
        }
        _ => mode.unwrap_or(0o644),
    } & 0o7777;
    let tmp = format!(
        ".{}.warren-upload-{:08x}",
        name.chars().take(64).collect::<String>(),
        rand_u32()
    );
    let fd = rustix::fs::openat(
        &dirfd,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| errno_fail(e, path))?;
    let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode));
    Ok((dirfd, name.to_string(), std::fs::File::from(fd), tmp))
}

fn rand_u32() -> u32 {
    // Only to keep two uploads to one name apart; O_EXCL does the rest.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

pub(super) async fn write(mut framed: Conn, path: String, mode: Option<u32>) -> io::Result<()> {
    let (dirfd, name, file, tmp) = match prepare_write(&path, mode) {
        Ok(x) => x,
        Err(f) => return fail(&mut framed, f).await,
    };
    let discard = |dirfd: &OwnedFd| {
        let _ = rustix::fs::unlinkat(dirfd, tmp.as_str(), AtFlags::empty());
    };
    send(
        &mut framed,
        Frame::Response(Response {
            ok: true,
            ..Default::default()
        }),
    )
    .await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut written: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(IDLE, framed.next()).await {
            Ok(Some(Ok(f))) => f,
            // The agent went away or stalled: nothing lands.
            _ => {
                discard(&dirfd);
                return Ok(());
            }
        };
        match frame {
            Frame::Data(b) => {
                if let Err(e) = file.write_all(&b).await {
                    discard(&dirfd);
                    return fail(&mut framed, io_fail(&e, &path)).await;
                }
                written += b.len() as u64;
            }
            Frame::Eof => break,
            _ => {
                discard(&dirfd);
                return fail(
                    &mut framed,
                    (
                        ErrorCode::BadFrame,
                        "an upload takes data, then its end".into(),
                    ),
                )
                .await;
            }
        }
    }
    // Delayed allocation can report a full disk only here.
    if let Err(e) = async {
        file.flush().await?;
        file.sync_data().await
    }
    .await
    {
        discard(&dirfd);
        return fail(&mut framed, io_fail(&e, &path)).await;
    }
    drop(file);
    if let Err(e) = rustix::fs::renameat(&dirfd, tmp.as_str(), &dirfd, name.as_str()) {
        discard(&dirfd);
        return fail(&mut framed, errno_fail(e, &path)).await;
    }
    let done = Response {
        ok: true,
        size: Some(written),
        ..Default::default()
    };
    reply(&mut framed, done).await
}

fn list_entries(path: &str) -> Result<(Vec<DirEntry>, bool), Fail> {
    check_path(path)?;
    let fd = open_dir(path, false)?;
    let mut dir = rustix::fs::Dir::read_from(&fd).map_err(|e| errno_fail(e, path))?;
    let mut out = Vec::new();
    let mut cut = false;
    for entry in dir.by_ref() {
        let entry = entry.map_err(|e| errno_fail(e, path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        if out.len() == MAX_ENTRIES {
            cut = true;
            break;
        }
        // An entry gone since the read is left out.
        let Ok(st) = rustix::fs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        out.push(DirEntry {
            name,
            kind: kind_of(st.st_mode).into(),
            size: st.st_size.max(0) as u64,
            mode: st.st_mode & 0o7777,
            mtime: st.st_mtime,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, cut))
}

pub(super) async fn list(mut framed: Conn, path: String) -> io::Result<()> {
    let listed = tokio::task::spawn_blocking(move || list_entries(&path))
        .await
        .unwrap_or_else(|e| Err((ErrorCode::Io, e.to_string())));
    let (entries, cut) = match listed {
        Ok(x) => x,
        Err(f) => return fail(&mut framed, f).await,
    };
    send(
        &mut framed,
        Frame::Response(Response {
            ok: true,
            ..Default::default()
        }),
    )
    .await?;
    for e in entries {
        let json = serde_json::to_vec(&e).map_err(io::Error::other)?;
        send(&mut framed, Frame::Data(json.into())).await?;
    }
    send(&mut framed, Frame::Exit(i32::from(cut))).await
}

pub(super) async fn make_dir(mut framed: Conn, path: String) -> io::Result<()> {
    let made =
        tokio::task::spawn_blocking(move || check_path(&path).and_then(|()| open_dir(&path, true)))
            .await
            .unwrap_or_else(|e| Err((ErrorCode::Io, e.to_string())));
    match made {
        Ok(_) => {
            reply(
                &mut framed,
                Response {
                    ok: true,
                    ..Default::default()
                },
            )
            .await
        }
        Err(f) => fail(&mut framed, f).await,
    }
}

fn remove_path(path: &str, recursive: bool) -> Result<(), Fail> {
    check_path(path)?;
    let Some((dir, name)) = split(path) else {
        return Err((
            ErrorCode::BadPath,
            "the session's root cannot be removed".into(),
        ));
    };
    let dirfd = open_dir(dir, false)?;
    let st = rustix::fs::statat(&dirfd, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| errno_fail(e, path))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        // A symlink is removed itself, never what it points to.
        return rustix::fs::unlinkat(&dirfd, name, AtFlags::empty())
            .map_err(|e| errno_fail(e, path));
    }
    if !recursive {
        return rustix::fs::unlinkat(&dirfd, name, AtFlags::REMOVEDIR)
            .map_err(|e| errno_fail(e, path));
    }
    // The directory is reached through init's own descriptor of its parent
    // (resolved above without magic links); std's removal does not follow
    // symlinks inside it.
    let through = format!("/proc/self/fd/{}/{name}", dirfd.as_raw_fd());
    std::fs::remove_dir_all(&through).map_err(|e| io_fail(&e, path))
}

pub(super) async fn remove(mut framed: Conn, path: String, recursive: bool) -> io::Result<()> {
    let removed = tokio::task::spawn_blocking(move || remove_path(&path, recursive))
        .await
        .unwrap_or_else(|e| Err((ErrorCode::Io, e.to_string())));
    match removed {
        Ok(()) => {
            reply(
                &mut framed,
                Response {
                    ok: true,
                    ..Default::default()
                },
            )
            .await
        }
        Err(f) => fail(&mut framed, f).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_parent_and_name() {
        assert_eq!(split("/a/b"), Some(("/a", "b")));
        assert_eq!(split("/a"), Some(("/", "a")));
        assert_eq!(split("/a/b/"), Some(("/a", "b")));
        assert_eq!(split("/"), None);
        assert_eq!(split("/a/.."), None);
        assert!(check_path("relative").is_err());
        assert!(check_path("/x\0y").is_err());
        assert!(check_path(&format!("/{}", "a".repeat(warren_proto::sandbox::MAX_PATH))).is_err());
        assert!(check_path("/tmp/x").is_ok());
    }

    #[test]
    fn kernel_filesystems_are_not_served() {
        assert!(!ordinary_fs(0x9fa0)); // proc
        assert!(!ordinary_fs(0x6265_6572)); // sysfs
        assert!(!ordinary_fs(0x6367_7270)); // cgroup2
        assert!(ordinary_fs(0x794c_7630) && ordinary_fs(0x0102_1994));
        // Reading /proc/self/status through the rules is refused.
        assert_eq!(
            open_file("/proc/self/status").err().map(|f| f.0),
            Some(ErrorCode::NotAFile)
        );
        // A magic link is not followed.
        let (code, _) = open_file("/proc/self/root/etc/hostname").expect_err("refused");
        assert!(
            matches!(code, ErrorCode::BadPath | ErrorCode::NotFound),
            "{code:?}"
        );
    }
}
