//! Turning a path sent by a server into the one real location it names.
//!
//! [`resolve`] does, in order: refuse empty paths, NUL bytes and paths longer
//! than [`MAX_PATH_LEN`] bytes; expand `~` and `~/...` to the user's home
//! (`~otheruser` is refused); make a relative path absolute **relative to the
//! user's home** (never to the client's working directory); normalise `.` and
//! `..` lexically (`..` above `/` is refused); then resolve the symlinks of the
//! longest existing prefix with [`std::fs::canonicalize`] and append the part
//! that does not exist yet. Decisions are taken on that resolved path. The
//! client still opens it with `O_NOFOLLOW`, since the disk can change between
//! the check and the use.

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The longest path, in bytes, that is accepted (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// An absolute, normalised path whose existing prefix has its symlinks resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedPath {
    pub(crate) path: PathBuf,
    pub(crate) is_dir: bool,
}

impl ResolvedPath {
    /// The resolved path.
    pub fn as_path(&self) -> &Path {
        &self.path
    }

    /// True when the path existed as a directory when it was resolved (or
    /// was named as a folder, [`named_as_folder`](Self::named_as_folder)).
    pub fn is_dir(&self) -> bool {
        self.is_dir
    }

    /// The path, taken as a folder or not by what the request is about
    /// rather than by what is on disk: a denial's grant command names the
    /// path itself for a folder and its parent otherwise, and must not tell
    /// whether a folder the server may not see exists.
    #[must_use]
    pub fn named_as_folder(mut self, folder: bool) -> ResolvedPath {
        self.is_dir = folder;
        self
    }

    /// The entry at `relative` under this directory, as found by a walk that
    /// never follows symlinks: the entry itself, not where a symlink in it
    /// points. `None` unless `relative` is made of plain names only.
    pub fn join_entry(&self, relative: &Path, is_dir: bool) -> Option<ResolvedPath> {
        let plain = relative
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
        if !plain || relative.as_os_str().is_empty() {
            return None;
        }
        let path = self.path.join(relative);
        check_len(path.as_os_str()).ok()?;
        Some(ResolvedPath { path, is_dir })
    }
}

impl AsRef<Path> for ResolvedPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// Why a path is refused before any decision is taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty.
    #[error("empty path")]
    Empty,
    /// The path contains a NUL byte.
    #[error("path {path:?} contains a NUL byte")]
    Nul {
        /// The path as given.
        path: String,
    },
    /// The path is longer than [`MAX_PATH_LEN`] bytes.
    #[error("path is {len} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// `~user` refers to another user's home.
    #[error("path {path:?} refers to another user's home; only `~` and `~/...` are allowed")]
    OtherUserHome {
        /// The path as given.
        path: String,
    },
    /// `..` climbs above the root.
    #[error("path {path:?} climbs above the root")]
    AboveRoot {
        /// The path as given.
        path: String,
    },
    /// A component of the path is a symlink whose target does not exist.
    #[error("{path} is a dangling symlink")]
    DanglingSymlink {
        /// The symlink.
        path: PathBuf,
    },
    /// The path could not be examined.
    #[error("cannot resolve {path}: {source}")]
    Io {
        /// The path being resolved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Resolve `raw` as described in the [module docs](self); `user_home` is what
/// `~` and relative paths start from.
pub fn resolve(raw: &str, user_home: &Path) -> Result<ResolvedPath, PathError> {
    resolve_seen(raw, user_home).map(|(path, _)| path)
}

/// What [`resolve_seen`] found at the path itself.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Sighting {
    /// Nothing is there (nor, perhaps, its folder), and no symlink is on
    /// the way to it.
    Absent,
    /// Something other than a symlink is there: its `fstat`, opened with
    /// `O_PATH | O_NOFOLLOW` by a walk that met no symlink.
    Present(rustix::fs::Stat),
}

/// [`resolve`], with what the resolution saw at the path when it looked
/// there without following any symlink (the common case on Linux), so a
/// caller that only needs that need not look again. `None` when it did not
/// look: a symlink on the way or at the path, a file on the way, another
/// error on the way, another platform.
pub fn resolve_seen(
    raw: &str,
    user_home: &Path,
) -> Result<(ResolvedPath, Option<Sighting>), PathError> {
    let absolute = normalize(&expand_tilde(raw, user_home)?, raw)?;
    resolve_normalized(&absolute)
}

