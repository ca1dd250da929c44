//! Files the SDK keeps for the app (its identity key, the session tokens'
//! secret, the device registry, development certificates), written whole or
//! not at all.
//!
//! The bytes go to a temporary file of this writer's own beside the target,
//! made with the final mode (never readable by others, not even for a
//! moment), synced, then put in place: linked, so that a file already there
//! (another worker's, made first) is never replaced ([`write_new`]), or
//! renamed over the old one ([`replace`]). A crash leaves the old file or
//! the new one, never half of one; the folder is synced so that the new
//! name survives it too.

use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to a new file at `path` with `mode`, whole or not at all;
/// false when a file is there already (another process made it first),
/// which is never replaced. Creates the folder.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    match put(path, bytes, mode, |temp, path| {
        std::fs::hard_link(temp, path)
    }) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error),
    }
}

/// Writes `bytes` to `path` with `mode` in place of what is there, whole or
/// not at all: a reader sees the old file or the new one. Creates the
/// folder.
pub(crate) fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    put(path, bytes, mode, |temp, path| std::fs::rename(temp, path))
}

/// Writes a temporary file beside `path` and hands it to `place`; the
/// temporary file is gone afterwards whatever happened.
fn put(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    place: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let dir = folder_of(path);
    std::fs::create_dir_all(dir)?;
    let temp = temp_beside(path);
    let placed = (|| {
        let create = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&temp)
        };
        let mut file = match create() {
            // Left by a process that crashed with this process's id.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&temp)?;
                create()?
            }
            file => file?,
        };
        file.write_all(bytes)?;
        file.sync_all()?;
        place(&temp, path)
    })();
    // After a link both names are the file; after a rename this one is
    // gone already.
    let _ = std::fs::remove_file(&temp);
    placed?;
    std::fs::File::open(dir)?.sync_all()
}

/// The folder `path` is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A temporary name beside `path` that is this writer's own: another thread
/// or process never touches it.
fn temp_beside(path: &Path) -> PathBuf {
    static TEMPS: AtomicU64 = AtomicU64::new(0);
    path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        TEMPS.fetch_add(1, Ordering::Relaxed)
    ))
}
