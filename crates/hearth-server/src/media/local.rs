//! Local image files: `file://` URLs and absolute paths, only from under `allowed_media_dir`.
//!
//! The path is canonicalized (symlinks resolved) and must lie inside the canonicalized
//! directory. The file is then opened and the path it was really opened at is read back
//! from /proc, so a symlink swapped in between the check and the open cannot lead outside.
//! A path outside the directory is refused as outside whether or not it exists, so the
//! endpoint cannot be used to probe for files elsewhere.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};

use super::error::{echo_url, shorten};
use super::{MediaError, MediaPolicy};

/// A `file://` URL; only an empty or `localhost` host names this machine.
pub fn read_file_url(url: &url::Url, policy: &MediaPolicy) -> Result<Vec<u8>, MediaError> {
    let echo = echo_url(url);
    if policy.allowed_media_dir.is_none() {
        return Err(MediaError::LocalFilesDisabled);
    }
    let path = match url.host_str() {
        None | Some("") | Some("localhost") => url.to_file_path().ok(),
        Some(_) => None,
    }
    .ok_or_else(|| MediaError::InvalidUrl {
        url: echo.clone(),
        reason: "not a local file path".into(),
    })?;
    read(&path, &echo, policy)
}

/// An absolute path given instead of a URL.
pub fn read_path(path: &Path, raw: &str, policy: &MediaPolicy) -> Result<Vec<u8>, MediaError> {
    read(path, &shorten(raw), policy)
}

fn read(path: &Path, echo: &str, policy: &MediaPolicy) -> Result<Vec<u8>, MediaError> {
    let configured = policy
        .allowed_media_dir
        .as_deref()
        .ok_or(MediaError::LocalFilesDisabled)?;
    let outside = || MediaError::OutsideMediaDir { url: echo.into() };
    // A configured directory that has gone away refuses everything; the operator's path is
    // not the client's business.
    let dir = configured
        .canonicalize()
        .map_err(|_| MediaError::FileUnreadable { url: echo.into() })?;
    // Clients may name files through the directory as configured (say, a symlink) or as
    // canonicalized; the real check is on the canonical path below.
    let as_configured = std::path::absolute(configured).unwrap_or_else(|_| dir.clone());
    if !lexically_inside(path, &dir) && !lexically_inside(path, &as_configured) {
        return Err(outside());
    }
    let real = path.canonicalize().map_err(|e| match e.kind() {
        ErrorKind::NotFound => MediaError::FileNotFound { url: echo.into() },
        _ => MediaError::FileUnreadable { url: echo.into() },
    })?;
    if !real.starts_with(&dir) {
        return Err(outside());
    }
    // Checked before opening: opening a FIFO for reading would block until a writer came.
    let not_regular = || MediaError::NotARegularFile { url: echo.into() };
    if !std::fs::metadata(&real)
        .map_err(|_| not_regular())?
        .is_file()
    {
        return Err(not_regular());
    }
    let file = OpenOptions::new()
        .read(true)
        // Nothing may be swapped in at the last component, and a FIFO swapped in meanwhile
        // must not block the open.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&real)
        .map_err(|_| MediaError::FileUnreadable { url: echo.into() })?;
    if opened_path(&file).is_some_and(|opened| !opened.starts_with(&dir)) {
        return Err(outside());
    }
    let meta = file.metadata().map_err(|_| not_regular())?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    let max = policy.max_image_bytes;
    if meta.len() > max as u64 {
        return Err(MediaError::TooLarge { limit: max });
    }
    // The length can still grow after the stat: read one byte past the cap to notice.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| MediaError::FileUnreadable { url: echo.into() })?;
    if bytes.len() > max {
        return Err(MediaError::TooLarge { limit: max });
    }
    Ok(bytes)
}

/// Where the kernel says an open file lives (Linux's /proc); `None` where /proc is missing.
fn opened_path(file: &File) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// Whether `path`, with `.` and `..` resolved by text alone, lies under `dir`: a path that
/// already points outside is refused before the file system is asked whether it exists.
fn lexically_inside(path: &Path, dir: &Path) -> bool {
    let mut normal = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal.is_absolute() && normal.starts_with(dir)
}