/// `raw` made absolute (`~` and relative paths from `user_home`) with `.`
/// and `..` removed, without looking at the disk: the path the server named,
/// before any symlink is followed.
pub fn normalized(raw: &str, user_home: &Path) -> Result<PathBuf, PathError> {
    normalize(&expand_tilde(raw, user_home)?, raw)
}

/// [`resolve`] for a path the client itself holds (the home root, the
/// client binary, a pattern's literal folders): no `~` expansion.
pub(crate) fn resolve_absolute(path: &Path) -> Result<ResolvedPath, PathError> {
    check_len(path.as_os_str())?;
    resolve_normalized(&normalize(path, &path.to_string_lossy())?).map(|(path, _)| path)
}

/// [`resolve_seen`] of a path already made absolute and normalized (as
/// `normalize` makes it: no `.`, `..`, doubled or trailing separator), which
/// the path returned is when no symlink was on the way.
pub(crate) fn resolve_normalized(
    absolute: &Path,
) -> Result<(ResolvedPath, Option<Sighting>), PathError> {
    debug_assert!(
        normalize(absolute, "")
            .is_ok_and(|normalized| normalized.as_os_str() == absolute.as_os_str()),
        "{absolute:?} is not normalized"
    );
    let (path, is_dir, sighting) = match symlink_free(absolute) {
        Some(sighting) => {
            let is_dir = matches!(sighting, Sighting::Present(stat)
                if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory);
            (absolute.to_path_buf(), is_dir, Some(sighting))
        }
        None => {
            let (mut path, rest) = canonical_prefix(absolute)?;
            let is_dir = rest.is_empty() && path.is_dir();
            for part in rest {
                path.push(part);
            }
            (path, is_dir, None)
        }
    };
    check_len(path.as_os_str())?;
    Ok((ResolvedPath { path, is_dir }, sighting))
}

/// Expand `~` and `~/...` to `user_home`, and join a relative path onto
/// `user_home`. Also refuses empty, NUL-containing and too long input.
pub fn expand_tilde(raw: &str, user_home: &Path) -> Result<PathBuf, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.contains('\0') {
        return Err(PathError::Nul {
            path: raw.to_owned(),
        });
    }
    check_len(OsStr::new(raw))?;
    // Joined into one allocation of the final size (a request's path
    // comes here every time).
    let join = |rest: &str| {
        let mut joined = PathBuf::with_capacity(user_home.as_os_str().len() + 1 + rest.len());
        joined.push(user_home);
        joined.push(rest);
        joined
    };
    let expanded = if raw == "~" {
        user_home.to_path_buf()
    } else if let Some(rest) = raw.strip_prefix("~/") {
        join(rest)
    } else if raw.starts_with('~') {
        return Err(PathError::OtherUserHome {
            path: raw.to_owned(),
        });
    } else {
        // A relative path starts from the user's home; an absolute one is kept.
        join(raw)
    };
    check_len(expanded.as_os_str())?;
    Ok(expanded)
}

/// Remove `.` and `..` lexically from an absolute path; `raw` is named in errors.
fn normalize(path: &Path, raw: &str) -> Result<PathBuf, PathError> {
    // Never longer than `path`: one allocation per request.
    let mut out = PathBuf::with_capacity(path.as_os_str().len());
    for component in path.components() {
        match component {
            Component::Prefix(p) => out.push(p.as_os_str()),
            Component::RootDir => out.push(Component::RootDir.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(PathError::AboveRoot {
                        path: raw.to_owned(),
                    });
                }
            }
            Component::Normal(part) => out.push(part),
        }
    }
    if !out.has_root() {
        // `user_home` itself was relative: refuse rather than guess.
        return Err(PathError::Io {
            path: out,
            source: io::Error::new(io::ErrorKind::InvalidInput, "home is not absolute"),
        });
    }
    Ok(out)
}

/// The common case of [`canonical_prefix`] without a `readlink` per
/// component: a path with no symlink on the way, whose last component is
/// missing or not a symlink, is its own canonical form. One `openat2` with
/// `RESOLVE_NO_SYMLINKS` walks the whole path (the kernel refuses a symlink
/// on any component but the last, which `O_PATH | O_NOFOLLOW` opens as
/// itself): `ENOENT` means nothing is there and every component the kernel
/// met was a plain one, so the path is canonical in one system call (the
/// usual answer to an `exists`); otherwise `fstat` on what it opened says
/// what is there. Returns what is at the path, which is then its own
/// canonical form; `None` for anything else (a symlink, a file on the way,
/// an error, the root), which the general resolution handles.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn symlink_free(path: &Path) -> Option<Sighting> {
    use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
    path.file_name()?;
    let opened = rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    );
    match opened {
        Ok(fd) => {
            let stat = rustix::fs::fstat(&fd).ok()?;
            match FileType::from_raw_mode(stat.st_mode) {
                // Followed by the general resolution.
                FileType::Symlink => None,
                _ => Some(Sighting::Present(stat)),
            }
        }
        // Some component is missing: the ones before it are plain folders
        // (a symlink among them would have been ELOOP first), and the ones
        // after it do not exist, so none is a symlink.
        Err(rustix::io::Errno::NOENT) => Some(Sighting::Absent),
        Err(_) => None,
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn symlink_free(_path: &Path) -> Option<Sighting> {
    None
}

/// Canonicalise the longest existing prefix of `path`; return it with the
/// remaining (non-existing) components, in order.
fn canonical_prefix(path: &Path) -> Result<(PathBuf, Vec<&OsStr>), PathError> {
    let mut rest = Vec::new();
    let mut current = path;
    loop {
        match std::fs::canonicalize(current) {
            Ok(canonical) => {
                rest.reverse();
                return Ok((canonical, rest));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                if std::fs::symlink_metadata(current).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(PathError::DanglingSymlink {
                        path: current.to_path_buf(),
                    });
                }
                match (current.parent(), current.file_name()) {
                    (Some(parent), Some(name)) => {
                        rest.push(name);
                        current = parent;
                    }
                    _ => {
                        return Err(PathError::Io {
                            path: path.to_path_buf(),
                            source: e,
                        });
                    }
                }
            }
            Err(source) => {
                return Err(PathError::Io {
                    path: current.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn check_len(path: &OsStr) -> Result<(), PathError> {
    if path.len() > MAX_PATH_LEN {
        Err(PathError::TooLong { len: path.len() })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_entry_takes_plain_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = resolve(&dir.path().to_string_lossy(), dir.path()).unwrap();
        let entry = root.join_entry(Path::new("a/b"), false).unwrap();
        assert_eq!(entry.as_path(), root.as_path().join("a/b"));
        for bad in ["", "../x", "/etc", "./a", "a/../b"] {
            assert!(root.join_entry(Path::new(bad), false).is_none(), "{bad:?}");
        }
    }

    /// A temporary, canonical user home.
    fn home() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let path = std::fs::canonicalize(tmp.path()).unwrap();
        (tmp, path)
    }

    #[test]
    fn tilde_and_relative_paths_start_at_home() {
        let (_tmp, h) = home();
        assert_eq!(resolve("~", &h).unwrap().as_path(), h);
        assert!(resolve("~", &h).unwrap().is_dir());
        assert_eq!(resolve("~/a/b", &h).unwrap().as_path(), h.join("a/b"));
        assert_eq!(resolve("a/b", &h).unwrap().as_path(), h.join("a/b"));
        assert_eq!(resolve("./a/./b/", &h).unwrap().as_path(), h.join("a/b"));
    }

    #[test]
    fn other_users_homes_are_refused() {
        let (_tmp, h) = home();
        assert!(matches!(
            resolve("~root/.ssh/id_ed25519", &h),
            Err(PathError::OtherUserHome { .. })
        ));
        assert!(matches!(
            resolve("~root", &h),
            Err(PathError::OtherUserHome { .. })
        ));
        // A `~` later in the path is an ordinary character.
        assert_eq!(resolve("a/~b", &h).unwrap().as_path(), h.join("a/~b"));
    }

    #[test]
    fn dot_dot_is_normalised_before_matching() {
        let (_tmp, h) = home();
        assert_eq!(
            resolve("~/reports/../.ssh/id", &h).unwrap().as_path(),
            h.join(".ssh/id")
        );
        assert_eq!(
            resolve("/etc/../etc/passwd", &h).unwrap().as_path(),
            Path::new("/etc/passwd")
        );
        assert!(matches!(
            resolve("/..", &h),
            Err(PathError::AboveRoot { .. })
        ));
        assert!(matches!(
            resolve("/a/../../b", &h),
            Err(PathError::AboveRoot { .. })
        ));
        // `..` through a path that does not exist is still lexical.
        assert_eq!(
            resolve("~/missing/../x", &h).unwrap().as_path(),
            h.join("x")
        );
    }

    #[test]
    fn bad_input_is_refused() {
        let (_tmp, h) = home();
        assert!(matches!(resolve("", &h), Err(PathError::Empty)));
        assert!(matches!(resolve("~/a\0b", &h), Err(PathError::Nul { .. })));
        let long = format!("/{}", "a/".repeat(2100));
        assert!(matches!(resolve(&long, &h), Err(PathError::TooLong { .. })));
        let long_rel = "a".repeat(MAX_PATH_LEN - 1);
        assert!(matches!(
            resolve(&long_rel, &h),
            Err(PathError::TooLong { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_resolved() {
        let (_tmp, h) = home();
        std::fs::create_dir_all(h.join("inside")).unwrap();
        std::fs::create_dir_all(h.join("outside")).unwrap();
        std::os::unix::fs::symlink(h.join("outside"), h.join("inside/link")).unwrap();
        let r = resolve("~/inside/link/new/file", &h).unwrap();
        assert_eq!(r.as_path(), h.join("outside/new/file"));
        assert!(!r.is_dir());
        // A dangling symlink is refused: writing through it would create its target.
        std::os::unix::fs::symlink(h.join("nowhere"), h.join("inside/dangling")).unwrap();
        assert!(matches!(
            resolve("~/inside/dangling", &h),
            Err(PathError::DanglingSymlink { .. })
        ));
    }

    /// What `resolve_seen` reports as seen must be what is there, and it must
    /// never report a look through a symlink (the client answers `exists` and
    /// `metadata` from it without looking again).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn resolving_reports_what_it_saw_only_without_symlinks() {
        let (_tmp, h) = home();
        std::fs::create_dir_all(h.join("dir")).unwrap();
        std::fs::write(h.join("dir/file"), "12345").unwrap();
        let seen = |raw: &str| resolve_seen(raw, &h).unwrap();

        let (path, sighting) = seen("~/dir/file");
        assert_eq!(path.as_path(), h.join("dir/file"));
        match sighting {
            Some(Sighting::Present(stat)) => {
                assert_eq!(stat.st_size, 5);
                assert!(!path.is_dir());
            }
            other => panic!("the file was not seen: {other:?}"),
        }
        let (path, sighting) = seen("~/dir");
        assert!(path.is_dir());
        assert!(matches!(sighting, Some(Sighting::Present(_))));
        assert!(matches!(seen("~/dir/missing").1, Some(Sighting::Absent)));
        // A missing folder: nothing there either, and the path is its own
        // canonical form.
        let (path, sighting) = seen("~/nowhere/missing");
        assert_eq!(path.as_path(), h.join("nowhere/missing"));
        assert!(matches!(sighting, Some(Sighting::Absent)));
        // A file on the way: the general resolution, nothing seen.
        assert!(seen("~/dir/file/below").1.is_none());
        // A dangling symlink on the way is refused, never seen as absent.
        std::os::unix::fs::symlink(h.join("nowhere"), h.join("dangling")).unwrap();
        assert!(matches!(
            resolve_seen("~/dangling/below", &h),
            Err(PathError::DanglingSymlink { .. })
        ));
        // A magic link on the way (`/proc/self/cwd`) is resolved, not seen.
        let (path, sighting) = seen("/proc/self/cwd/terminalwire-missing");
        let cwd = std::fs::canonicalize(std::env::current_dir().unwrap()).unwrap();
        assert_eq!(path.as_path(), cwd.join("terminalwire-missing"));
        assert!(sighting.is_none());

        // Symlinks, last or on the way: resolved to their target, not seen.
        std::os::unix::fs::symlink(h.join("dir/file"), h.join("link")).unwrap();
        std::os::unix::fs::symlink(h.join("dir"), h.join("linkdir")).unwrap();
        let (path, sighting) = seen("~/link");
        assert_eq!(path.as_path(), h.join("dir/file"));
        assert!(sighting.is_none());
        let (path, sighting) = seen("~/linkdir/file");
        assert_eq!(path.as_path(), h.join("dir/file"));
        assert!(sighting.is_none());
        // A missing path behind a symlink is not seen, and resolves through it.
        let (path, sighting) = seen("~/linkdir/missing/deeper");
        assert_eq!(path.as_path(), h.join("dir/missing/deeper"));
        assert!(sighting.is_none());
    }

    #[test]
    fn going_through_a_file_is_not_an_error() {
        let (_tmp, h) = home();
        std::fs::write(h.join("f"), "x").unwrap();
        assert_eq!(resolve("~/f/g", &h).unwrap().as_path(), h.join("f/g"));
    }
}
